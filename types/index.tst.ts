import { expect, test } from 'tstyche'
import Fastify from 'fastify'
import { Registry } from 'prom-client'
import admission, {
  admission as named, kAdmissionController, type AdmissionController, type AdmissionOptions,
  type AdmissionRouteConfig, type AdmissionSnapshot, type Mode
} from 'fastify-admission'

const app = Fastify()

test('register with no options, or with every option', () => {
  expect(app.register(admission)).type.not.toRaiseError()
  expect(app.register(named, {})).type.not.toRaiseError()
  expect(app.register(admission, {
    mode: 'observe',
    statusCode: 429,
    sampleInterval: 50,
    startupGrace: 0,
    initialLimit: 20,
    minLimit: 1,
    maxLimit: 500,
    headroom: 0.25,
    retryAfterMin: 1,
    retryAfterMax: 60,
    registry: new Registry(),
    metricsPrefix: 'api_',
    metricsPath: '/internal/metrics',
    underPressure: { maxHeapUsedBytes: 1e9, maxRssBytes: 2e9, healthCheck: async () => true, healthCheckInterval: 1000 }
  })).type.not.toRaiseError()
  expect(app.register(admission, { metricsPath: false, underPressure: false })).type.not.toRaiseError()
})

test('bad options do not compile', () => {
  expect(app.register(admission, { mode: 'shed' })).type.toRaiseError()
  expect(app.register(admission, { statusCode: 500 })).type.toRaiseError()
  expect(app.register(admission, { sampleInterval: '100' })).type.toRaiseError()
  expect(app.register(admission, { metricsPath: true })).type.toRaiseError()
  expect(app.register(admission, { registry: {} })).type.toRaiseError()
  expect(app.register(admission, { underPressure: { maxEventLoopDelay: 100 } })).type.toRaiseError()
  expect<AdmissionOptions>().type.not.toBeAssignableFrom({ limit: 5 })
})

test('the decorator is a read-only snapshot', () => {
  expect(app.admission).type.toBe<AdmissionSnapshot>()
  expect(app.admission.limit).type.toBe<number>()
  expect(app.admission.mode).type.toBe<Mode>()
  expect(app.admission.shedding).type.toBe<boolean>()
  expect(app.admission.saturation).type.toBe<number>()
  expect(app[kAdmissionController]).type.toBe<AdmissionController>()
  expect(() => { app.admission.limit = 5 }).type.toRaiseError("Cannot assign to 'limit' because it is a read-only property")
})

test('per-route config.admission', () => {
  expect(app.get('/health', { config: { admission: { exempt: true } } }, async () => 'ok')).type.not.toRaiseError()
  expect(app.get('/x', { config: { admission: {} } }, async () => 'ok')).type.not.toRaiseError()
  expect(app.get('/x', { config: { admission: { exempt: 'yes' } } }, async () => 'ok')).type.toRaiseError()
  expect<AdmissionRouteConfig>().type.toBe<{ exempt?: boolean }>()
})
