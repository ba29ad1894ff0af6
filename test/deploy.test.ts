import t from 'tap'
import Fastify, { LogController, type FastifyInstance, type FastifyRequest, type FastifyServerOptions } from 'fastify'
import fp from 'fastify-plugin'
import { Registry, register as globalRegistry, Counter } from 'prom-client'
import admission, { kAdmissionController, skipRequestLogWhileShedding } from '../lib/index.js'
import { hooksBeforeAdmission } from '../lib/hook-order.js'
import { RouteConfigReader } from '../lib/route-config.js'
import { gate, saturate, snapshot, turns } from './helpers/app.js'

const quiet = { startupGrace: 0, sampleInterval: 10_000 }

/** A request that holds the only permit, so that every other one is refused once the loop saturates. */
async function holdOnlyPermit (app: FastifyInstance): Promise<() => Promise<void>> {
  const g = gate()
  app.get('/hold', async () => { await g.wait; return 'held' })
  await app.ready()
  saturate(app[kAdmissionController])
  const held = app.inject('/hold')
  await turns(10)
  return async () => { g.open(); await held }
}

t.test('regression: routes were unprotected without an awaited register, or when declared before the plugin', async t => {
  const app = Fastify()
  t.teardown(() => app.close())
  app.get('/before', async () => 'ok')
  app.register(async function routes (child) { child.get('/encapsulated-before', async () => 'ok') })
  app.register(admission, { registry: new Registry(), ...quiet, minLimit: 1, maxLimit: 1, initialLimit: 1 })
  app.get('/after', async () => 'ok')
  app.register(async function routes (child) { child.get('/encapsulated-after', async () => 'ok') })
  const release = await holdOnlyPermit(app)
  for (const url of ['/before', '/encapsulated-before', '/after', '/encapsulated-after', '/no-such-route']) {
    t.equal((await app.inject(url)).statusCode, 503, `${url} is protected`)
  }
  await release()
  t.equal(app[kAdmissionController].totals.rejected.limit, 5)
})

t.test('regression: admission ran after the app\'s own onRequest hooks, so refused requests paid for auth', async t => {
  const app = Fastify()
  t.teardown(() => app.close())
  let authCalls = 0
  await app.register(admission, { registry: new Registry(), ...quiet, minLimit: 1, maxLimit: 1, initialLimit: 1 })
  app.addHook('onRequest', async function appAuth () { authCalls++ })
  app.register(fp(async function sessions (f) { f.addHook('onRequest', async function appSession () {}) }))
  const release = await holdOnlyPermit(app)
  t.equal(authCalls, 1, 'the admitted request was authenticated')
  t.equal((await app.inject('/hold')).statusCode, 503)
  t.equal(authCalls, 1, 'the refused one never reached the auth hook')
  await release()
})

t.test('hooks added before the plugin are named in one warning at boot', async t => {
  const lines: Array<{ level: number, msg: string, hooks?: string[] }> = []
  const app = Fastify({ logger: { level: 'warn', stream: { write: (s: string) => { lines.push(JSON.parse(s)) } } } })
  t.teardown(() => app.close())
  app.addHook('onRequest', async function appAuth () {})
  await app.register(admission, { registry: new Registry(), ...quiet })
  app.get('/', async () => 'ok')
  await app.ready()
  const warn = lines.find(l => l.msg.includes('run before the admission decision'))
  t.same(warn?.hooks, ['appAuth()'])

  const clean: string[] = []
  const ordered = Fastify({ logger: { level: 'warn', stream: { write: (s: string) => { clean.push(s) } } } })
  t.teardown(() => ordered.close())
  await ordered.register(admission, { registry: new Registry(), ...quiet })
  ordered.addHook('onRequest', async function appAuth () {})
  ordered.get('/', async () => 'ok')
  await ordered.ready()
  t.same(clean, [], 'registered first: no warning')
})

