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

t.test('an app that registered under-pressure itself keeps its own; ours is not added again', async t => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(underPressure, { maxHeapUsedBytes: 1e12 })
  await app.register(admission, { registry: new Registry(), underPressure: { maxHeapUsedBytes: 1 } })
  app.get('/', async () => 'ok')
  await app.ready()
  t.equal((await app.inject('/')).statusCode, 200, 'the app\'s own generous ceiling applies')
})

t.test('underPressure: false does not register it', async t => {
  const { app } = await build(t, { underPressure: false })
  await app.ready()
  t.equal(app.hasDecorator('memoryUsage'), false)
  const { app: other } = await build(t)
  await other.ready()
  t.equal(other.hasDecorator('memoryUsage'), true, 'registered by default')
})
