import t from 'tap'
import { spawnSync } from 'node:child_process'
import Fastify from 'fastify'
import { Registry, register as globalRegistry } from 'prom-client'
import admission from '../lib/index.js'
import { build, holdingTheLimit, turns } from './helpers/app.js'

const promtool = spawnSync('promtool', ['--version']).status === 0

t.test('metrics text from a fresh registry: every series, exact values', async t => {
  const { app, controller, gate: g, holding } = await holdingTheLimit(t)
  await app.inject('/slow')
  await app.inject('/slow')
  controller.onWindow({ durationMs: 100, elu: 1, delayP99Ms: 12 }, 1e9 + 100)
  const res = await app.inject('/metrics')
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^text\/plain; version=0\.0\.4/)
  const text = res.body
  for (const line of [
    'fastify_admission_inflight_requests 1',
    'fastify_admission_concurrency_limit 1',
    'fastify_admission_event_loop_utilization_ratio 1',
    'fastify_admission_event_loop_delay_p99_seconds 0.012',
    'fastify_admission_retry_after_seconds 1',
    'fastify_admission_shedding 1',
    'fastify_admission_capacity_requests_per_second 0',
    'fastify_admission_requests_total{outcome="admitted"} 1',
    'fastify_admission_requests_total{outcome="rejected",reason="limit"} 2',
    '# TYPE fastify_admission_requests_total counter',
    '# TYPE fastify_admission_saturation_ratio gauge'
  ]) {
    t.ok(text.split('\n').includes(line), line)
  }
  t.notMatch(text, /reason="heap"/, 'reasons appear once they occur')
  t.notMatch(text, /NaN| [+-]?Inf/, 'no value is NaN or infinite')
  t.ok(text.split('\n').includes('fastify_admission_request_duration_seconds_count{outcome="rejected"} 2'), 'refusals timed')
  t.ok(text.split('\n').includes('fastify_admission_request_duration_seconds_count{outcome="admitted"} 0'), 'the held request is not timed yet')
  g.open()
  await holding
  await turns()
  // Counters keep counting between scrapes; gauges follow the state.
  await app.inject('/slow')
  const again = (await app.inject('/metrics')).body
  t.ok(again.includes('fastify_admission_requests_total{outcome="admitted"} 2'))
  t.ok(again.includes('fastify_admission_inflight_requests 0'))
  t.ok(again.includes('fastify_admission_request_duration_seconds_count{outcome="admitted"} 2'), 'admitted ones timed once done')
})

t.test('refusals timed without a logger: the rejected durations do not all read 0', async t => {
  // Fastify keeps no start time without a logger or an onResponse hook: its reply.elapsedTime read 0 for
  // every refusal, so the rejected histogram's sum stayed 0 in an app built with Fastify's defaults.
  const { app, gate: g, holding } = await holdingTheLimit(t)
  for (let i = 0; i < 5; i++) t.equal((await app.inject('/slow')).statusCode, 503)
  const text = (await app.inject('/metrics')).body
  const sum = /^fastify_admission_request_duration_seconds_sum\{outcome="rejected"\} (\S+)$/m.exec(text)
  t.ok(sum !== null && Number(sum[1]) > 0, `rejected sum ${sum?.[1]} > 0`)
  t.ok(text.split('\n').includes('fastify_admission_request_duration_seconds_count{outcome="rejected"} 5'))
  g.open()
  await holding
})

t.test('a zero series for refusals before the first one', async t => {
  const { app } = await build(t)
  await app.ready()
  const text = (await app.inject('/metrics')).body
  t.ok(text.includes('fastify_admission_requests_total{outcome="admitted"} 0'))
  t.ok(text.includes('fastify_admission_requests_total{outcome="rejected",reason="limit"} 0'))
  const { app: observing } = await build(t, { mode: 'observe' })
  await observing.ready()
  t.ok((await observing.inject('/metrics')).body.includes('fastify_admission_requests_total{outcome="would_reject",reason="limit"} 0'))
})

