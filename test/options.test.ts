import t from 'tap'
import Fastify from 'fastify'
import { Registry } from 'prom-client'
import { metrics } from '@opentelemetry/api'
import admission, { InvalidOptionError, InvalidRouteConfigError, resolveOptions } from '../lib/index.js'

t.test('defaults: every option filled in, frozen', async t => {
  const o = resolveOptions(undefined)
  t.ok(Object.isFrozen(o))
  t.same(o, {
    mode: 'enforce',
    statusCode: 503,
    sampleInterval: 100,
    startupGrace: 0,
    turnBudget: 5,
    congestionInterval: 100,
    targetUtilization: 0.98,
    maxInflight: 0,
    maxEventLoopDelay: 0,
    maxEventLoopUtilization: 0,
    drainTimeout: 10000,
    initialLimit: 50,
    minLimit: 2,
    maxLimit: 10000,
    headroom: 0.25,
    retryAfterMin: 1,
    retryAfterMax: 30,
    registry: undefined,
    metricsPrefix: 'fastify_admission_',
    metricsPath: '/metrics',
    meter: undefined,
    underPressure: {}
  })
  t.same(resolveOptions(null), o)
  t.same(resolveOptions({ prefix: '/api', logLevel: 'info' }).mode, 'enforce', 'Fastify\'s own register options pass')
})

t.test('explicit values are kept, 0 where 0 is meaningful', async t => {
  const registry = new Registry()
  const meter = metrics.getMeter('test')
  const healthCheck = async (): Promise<boolean> => true
  const o = resolveOptions({
    mode: 'observe',
    statusCode: 429,
    sampleInterval: 50,
    startupGrace: 0,
    turnBudget: 1,
    congestionInterval: 10,
    targetUtilization: 0.5,
    maxInflight: 0,
    maxEventLoopDelay: 0,
    maxEventLoopUtilization: 0,
    minLimit: 1,
    maxLimit: 5,
    initialLimit: 5,
    headroom: 0,
    retryAfterMin: 2,
    retryAfterMax: 2,
    registry,
    metricsPrefix: '',
    metricsPath: false,
    meter,
    underPressure: { maxHeapUsedBytes: 1e9, healthCheck, healthCheckInterval: 500 }
  })
  t.equal(o.startupGrace, 0)
  t.equal(o.turnBudget, 1)
  t.equal(o.congestionInterval, 10)
  t.equal(o.targetUtilization, 0.5)
  t.equal(o.maxEventLoopUtilization, 0, '0 = no ceiling')
  t.same(resolveOptions({ maxInflight: 100, maxEventLoopDelay: 200, maxEventLoopUtilization: 1 }), {
    ...resolveOptions({}), maxInflight: 100, maxEventLoopDelay: 200, maxEventLoopUtilization: 1
  })
  t.equal(o.headroom, 0)
  t.equal(o.registry, registry)
  t.equal(o.metricsPrefix, '')
  t.equal(o.metricsPath, false)
  t.equal(o.meter, meter)
  t.same(o.underPressure, { maxHeapUsedBytes: 1e9, healthCheck, healthCheckInterval: 500 })
  t.equal(resolveOptions({ underPressure: false }).underPressure, false)
  t.equal(resolveOptions({ minLimit: 100 }).initialLimit, 100, 'initial limit follows a high floor')
  t.equal(resolveOptions({ maxLimit: 10 }).initialLimit, 10, 'and a low ceiling')
  t.equal(resolveOptions({ retryAfterMin: 60 }).retryAfterMax, 60)
})

