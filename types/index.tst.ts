import { expect, test } from 'tstyche'
import Fastify, { LogController } from 'fastify'
import { Registry } from 'prom-client'
import { metrics } from '@opentelemetry/api'
import admission, {
  admission as named, kAdmissionController, type AdmissionController, type AdmissionOptions,
  type AdmissionRouteConfig, type AdmissionSnapshot, type Mode, skipRequestLogWhileShedding, WINDOW_CHANNEL,
  type WindowReport
} from 'fastify-admission'
import { subscribe } from 'node:diagnostics_channel'

const app = Fastify()

test('register with no options, or with every option', () => {
  expect(app.register(admission)).type.not.toRaiseError()
  expect(app.register(named, {})).type.not.toRaiseError()
  expect(app.register(admission, {
    mode: 'observe',
    statusCode: 429,
    sampleInterval: 50,
    startupGrace: 0,
    turnBudget: 10,
    congestionInterval: 200,
    targetUtilization: 0.95,
    maxInflight: 1000,
    maxEventLoopDelay: 200,
    maxEventLoopUtilization: 0.99,
    drainTimeout: 5000,
    initialLimit: 20,
    minLimit: 1,
    maxLimit: 500,
    headroom: 0.25,
    retryAfterMin: 1,
    retryAfterMax: 60,
    registry: new Registry(),
    metricsPrefix: 'api_',
    metricsPath: '/internal/metrics',
    meter: metrics.getMeter('my-api'),
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
  expect(app.register(admission, { drainTimeout: '10s' })).type.toRaiseError()
  expect(app.register(admission, { meter: 1 })).type.toRaiseError()
  expect(app.register(admission, { meter: {} })).type.toRaiseError()
  expect<AdmissionOptions>().type.not.toBeAssignableFrom({ limit: 5 })
})

test('the decorator is a read-only snapshot, possibly absent (an app that did not register the plugin)', () => {
  expect(app.admission).type.toBe<AdmissionSnapshot | undefined>()
  expect(app.admission.limit).type.toRaiseError("'app.admission' is possibly 'undefined'")
  expect(app.admission?.limit).type.toBe<number | undefined>()
  const snap = app.admission
  if (snap !== undefined) {
    expect(snap.mode).type.toBe<Mode>()
    expect(snap.shedding).type.toBe<boolean>()
    expect(snap.draining).type.toBe<boolean>()
    expect(snap.saturation).type.toBe<number>()
    expect(() => { snap.limit = 5 }).type.toRaiseError("Cannot assign to 'limit' because it is a read-only property")
  }
  expect(app[kAdmissionController]).type.toBe<AdmissionController>()
})

test('skipRequestLogWhileShedding fits Fastify\'s disableRequestLogging and a LogController', () => {
  expect(Fastify({ disableRequestLogging: skipRequestLogWhileShedding })).type.not.toRaiseError()
  expect(Fastify({ logController: new LogController({ disableRequestLogging: skipRequestLogWhileShedding }) })).type.not.toRaiseError()
})

test('per-route config.admission', () => {
  expect(app.get('/health', { config: { admission: { exempt: true } } }, async () => 'ok')).type.not.toRaiseError()
  expect(app.get('/x', { config: { admission: {} } }, async () => 'ok')).type.not.toRaiseError()
  expect(app.get('/x', { config: { admission: { exempt: 'yes' } } }, async () => 'ok')).type.toRaiseError()
  expect<AdmissionRouteConfig>().type.toBe<{ exempt?: boolean }>()
})

test('window reports on the diagnostics channel: a channel name and a read-only report', () => {
  expect(WINDOW_CHANNEL).type.toBe<'fastify-admission:window'>()
  expect(subscribe(WINDOW_CHANNEL, message => {
    const report = message as WindowReport
    expect(report.refused).type.toBe<number>()
    expect(report.enforcing).type.toBe<boolean>()
    expect(() => { report.limit = 5 }).type.toRaiseError("Cannot assign to 'limit' because it is a read-only property")
  })).type.not.toRaiseError()
})