t.test('promtool check metrics is clean', { skip: !promtool && process.env.CI === undefined ? 'promtool not installed (apt-get install prometheus); CI installs it' : false }, async t => {
  const { app, controller } = await build(t, { underPressure: { healthCheck: async () => false, healthCheckInterval: 60_000 } })
  app.get('/', async () => 'ok')
  await app.ready()
  await app.inject('/')
  controller.onWindow({ durationMs: 100, elu: 0.5, delayP99Ms: 3 }, 1e9)
  const text = (await app.inject('/metrics')).body
  const check = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' })
  t.equal(check.error, undefined, 'promtool ran')
  t.equal(check.status, 0, check.stdout + check.stderr)
  t.equal((check.stdout + check.stderr).trim(), '', 'no lint findings')
})

t.test('metricsPrefix, metricsPath and metricsPath: false', async t => {
  const { app, registry } = await build(t, { metricsPrefix: 'api_', metricsPath: '/internal/metrics' })
  await app.ready()
  t.equal((await app.inject('/metrics')).statusCode, 404)
  const body = (await app.inject('/internal/metrics')).body
  t.match(body, /^# HELP api_inflight_requests/m)
  t.notMatch(body, /fastify_admission_/)
  t.ok(registry.getSingleMetric('api_concurrency_limit'))
  const { app: none, registry: kept } = await build(t, { metricsPath: false })
  await none.ready()
  t.equal((await none.inject('/metrics')).statusCode, 404)
  t.ok(kept.getSingleMetric('fastify_admission_concurrency_limit'), 'metrics still registered for the app to expose')
})

t.test('default: the global prom-client registry', async t => {
  const app = Fastify()
  await app.register(admission)
  t.ok(globalRegistry.getSingleMetric('fastify_admission_concurrency_limit'))
  t.match((await app.inject('/metrics')).body, /fastify_admission_saturation_ratio/)
  await app.close()
  t.equal(globalRegistry.getSingleMetric('fastify_admission_concurrency_limit'), undefined)
})

t.test('two instances on one explicit registry: the second fails at boot with a coded error', async t => {
  const registry = new Registry()
  const { app } = await build(t, { registry })
  await app.ready()
  const other = Fastify()
  t.teardown(() => other.close())
  other.register(admission, { registry })
  await t.rejects(async () => { await other.ready() }, { code: 'FST_ERR_ADMISSION_METRICS_CONFLICT', message: /fastify_admission_inflight_requests.*metricsPrefix/ })
})

t.test('a non-finite reading is exported as 0, never NaN', async t => {
  const { app, controller, registry } = await build(t)
  await app.ready()
  controller.saturation = NaN
  controller.elu = Infinity
  const text = await registry.metrics()
  t.ok(text.split('\n').includes('fastify_admission_saturation_ratio 0'))
  t.ok(text.split('\n').includes('fastify_admission_event_loop_utilization_ratio 0'))
})

t.test('resetMetrics() empties the histograms too', async t => {
  const { app, registry } = await build(t)
  app.get('/x', async () => 'x')
  await app.ready()
  await app.inject('/x')
  await turns()
  const before = await registry.metrics()
  t.ok(before.split('\n').includes('fastify_admission_request_duration_seconds_count{outcome="admitted"} 1'), 'one admitted request timed')
  registry.resetMetrics()
  const after = (await registry.metrics()).split('\n')
  t.ok(after.includes('fastify_admission_request_duration_seconds_count{outcome="admitted"} 0'))
  t.ok(after.includes('fastify_admission_request_duration_seconds_bucket{outcome="admitted",le="+Inf"} 0'))
  t.ok(after.some(line => /^fastify_admission_event_loop_delay_seconds_count [0-2]$/.test(line)), 'loop delay restarted from (about) zero')
})
