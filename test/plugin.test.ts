import t from 'tap'
import Fastify from 'fastify'
import { Registry } from 'prom-client'
import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import admission, { admission as named, kAdmissionController, OVERLOADED_CODE, WINDOW_CHANNEL, type WindowReport } from '../lib/index.js'
import { build, gate, saturate, snapshot, turns } from './helpers/app.js'
import { request } from 'undici'
import { portOf, until } from './helpers/sockets.js'
import { DEFAULT_CLASS } from '../lib/admission.js'

t.test('exports: default and named are the same fastify-plugin wrapped plugin', async t => {
  t.equal(admission, named)
  t.equal(typeof admission, 'function')
  t.equal((admission as unknown as Record<symbol, unknown>)[Symbol.for('fastify.display-name')], 'fastify-admission')
  t.same((admission as unknown as Record<symbol, { fastify: string } | undefined>)[Symbol.for('plugin-meta')]?.fastify, '5.x')
})

t.test('admitted path: the handler runs and the permit comes back', async t => {
  const { app } = await build(t)
  app.get('/', async () => ({ hello: 'world' }))
  const res = await app.inject('/')
  t.equal(res.statusCode, 200)
  t.same(res.json(), { hello: 'world' })
  t.equal(res.headers['retry-after'], undefined)
  await turns()
  t.equal(app.admission?.inflight, 0)
})

t.test('over the limit under pressure: 503 at once, Retry-After, JSON body, handler not run', async t => {
  // The limit's test: with the default 5 ms turn budget, a slow turn of a cold test process after the
  // refusal (which keeps the turn rule on) refused the last request about once in 15 runs.
  const { app, controller } = await build(t, { minLimit: 1, maxLimit: 1, initialLimit: 1, turnBudget: 1000 })
  const g = gate()
  let calls = 0
  app.get('/slow', async () => { calls++; await g.wait; return { ok: true } })
  await app.ready()
  saturate(controller)
  const first = app.inject('/slow')
  await turns(10)
  t.equal(app.admission?.inflight, 1)
  const refused = await app.inject('/slow')
  t.equal(refused.statusCode, 503)
  t.match(refused.headers['retry-after'], /^[12]$/)
  t.equal(refused.headers['content-type'], 'application/json; charset=utf-8')
  t.same(refused.json(), {
    statusCode: 503,
    code: OVERLOADED_CODE,
    error: 'Service Unavailable',
    message: 'Server is overloaded, retry later'
  })
  t.equal(calls, 1, 'the refused request never reached the handler')
  g.open()
  t.equal((await first).statusCode, 200)
  await turns()
  t.equal(app.admission?.inflight, 0)
  t.equal((await app.inject('/slow')).statusCode, 200, 'admitted again once the permit is back')
})

t.test('each route has its slot in the cost model and counts its completions there; an exempt route has none', async t => {
  const { app, controller } = await build(t)
  app.get('/a', async () => ({ a: 1 }))
  app.get('/b', async () => ({ b: 1 }))
  app.get('/x', { config: { admission: { exempt: true } } }, async () => ({ x: 1 }))
  await app.listen({ port: 0, host: '127.0.0.1' })
  // Over a socket: injected responses did not count as finished here.
  for (const url of ['/a', '/b', '/a', '/x', '/a', '/x']) {
    const res = await request(`http://127.0.0.1:${portOf(app)}${url}`)
    t.equal(res.statusCode, 200)
    await res.body.text()
  }
  await until(() => controller.inflight === 0)
  t.same(controller.costs.slots.map(slot => slot.completed), [0, 3, 1], 'the shared slot, /a, /b')
  controller.onWindow({ durationMs: 100, elu: 0.1, delayP99Ms: 0 }, 1e9)
  t.same(controller.costs.slots.map(slot => [slot.completed, slot.seen]), [[0, 0], [0, 3], [0, 1]], 'learned from, counted as seen')
})