t.test('hook-order check: unreadable route listings are ignored, never fatal', async t => {
  const fake = (print: () => string): FastifyInstance => ({ printRoutes: print }) as unknown as FastifyInstance
  t.same(hooksBeforeAdmission(fake(() => { throw new Error('no') }), 'mine'), [])
  t.same(hooksBeforeAdmission(fake(() => '- (onRequest) [not json]\n- (onRequest) {"a":1}\n'), 'mine'), [])
  t.same(hooksBeforeAdmission(fake(() => '- (onRequest) ["a()","mine()"]\n- (onRequest) ["mine()","b()"]\n- (onRequest) ["c()"]'), 'mine'), ['a()'])
})

t.test('regression: a second Fastify instance with default options failed to boot (metric already registered)', async t => {
  const lines: string[] = []
  const publicApp = Fastify()
  const adminApp = Fastify({ logger: { level: 'info', stream: { write: (s: string) => { lines.push(s) } } } })
  t.teardown(async () => { await publicApp.close(); await adminApp.close() })
  const appCounter = new Counter({ name: 'app_orders_total', help: 'Orders.' })
  t.teardown(() => globalRegistry.removeSingleMetric('app_orders_total'))
  appCounter.inc()
  await publicApp.register(admission)
  await adminApp.register(admission)
  publicApp.get('/', async () => 'public')
  adminApp.get('/', async () => 'admin')
  await publicApp.ready()
  await adminApp.ready()
  t.equal((await publicApp.inject('/')).body, 'public')
  t.equal((await adminApp.inject('/')).body, 'admin')
  const publicText = (await publicApp.inject('/metrics')).body
  const adminText = (await adminApp.inject('/metrics')).body
  t.match(publicText, /fastify_admission_requests_total\{outcome="admitted"\} 1/)
  t.match(publicText, /app_orders_total 1/)
  t.match(adminText, /fastify_admission_requests_total\{outcome="admitted"\} 1/)
  t.match(adminText, /app_orders_total 1/, 'the second instance still serves the process\'s own metrics')
  t.ok(lines.some(l => l.includes('registry of its own')), 'and says why at info level')
  for (const text of [publicText, adminText]) {
    const helps = text.split('\n').filter(l => l.startsWith('# HELP ')).map(l => l.split(' ')[2])
    t.same(helps.filter((name, i) => helps.indexOf(name) !== i), [], 'every family once (a valid exposition)')
  }
})

t.test('regression: the default /metrics route collided with the app\'s own (declared before or after)', async t => {
  for (const order of ['before', 'after'] as const) {
    const app = Fastify()
    t.teardown(() => app.close())
    const own = async (): Promise<string> => 'app metrics'
    if (order === 'before') app.get('/metrics', own)
    app.register(admission, { registry: new Registry(), ...quiet })
    if (order === 'after') app.get('/metrics', own)
    await app.ready()
    const res = await app.inject('/metrics')
    t.equal(res.body, 'app metrics', `declared ${order}: the app's route wins`)
  }
})

t.test('regression: an app\'s /metrics reserved for an internal host was served to every other host by the fallback', async t => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(admission, { registry: new Registry(), ...quiet })
  app.get('/metrics', { constraints: { host: 'metrics.internal' } }, async () => 'internal')
  await app.ready()
  t.equal((await app.inject({ url: '/metrics', headers: { host: 'metrics.internal' } })).body, 'internal')
  t.equal((await app.inject({ url: '/metrics', headers: { host: 'public.example.com' } })).statusCode, 404, 'not served elsewhere')

  const posted = Fastify()
  t.teardown(() => posted.close())
  posted.post('/metrics', async () => 'posted') // declared before the plugin, another method
  posted.register(admission, { registry: new Registry(), ...quiet })
  await posted.ready()
  t.equal((await posted.inject('/metrics')).statusCode, 404, 'a route of any method at the path turns the fallback off')
})

t.test('the metrics path: moved, disabled, query strings, other methods', async t => {
  const app = Fastify()
  t.teardown(() => app.close())
  const registry = new Registry()
  await app.register(admission, { registry, ...quiet, metricsPath: '/internal/metrics' })
  await app.ready()
  t.equal((await app.inject('/metrics')).statusCode, 404)
  const moved = await app.inject('/internal/metrics?x=1')
  t.equal(moved.statusCode, 200)
  t.match(moved.headers['content-type'], /text\/plain/)
  t.match(moved.body, /fastify_admission_concurrency_limit/)
  t.equal((await app.inject({ method: 'POST', url: '/internal/metrics' })).statusCode, 404)
  t.equal(app[kAdmissionController].totals.admitted, 2, 'the 404s are counted, the scrapes are not')

  const off = Fastify()
  t.teardown(() => off.close())
  await off.register(admission, { registry: new Registry(), ...quiet, metricsPath: false })
  t.equal((await off.inject('/metrics')).statusCode, 404)
})

