import t from 'tap'
import Fastify from 'fastify'
import underPressure from '@fastify/under-pressure'
import { Registry } from 'prom-client'
import admission, { OVERLOADED_CODE } from '../lib/index.js'
import { build } from './helpers/app.js'

const wait = (ms: number): Promise<void> => new Promise(resolve => setTimeout(resolve, ms))

t.test('a failing health check refuses through our reply, counted as reason health', async t => {
  let calls = 0
  const { app, registry } = await build(t, { underPressure: { healthCheck: async () => false, healthCheckInterval: 60_000 } })
  app.get('/', async () => { calls++; return 'ok' })
  app.get('/health', { config: { admission: { exempt: true } } }, async () => 'alive')
  await app.ready()
  const res = await app.inject('/')
  t.equal(res.statusCode, 503)
  t.match(res.headers['retry-after'], /^[12]$/)
  t.same(res.json(), { statusCode: 503, code: OVERLOADED_CODE, error: 'Service Unavailable', message: 'Server is overloaded, retry later' })
  t.equal(calls, 0)
  t.equal((await app.inject('/health')).statusCode, 200, 'exempt routes pass the ceilings too')
  t.equal((await app.inject('/metrics')).statusCode, 200)
  t.match(await registry.metrics(), /fastify_admission_requests_total\{outcome="rejected",reason="health"\} 1/)
})

t.test('heap and RSS ceilings are counted by reason', async t => {
  for (const [option, reason] of [['maxHeapUsedBytes', 'heap'], ['maxRssBytes', 'rss']] as const) {
    const { app, registry } = await build(t, { underPressure: { [option]: 1, sampleInterval: 10 } })
    app.get('/', async () => 'ok')
    await app.ready()
    await wait(60)
    t.equal((await app.inject('/')).statusCode, 503, option)
    t.match(await registry.metrics(), new RegExp(`requests_total\\{outcome="rejected",reason="${reason}"\\} 1`))
  }
})

t.test('a refusal stops the request even when an async onSend hook delays the reply', async t => {
  let calls = 0
  const { app } = await build(t, { statusCode: 429, underPressure: { healthCheck: async () => false, healthCheckInterval: 60_000 } })
  app.addHook('onSend', async (_req, _reply, payload) => {
    await wait(5)
    return payload
  })
  app.get('/', async () => { calls++; return 'ok' })
  await app.ready()
  const res = await app.inject('/')
  t.equal(res.statusCode, 429)
  t.equal(res.json().code, OVERLOADED_CODE)
  await wait(20)
  t.equal(calls, 0, 'the handler never ran')
})

t.test('an app that registered under-pressure itself keeps its own; ours runs beside it', async t => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(underPressure, { maxHeapUsedBytes: 1e12 })
  await app.register(admission, { registry: new Registry(), underPressure: { maxHeapUsedBytes: 1e12 } })
  app.get('/', async () => 'ok')
  await app.ready()
  t.equal((await app.inject('/')).statusCode, 200)
  t.equal(typeof app.memoryUsage, 'function', 'the app\'s own decorators are untouched')
})

t.test('regression: under-pressure registered after this plugin crashed the boot (FST_ERR_DEC_ALREADY_PRESENT)', async t => {
  for (const ours of [undefined, { maxHeapUsedBytes: 1e12 }]) {
    const app = Fastify()
    t.teardown(() => app.close())
    app.register(admission, { registry: new Registry(), underPressure: ours })
    app.register(underPressure, { maxHeapUsedBytes: 1e12, exposeStatusRoute: true })
    app.get('/', async () => 'ok')
    await app.ready()
    t.equal((await app.inject('/')).statusCode, 200, `ours: ${JSON.stringify(ours)}`)
    t.equal((await app.inject('/status')).statusCode, 200, 'the app\'s own status route works')
  }
})

t.test('under-pressure is registered only when a ceiling is asked for', async t => {
  for (const [underPressure, registered] of [[false, false], [undefined, false], [{}, false], [{ sampleInterval: 50 }, false],
    [{ maxRssBytes: 1e12 }, true], [{ healthCheck: async () => true, healthCheckInterval: 1000 }, true]] as const) {
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(admission, { registry: new Registry(), underPressure })
    await app.ready()
    t.equal(app.printPlugins().includes('under-pressure'), registered, JSON.stringify(underPressure))
    t.equal(app.hasDecorator('memoryUsage'), false, 'never decorates the app itself')
  }
})

t.test('regression: observe mode refused on under-pressure ceilings; now it counts would_reject and lets through', async t => {
  let calls = 0
  const { app, registry, controller } = await build(t, { mode: 'observe', underPressure: { healthCheck: async () => false, healthCheckInterval: 60_000 } })
  app.get('/', async () => { calls++; return 'ok' })
  await app.ready()
  t.equal((await app.inject('/')).statusCode, 200)
  t.equal(calls, 1)
  t.equal(controller.totals.observed.health, 1)
  t.equal(controller.totals.rejected.health, 0)
  t.match(await registry.metrics(), /requests_total\{outcome="would_reject",reason="health"\} 1/)
  t.equal(controller.inflight, 0)
})