const invalid: Array<[string, unknown, RegExp]> = [
  ['mode', 'shed', /invalid option "mode": expected one of "enforce", "observe", received "shed"/],
  ['statusCode', 500, /"statusCode": expected one of 503, 429, received 500/],
  ['sampleInterval', 0, /"sampleInterval": expected an integer from 10 to 10000, received 0/],
  ['sampleInterval', 1.5, /"sampleInterval".*received 1.5/],
  ['sampleInterval', '100', /"sampleInterval".*received "100"/],
  ['startupGrace', -1, /"startupGrace": expected an integer from 0/],
  ['startupGrace', NaN, /"startupGrace".*received NaN/],
  ['turnBudget', 0, /"turnBudget": expected an integer from 1 to 1000, received 0/],
  ['turnBudget', 2.5, /"turnBudget".*received 2.5/],
  ['congestionInterval', 5, /"congestionInterval": expected an integer from 10 to 10000, received 5/],
  ['targetUtilization', 0.4, /"targetUtilization": expected a number from 0.5 to 1, received 0.4/],
  ['targetUtilization', '0.9', /"targetUtilization".*received "0.9"/],
  ['maxInflight', -1, /"maxInflight": expected an integer from 0/],
  ['maxEventLoopDelay', NaN, /"maxEventLoopDelay".*received NaN/],
  ['maxEventLoopUtilization', 1.5, /"maxEventLoopUtilization": expected a number from 0 to 1, received 1.5/],
  ['maxEventLoopUtilization', -0.1, /"maxEventLoopUtilization".*received -0.1/],
  ['minLimit', 0, /"minLimit": expected an integer from 1/],
  ['maxLimit', Infinity, /"maxLimit".*received Infinity/],
  ['initialLimit', null, /"initialLimit".*received null/],
  ['headroom', -0.1, /"headroom": expected a number from 0 to 4, received -0.1/],
  ['headroom', NaN, /"headroom".*received NaN/],
  ['headroom', '1', /"headroom".*received "1"/],
  ['retryAfterMin', 0, /"retryAfterMin": expected an integer from 1/],
  ['retryAfterMax', [], /"retryAfterMax".*received an array/],
  ['registry', {}, /"registry": expected a prom-client Registry, received an object/],
  ['registry', null, /"registry".*received null/],
  ['metricsPrefix', 'bad-prefix', /"metricsPrefix": expected a Prometheus metric name prefix/],
  ['metricsPrefix', 7, /"metricsPrefix".*received 7/],
  ['metricsPath', 'metrics', /"metricsPath": expected a path starting with "\/" or false, received "metrics"/],
  ['metricsPath', true, /"metricsPath".*received true/],
  ['meter', {}, /"meter": expected an OpenTelemetry Meter, received an object/],
  ['meter', null, /"meter".*received null/],
  ['meter', 1, /"meter".*received 1/],
  // No removeBatchObservableCallback: the callback could not be removed on close.
  ['meter', { createObservableGauge () {}, createObservableCounter () {}, createHistogram () {}, addBatchObservableCallback () {} },
    /"meter": expected an OpenTelemetry Meter, received an object/],
  ['underPressure', true, /"underPressure": expected an object or false, received true/],
  ['underPressure', null, /"underPressure".*received null/],
  ['underPressure', [], /"underPressure".*received an array/],
  ['underPressure', { maxEventLoopDelay: 100 }, /"underPressure.maxEventLoopDelay": expected one of maxHeapUsedBytes/],
  ['underPressure', { maxHeapUsedBytes: -1 }, /"underPressure.maxHeapUsedBytes": expected a positive number, received -1/],
  ['underPressure', { maxRssBytes: 'lots' }, /"underPressure.maxRssBytes".*received "lots"/],
  ['underPressure', { healthCheck: true, healthCheckInterval: 100 }, /"underPressure.healthCheck": expected a function, received true/],
  ['underPressure', { healthCheck: async () => true }, /"underPressure.healthCheckInterval": expected a positive number when healthCheck is set/],
  ['limit', 5, /invalid option "limit": expected a known option/]
]

for (const [name, value, message] of invalid) {
  t.test(`invalid ${name} = ${String(value)} fails app.ready() with a coded error naming it`, async t => {
    const app = Fastify()
    t.teardown(() => app.close())
    app.register(admission, { registry: new Registry(), [name]: value } as never)
    const err = await app.ready().then(() => undefined, (e: unknown) => e)
    t.type(err, InvalidOptionError)
    t.type(err, TypeError)
    t.equal((err as { code: string }).code, 'FST_ERR_ADMISSION_INVALID_OPTION')
    t.match((err as Error).message, message)
  })
}

t.test('maxLimit below minLimit', async t => {
  t.throws(() => resolveOptions({ minLimit: 10, maxLimit: 5 }), {
    code: 'FST_ERR_ADMISSION_INVALID_OPTION',
    message: /"maxLimit": expected an integer >= minLimit \(10\), received 5/
  })
  t.throws(() => resolveOptions({ maxLimit: 5, initialLimit: 6 }), { message: /"initialLimit": expected an integer from 2 to 5/ })
  t.throws(() => resolveOptions({ retryAfterMin: 10, retryAfterMax: 5 }), { message: /"retryAfterMax": expected an integer from 10/ })
})

t.test('options that are not an object', async t => {
  for (const value of [5, 'x', [], () => {}]) {
    t.throws(() => resolveOptions(value), { code: 'FST_ERR_ADMISSION_INVALID_OPTION', message: /invalid option "options": expected an object/ })
  }
  t.throws(() => resolveOptions(() => {}), { message: /received a function/ })
})

const badRoutes: Array<[unknown, RegExp]> = [
  [true, /config.admission. on route GET \/x: expected an object, received true/],
  [null, /expected an object, received null/],
  [[], /expected an object, received an array/],
  [{ exempt: 'yes' }, /config.admission.exempt on route GET \/x: expected a boolean, received "yes"/],
  [{ priority: 1 }, /config.admission.priority on route GET \/x: expected a known key \(exempt\)/]
]

for (const [config, message] of badRoutes) {
  t.test(`invalid route config ${JSON.stringify(config)} fails at boot`, async t => {
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(admission, { registry: new Registry() })
    const err = await (async () => {
      app.get('/x', { config: { admission: config as never } }, async () => 'ok')
      await app.ready()
    })().then(() => undefined, (e: unknown) => e)
    t.type(err, InvalidRouteConfigError)
    t.equal((err as { code: string }).code, 'FST_ERR_ADMISSION_INVALID_ROUTE_CONFIG')
    t.match((err as Error).message, message)
  })
}