t.test('a scrape that fails answers 500 and the process goes on', async t => {
  const registry = new Registry()
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(admission, { registry, ...quiet })
  // eslint-disable-next-line no-new
  new Counter({ name: 'broken_total', help: 'x', registers: [registry], collect () { throw new Error('collector failed') } })
  const res = await app.inject('/metrics')
  t.equal(res.statusCode, 500)
  t.equal((await app.inject('/')).statusCode, 404)
})

t.test('404s are decided and counted like any request (they cost work too)', async t => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(admission, { registry: new Registry(), ...quiet, minLimit: 1, maxLimit: 1, initialLimit: 1 })
  const release = await holdOnlyPermit(app)
  t.equal((await app.inject('/nope')).statusCode, 503)
  await release()
  t.equal((await app.inject('/nope')).statusCode, 404)
  t.equal(app[kAdmissionController].totals.admitted, 2)
  t.equal(app[kAdmissionController].totals.rejected.limit, 1)
})

t.test('route config of a route declared before the plugin is validated at its first request', async t => {
  const app = Fastify()
  t.teardown(() => app.close())
  app.get('/bad', { config: { admission: { exempt: 'yes' } as never } }, async () => 'ok')
  app.get('/health', { config: { admission: { exempt: true } } }, async () => 'ok')
  app.register(admission, { registry: new Registry(), ...quiet })
  await app.ready()
  const res = await app.inject('/bad')
  t.equal(res.statusCode, 500)
  t.equal(res.json().code, 'FST_ERR_ADMISSION_INVALID_ROUTE_CONFIG')
  t.equal((await app.inject('/health')).statusCode, 200)
  t.equal(app[kAdmissionController].totals.admitted, 0, 'neither counted')
})

t.test('regression: every refusal wrote two info lines with Fastify\'s request logging', async t => {
  const lines: Array<{ msg: string, res?: { statusCode: number } }> = []
  const app = Fastify({ logger: { level: 'info', stream: { write: (s: string) => { lines.push(JSON.parse(s)) } } } })
  t.teardown(() => app.close())
  await app.register(admission, { registry: new Registry(), ...quiet, minLimit: 1, maxLimit: 1, initialLimit: 1 })
  const release = await holdOnlyPermit(app)
  lines.length = 0
  for (let i = 0; i < 10; i++) t.equal((await app.inject('/hold')).statusCode, 503)
  t.equal(lines.filter(l => l.msg === 'incoming request').length, 10, 'Fastify logs this before any hook runs')
  t.equal(lines.filter(l => l.msg === 'request completed').length, 0, 'refusals write no completion line')
  await release()
  t.equal(lines.filter(l => l.msg === 'request completed').length, 1, 'admitted requests still do')
})

/** The two ways to hand Fastify the predicate: a LogController (Fastify 5.10 and later), the top-level option before. */
const skipForms: Array<[string, () => FastifyServerOptions]> = [
  ['logController', () => ({ logController: new LogController({ disableRequestLogging: skipRequestLogWhileShedding }) })],
  ['disableRequestLogging', () => ({ disableRequestLogging: skipRequestLogWhileShedding })]
]