t.test('statusCode 429 option', async t => {
  const { app, controller } = await build(t, { statusCode: 429, minLimit: 1, maxLimit: 1, initialLimit: 1 })
  const g = gate()
  app.get('/slow', async () => { await g.wait; return 'ok' })
  await app.ready()
  saturate(controller)
  const first = app.inject('/slow')
  await turns(10)
  const refused = await app.inject('/slow')
  t.equal(refused.statusCode, 429)
  t.equal(refused.json().error, 'Too Many Requests')
  t.equal(refused.json().statusCode, 429)
  t.ok(Number(refused.headers['retry-after']) >= 1)
  g.open()
  await first
})

t.test('no error-level log per refusal; one warn when shedding starts and one when it stops', async t => {
  const lines: Array<{ level: number, msg: string }> = []
  const app = Fastify({
    logger: { level: 'info', stream: { write: (s: string) => { lines.push(JSON.parse(s)) } } }
  })
  t.teardown(() => app.close())
  await app.register(admission, { registry: new Registry(), startupGrace: 0, sampleInterval: 10_000, minLimit: 1, maxLimit: 1, initialLimit: 1 })
  const g = gate()
  app.get('/slow', async () => { await g.wait; return 'ok' })
  await app.ready()
  const controller = app[kAdmissionController]
  saturate(controller, 1e9)
  const first = app.inject('/slow')
  await turns(10)
  for (let i = 0; i < 20; i++) t.equal((await app.inject('/slow')).statusCode, 503)
  controller.onWindow({ durationMs: 100, elu: 1, delayP99Ms: 5 }, 1e9 + 100)
  controller.onWindow({ durationMs: 100, elu: 1, delayP99Ms: 5 }, 1e9 + 2000)
  g.open()
  await first
  t.equal(lines.filter(l => l.level >= 50).length, 0, 'nothing at error level')
  const warns = lines.filter(l => l.level === 40).map(l => l.msg)
  t.same(warns, ['fastify-admission: shedding started', 'fastify-admission: shedding stopped'])
})

t.test('shedding logs are rate-limited: a new episode within 10 s is not logged again', async t => {
  const warns: string[] = []
  const app = Fastify({ logger: { level: 'warn', stream: { write: (s: string) => { warns.push(JSON.parse(s).msg) } } } })
  t.teardown(() => app.close())
  await app.register(admission, { registry: new Registry(), mode: 'observe', sampleInterval: 10_000 })
  await app.ready()
  const c = app[kAdmissionController]
  const episode = (at: number): void => {
    c.acquire(DEFAULT_CLASS, undefined, 'health')
    c.release(0, false)
    c.onWindow({ durationMs: 100, elu: 0.1, delayP99Ms: 0 }, at)
    c.onWindow({ durationMs: 100, elu: 0.1, delayP99Ms: 0 }, at + 1500)
  }
  episode(1e9)
  episode(1e9 + 5000)
  episode(1e9 + 20000)
  t.same(warns, [
    'fastify-admission: would shed started', 'fastify-admission: would shed stopped',
    'fastify-admission: would shed started', 'fastify-admission: would shed stopped'
  ])
})

t.test('exempt routes answer during overload and are not counted', async t => {
  const { app, controller } = await build(t, { minLimit: 1, maxLimit: 1, initialLimit: 1 })
  const g = gate()
  app.get('/slow', async () => { await g.wait; return 'ok' })
  app.get('/health', { config: { admission: { exempt: true } } }, async () => ({ status: 'ok' }))
  app.get('/explicit', { config: { admission: { exempt: false } } }, async () => 'counted')
  app.get('/other', { config: { admission: {} } }, async () => 'counted')
  await app.ready()
  saturate(controller)
  const first = app.inject('/slow')
  await turns(10)
  t.equal((await app.inject('/health')).statusCode, 200)
  t.equal((await app.inject('/metrics')).statusCode, 200, 'the metrics route is exempt')
  t.equal((await app.inject('/explicit')).statusCode, 503)
  t.equal((await app.inject('/other')).statusCode, 503)
  t.equal(app.admission?.inflight, 1)
  g.open()
  await first
  t.equal(controller.totals.admitted, 1)
  t.equal(controller.totals.rejected.limit, 2)
})