for (const [form, skipOption] of skipForms) {
  t.test(`skipRequestLogWhileShedding (${form}): no per-request lines while shedding, all of them otherwise`, async t => {
    const lines: string[] = []
    const app = Fastify({
      ...skipOption(),
      logger: { level: 'info', stream: { write: (s: string) => { lines.push(JSON.parse(s).msg) } } }
    })
    t.teardown(() => app.close())
    await app.register(admission, { registry: new Registry(), ...quiet, minLimit: 1, maxLimit: 1, initialLimit: 1 })
    const release = await holdOnlyPermit(app)
    t.equal((await app.inject('/hold')).statusCode, 503)
    app[kAdmissionController].onWindow({ durationMs: 100, elu: 1, delayP99Ms: 5 }, 2e9) // the episode starts
    lines.length = 0
    for (let i = 0; i < 10; i++) await app.inject('/hold')
    t.same(lines, [], 'nothing per request while shedding')
    await release()
    app[kAdmissionController].onWindow({ durationMs: 100, elu: 0.1, delayP99Ms: 0 }, 2e9 + 100) // the 10 refusals
    app[kAdmissionController].onWindow({ durationMs: 100, elu: 0.1, delayP99Ms: 0 }, 2e9 + 2000) // a quiet second: it ends
    t.equal(snapshot(app).shedding, false)
    t.equal((await app.inject('/hold')).statusCode, 200)
    t.same(lines, ['request completed', 'fastify-admission: shedding stopped', 'incoming request', 'request completed'],
      'the admitted request that held the permit logs its completion; all lines as usual once shedding stopped')
    const bare = Fastify(skipOption())
    t.teardown(() => bare.close())
    bare.get('/', async () => 'ok')
    t.equal((await bare.inject('/')).statusCode, 200, 'harmless on an app without the plugin')
  })
}

t.test('regression: skipRequestLogWhileShedding also dropped the error logs of admitted requests', async t => {
  const lines: Array<{ level: number, msg: string }> = []
  const app = Fastify({
    logController: new LogController({ disableRequestLogging: skipRequestLogWhileShedding }),
    logger: { level: 'info', stream: { write: (s: string) => { lines.push(JSON.parse(s)) } } }
  })
  t.teardown(() => app.close())
  await app.register(admission, { registry: new Registry(), ...quiet })
  app.get('/boom', async () => { throw new Error('database is down') })
  app.get('/health', { config: { admission: { exempt: true } } }, async () => { throw new Error('probe failed') })
  await app.ready()
  app[kAdmissionController].shedding = true // an episode is on; this request is admitted
  for (const url of ['/boom', '/health']) t.equal((await app.inject(url)).statusCode, 500)
  t.same(lines.map(l => l.msg), ['database is down', 'request completed', 'probe failed', 'request completed'],
    'only the line written before the decision is skipped')
  t.equal(lines[0]?.level, 50)
})

t.test('regression: a failing decorate left the sampler timer and the delay histogram running', async t => {
  const timers = (): number => process.getActiveResourcesInfo().filter(r => r === 'Timeout').length
  const app = Fastify()
  t.teardown(() => app.close())
  app.decorate('admission', 'taken' as never)
  const before = timers()
  const registry = new Registry()
  app.register(admission, { registry, ...quiet })
  await t.rejects(async () => { await app.ready() }, { code: 'FST_ERR_DEC_ALREADY_PRESENT' })
  t.equal(timers(), before, 'no timer left behind')
  t.equal(registry.getMetricsAsArray().length, 0, 'no metric left behind')
})

t.test('app.admission is undefined on an app without the plugin', async t => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.ready()
  t.equal(app.admission, undefined)
  t.throws(() => snapshot(app), /not registered/)
})

t.test('route config reader: the route\'s own config, through Fastify\'s context or routeOptions', async t => {
  const reader = new RouteConfigReader()
  const app = Fastify()
  t.teardown(() => app.close())
  const seen: unknown[] = []
  app.addHook('onRequest', async request => { seen.push(reader.read(request).tag) })
  app.get('/a', { config: { tag: 'a' } as never }, async () => 'a')
  app.get('/b', { config: { tag: 'b' } as never }, async () => 'b')
  for (const url of ['/a', '/b', '/a', '/nope']) await app.inject(url)
  t.same(seen, ['a', 'b', 'a', undefined])
  // A request object without Fastify's context (another Fastify version): routeOptions, every time.
  const fallback = new RouteConfigReader()
  const config = { tag: 'c' }
  const fake = { routeOptions: { config } } as unknown as FastifyRequest
  t.equal(fallback.read(fake), config)
  t.equal(fallback.read(fake), config)
})