t.test('routes with their own onRequest hooks keep them, after the admission decision', async t => {
  const { app, controller } = await build(t, { minLimit: 1, maxLimit: 1, initialLimit: 1 })
  const seen: string[] = []
  app.get('/one', { onRequest: async () => { seen.push('one') } }, async () => 'ok')
  app.get('/many', { onRequest: [async () => { seen.push('a') }, async () => { seen.push('b') }] }, async () => 'ok')
  const g = gate()
  app.get('/slow', async () => { await g.wait; return 'ok' })
  await app.ready()
  t.equal((await app.inject('/one')).statusCode, 200)
  t.equal((await app.inject('/many')).statusCode, 200)
  t.same(seen, ['one', 'a', 'b'])
  saturate(controller)
  const holding = app.inject('/slow')
  await turns(10)
  t.equal((await app.inject('/one')).statusCode, 503)
  t.same(seen, ['one', 'a', 'b'], 'a refused request never reaches the route\'s own hooks')
  g.open()
  t.equal((await holding).statusCode, 200)
})

t.test('observe mode: nothing refused, would-be refusals counted', async t => {
  const { app, controller, registry } = await build(t, { mode: 'observe', minLimit: 1, maxLimit: 1, initialLimit: 1 })
  const g = gate()
  app.get('/slow', async () => { await g.wait; return 'ok' })
  await app.ready()
  saturate(controller)
  const pending = [app.inject('/slow'), app.inject('/slow'), app.inject('/slow')]
  await turns(10)
  t.equal(app.admission?.inflight, 3)
  g.open()
  for (const res of await Promise.all(pending)) t.equal(res.statusCode, 200)
  const text = await registry.metrics()
  t.match(text, /fastify_admission_requests_total\{outcome="would_reject",reason="limit"\} 2/)
  t.match(text, /fastify_admission_requests_total\{outcome="admitted"\} 1/)
  t.notMatch(text, /outcome="rejected"/)
})

t.test('decorator: a fresh frozen snapshot on each access', async t => {
  const { app } = await build(t, { initialLimit: 7 })
  await app.ready()
  const a = snapshot(app)
  t.ok(Object.isFrozen(a))
  t.not(a, app.admission)
  t.same(Object.keys(a).sort(), [
    'capacity', 'eventLoopDelaySeconds', 'eventLoopUtilization', 'inflight', 'limit', 'mode',
    'draining', 'retryAfterSeconds', 'saturation', 'shedding'
  ].sort())
  t.equal(a.limit, 7)
  t.equal(a.mode, 'enforce')
  t.equal(a.shedding, false)
  t.throws(() => { (app as unknown as Record<string, unknown>).admission = 1 })
})

t.test('the sampler runs on its timer and keeps every reading finite', async t => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(admission, { registry: new Registry(), sampleInterval: 10 })
  app.get('/', async () => 'ok')
  await app.ready()
  for (let i = 0; i < 20; i++) await app.inject('/')
  await new Promise(resolve => setTimeout(resolve, 60))
  const snap = snapshot(app)
  for (const key of ['limit', 'inflight', 'eventLoopUtilization', 'eventLoopDelaySeconds', 'saturation', 'capacity', 'retryAfterSeconds'] as const) {
    t.ok(Number.isFinite(snap[key]), `${key} is finite`)
  }
  t.ok(snap.eventLoopUtilization > 0 && snap.eventLoopUtilization <= 1)
})

t.test('every window is published on the diagnostics channel while someone subscribes', async t => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(admission, { registry: new Registry(), sampleInterval: 10 })
  app.get('/', async () => 'ok')
  await app.listen({ port: 0, host: '127.0.0.1' })
  const reports: WindowReport[] = []
  let arrived = 0
  let completed = 0
  let enough: () => void = () => {}
  const done = new Promise<void>(resolve => { enough = resolve })
  const listener = (message: unknown): void => {
    const report = message as WindowReport
    reports.push(report)
    arrived += report.arrivals
    completed += report.completed
    // A request can finish in the window after the one that read it.
    if (arrived >= 3 && completed >= 3) enough()
  }
  subscribe(WINDOW_CHANNEL, listener)
  for (let i = 0; i < 3; i++) t.equal((await fetch(`http://127.0.0.1:${portOf(app)}/`)).status, 200)
  // The sampler's timer is unref()ed: this one keeps the process up until the windows are in (and
  // fails the test if they never come).
  let timeout: NodeJS.Timeout | undefined
  await Promise.race([done, new Promise((_resolve, reject) => { timeout = setTimeout(reject, 10_000, new Error('no window report')) })])
  clearTimeout(timeout)
  unsubscribe(WINDOW_CHANNEL, listener)
  t.equal(arrived, 3, 'the three requests, each in one window')
  t.equal(completed, 3, 'and their completions')
  t.equal(reports.reduce((sum, r) => sum + r.refused, 0), 0)
  const last = reports.at(-1)
  t.equal(last?.inflight, 0)
  t.equal(last?.limit, snapshot(app).limit)
  t.ok(reports.every((r, i) => i === 0 || r.at > (reports[i - 1]?.at ?? Infinity)), 'in window order')
})

t.test('close clears the timer and unregisters the metrics, so the plugin can register again', async t => {
  const registry = new Registry()
  const first = Fastify()
  await first.register(admission, { registry })
  await first.close()
  t.equal(registry.getMetricsAsArray().length, 0)
  const second = Fastify()
  t.teardown(() => second.close())
  await second.register(admission, { registry })
  t.ok(registry.getSingleMetric('fastify_admission_concurrency_limit'))
})

t.test('release is idempotent: a second close event gives nothing back twice', async t => {
  const { app } = await build(t)
  const other = gate()
  app.get('/hold', async () => { await other.wait; return 'ok' })
  // A stray 'close' emitted after the response finished, before the real one.
  app.get('/', { onResponse: async (_request, reply) => { reply.raw.emit('close') } }, async () => 'ok')
  const holding = app.inject('/hold')
  await turns(10)
  t.equal(app.admission?.inflight, 1)
  t.equal((await app.inject('/')).statusCode, 200)
  await turns()
  t.equal(app.admission?.inflight, 1, 'only the held permit is still out')
  other.open()
  await holding
  await turns()
  t.equal(app.admission?.inflight, 0)
})

function burn (ms: number): void {
  const end = performance.now() + ms
  while (performance.now() < end);
}

t.test('a real overload onset is refused before any window closes; an idle loop still admits', async t => {
  const { app, controller } = await build(t, { minLimit: 1, maxLimit: 1, initialLimit: 1 })
  const g = gate()
  app.get('/slow', async () => { await g.wait; return 'ok' })
  await app.ready()
  controller.onWindow({ durationMs: 100, elu: 0.1, delayP99Ms: 0 }, 1e9) // no pressure in the window
  const held = [app.inject('/slow')]
  await turns(10)
  await new Promise(resolve => setTimeout(resolve, 50))
  held.push(app.inject('/slow'))
  await turns(10)
  t.equal(app.admission?.inflight, 2, 'at the limit with an idle loop (a slow downstream): admitted')
  // 150 ms of busy turns without an idle moment, each reading a request.
  for (let i = 0; i < 15; i++) {
    held.push(app.inject('/slow'))
    burn(10)
    await new Promise(resolve => setImmediate(resolve))
  }
  const refused = await app.inject('/slow')
  t.equal(refused.statusCode, 503, 'at the limit after 150 ms of saturation: refused at once')
  t.equal(controller.totals.rejected.limit > 0, true)
  g.open()
  const answers = await Promise.all(held)
  t.equal(answers[0]?.statusCode, 200)
  t.equal(answers[1]?.statusCode, 200)
})
