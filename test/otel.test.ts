import t, { type Test } from 'tap'
import Fastify from 'fastify'
import { Registry } from 'prom-client'
import {
  AggregationTemporality, DataPointType, MeterProvider, MetricReader, type DataPoint, type Histogram, type MetricData,
  type MetricReaderOptions
} from '@opentelemetry/sdk-metrics'
import admission, { kAdmissionController } from '../lib/index.js'
import { SECONDS_BUCKETS } from '../lib/histogram.js'
import { OTEL_INSTRUMENTS, registerOpenTelemetry } from '../lib/otel.js'
import { build, holdingTheLimit, snapshot, turns } from './helpers/app.js'

/** Collects only when the test calls collect(). */
class TestReader extends MetricReader {
  protected override async onForceFlush (): Promise<void> {}
  protected override async onShutdown (): Promise<void> {}
}

/** A meter on an SDK provider, and a function that collects and returns the metrics by name. */
function sdk (t: Test, options?: MetricReaderOptions): { meter: ReturnType<MeterProvider['getMeter']>, collect: () => Promise<Map<string, MetricData>> } {
  const reader = new TestReader(options)
  const provider = new MeterProvider({ readers: [reader] })
  t.teardown(() => provider.shutdown())
  return {
    meter: provider.getMeter('test'),
    async collect () {
      const { resourceMetrics, errors } = await reader.collect()
      t.same(errors, [], 'collection without errors')
      const byName = new Map<string, MetricData>()
      for (const scope of resourceMetrics.scopeMetrics) {
        for (const metric of scope.metrics) byName.set(metric.descriptor.name, metric)
      }
      return byName
    }
  }
}

/** Values of a gauge or sum by `outcome/reason` of its attributes ('' without attributes). */
function values (metric: MetricData | undefined): Record<string, number> {
  const out: Record<string, number> = {}
  for (const point of (metric?.dataPoints ?? []) as Array<DataPoint<number>>) {
    out[[point.attributes.outcome, point.attributes.reason].filter(a => a !== undefined).join('/')] = point.value
  }
  return out
}

/** Count of a histogram's point by outcome ('' without attributes). */
function counts (metric: MetricData | undefined): Record<string, number> {
  const out: Record<string, number> = {}
  for (const point of (metric?.dataPoints ?? []) as Array<DataPoint<Histogram>>) {
    out[String(point.attributes.outcome ?? '')] = point.value.count
  }
  return out
}

const GAUGES = {
  inflight: 'inflight',
  concurrencyLimit: 'limit',
  eventLoopUtilization: 'eventLoopUtilization',
  eventLoopDelayP99: 'eventLoopDelaySeconds',
  retryAfter: 'retryAfterSeconds',
  saturation: 'saturation',
  capacity: 'capacity',
  shedding: 'shedding',
  draining: 'draining'
} as const

t.test('instruments on the meter: exact counts by outcome and reason, durations, gauges equal to the snapshot, Prometheus still on', async t => {
  const otel = sdk(t)
  const { app, controller, gate: g, holding } = await holdingTheLimit(t, { meter: otel.meter })
  t.equal((await app.inject('/slow')).statusCode, 503)
  t.equal((await app.inject('/slow')).statusCode, 503)
  controller.onWindow({ durationMs: 100, elu: 1, delayP99Ms: 12 }, 1e9 + 100)

  let m = await otel.collect()
  const requests = m.get(OTEL_INSTRUMENTS.requests.name)
  t.equal(requests?.dataPointType, DataPointType.SUM)
  t.equal(requests?.dataPointType === DataPointType.SUM && requests.isMonotonic, true, 'a monotonic counter')
  t.same(values(requests), { admitted: 1, 'rejected/limit': 2 }, 'admitted, and the reasons that occurred')
  t.same(counts(m.get(OTEL_INSTRUMENTS.requestDuration.name)), { rejected: 2 }, 'refusals timed; the held request not yet')

  const snap = snapshot(app)
  const expected: Record<string, number> = {}
  for (const [key, field] of Object.entries(GAUGES)) {
    const value = snap[field]
    expected[OTEL_INSTRUMENTS[key as keyof typeof GAUGES].name] = typeof value === 'boolean' ? Number(value) : value
  }
  const observed: Record<string, number> = {}
  for (const key of Object.keys(GAUGES)) {
    const metric = m.get(OTEL_INSTRUMENTS[key as keyof typeof GAUGES].name)
    t.equal(metric?.dataPointType, DataPointType.GAUGE, `${key} is a gauge`)
    t.equal(metric?.dataPoints.length, 1, `${key}: one point, no attributes`)
    observed[metric?.descriptor.name ?? key] = values(metric)[''] as number
  }
  t.same(observed, expected, 'every gauge equals the snapshot')
  t.match(observed, {
    'fastify.admission.inflight': 1,
    'fastify.admission.concurrency_limit': 1,
    'fastify.admission.event_loop.utilization': 1,
    'fastify.admission.event_loop.delay.p99': 0.012,
    'fastify.admission.shedding': 1,
    'fastify.admission.draining': 0
  })

  const prometheus = (await app.inject('/metrics')).body.split('\n')
  t.ok(prometheus.includes('fastify_admission_requests_total{outcome="rejected",reason="limit"} 2'), 'Prometheus counts too')
  t.ok(prometheus.includes('fastify_admission_request_duration_seconds_count{outcome="rejected"} 2'), 'and times too')

  g.open()
  await holding
  await turns()
  t.equal((await app.inject('/slow')).statusCode, 200)
  m = await otel.collect()
  t.same(values(m.get(OTEL_INSTRUMENTS.requests.name)), { admitted: 2, 'rejected/limit': 2 }, 'cumulative totals')
  t.same(counts(m.get(OTEL_INSTRUMENTS.requestDuration.name)), { admitted: 2, rejected: 2 }, 'admitted ones timed once done')
  t.equal(values(m.get(OTEL_INSTRUMENTS.inflight.name))[''], 0, 'the gauge follows the state')
})

t.test('descriptors: names, kinds and units of the table; histograms on the Prometheus buckets, in seconds', async t => {
  const otel = sdk(t)
  const { app } = await build(t, { meter: otel.meter })
  await app.ready()
  await app.inject('/nowhere')
  await new Promise(resolve => setTimeout(resolve, 50))
  const m = await otel.collect()
  const kinds = { gauge: DataPointType.GAUGE, counter: DataPointType.SUM, histogram: DataPointType.HISTOGRAM }
  for (const spec of Object.values(OTEL_INSTRUMENTS)) {
    const metric = m.get(spec.name)
    t.equal(metric?.dataPointType, kinds[spec.kind], `${spec.name} is a ${spec.kind}`)
    t.equal(metric?.descriptor.unit, spec.unit, `${spec.name} in ${spec.unit}`)
    t.equal(metric?.descriptor.description, spec.description)
    t.match(spec.name, /^fastify\.admission\.[a-z0-9_.]+$/, 'dot-separated')
    t.notMatch(spec.name, /[._](seconds|ratio|total|per_second)([._]|$)/, 'units in the unit field, not the name')
  }
  t.equal(new Set(Object.values(OTEL_INSTRUMENTS).map(i => i.name)).size, Object.keys(OTEL_INSTRUMENTS).length, 'names are unique')
  const delay = m.get(OTEL_INSTRUMENTS.eventLoopDelay.name)
  const point = delay?.dataPoints[0] as DataPoint<Histogram> | undefined
  t.same(point?.value.buckets.boundaries, SECONDS_BUCKETS, 'the bucket advice is honoured')
  t.ok((point?.value.count ?? 0) > 0, `the loop delay sampler fed the histogram in 50 ms (${String(point?.value.count)} samples)`)
  t.same(counts(m.get(OTEL_INSTRUMENTS.requestDuration.name)), { admitted: 1 })
})

t.test('the zero series: admitted and the limit refusals of the mode, before the first', async t => {
  const enforcing = sdk(t)
  const { app } = await build(t, { meter: enforcing.meter })
  await app.ready()
  t.same(values((await enforcing.collect()).get(OTEL_INSTRUMENTS.requests.name)), { admitted: 0, 'rejected/limit': 0 })

  const observing = sdk(t)
  const { app: observe, controller } = await build(t, { mode: 'observe', meter: observing.meter })
  await observe.ready()
  t.same(values((await observing.collect()).get(OTEL_INSTRUMENTS.requests.name)), { admitted: 0, 'would_reject/limit': 0 })
  controller.totals.observed.heap = 3
  controller.totals.rejected.drain = 1
  t.same(values((await observing.collect()).get(OTEL_INSTRUMENTS.requests.name)),
    { admitted: 0, 'would_reject/limit': 0, 'would_reject/heap': 3, 'rejected/drain': 1 }, 'other reasons once they occur')
})

t.test('a non-finite reading is reported as 0; the draining flag as 1', async t => {
  const otel = sdk(t)
  const { app, controller } = await build(t, { meter: otel.meter })
  await app.ready()
  controller.saturation = NaN
  controller.elu = Infinity
  controller.draining = true
  const m = await otel.collect()
  t.equal(values(m.get(OTEL_INSTRUMENTS.saturation.name))[''], 0)
  t.equal(values(m.get(OTEL_INSTRUMENTS.eventLoopUtilization.name))[''], 0)
  t.equal(values(m.get(OTEL_INSTRUMENTS.draining.name))[''], 1)
})

t.test('a closed app stops reporting: its callback is removed from the meter', async t => {
  const otel = sdk(t, { aggregationTemporalitySelector: () => AggregationTemporality.DELTA })
  const removed: unknown[] = []
  const meter = Object.create(otel.meter, {
    removeBatchObservableCallback: {
      value (...args: Parameters<typeof otel.meter.removeBatchObservableCallback>) {
        removed.push(args[0])
        otel.meter.removeBatchObservableCallback(...args)
      }
    }
  }) as typeof otel.meter
  const app = Fastify()
  await app.register(admission, { registry: new Registry(), sampleInterval: 10_000, meter })
  app.get('/', async () => 'ok')
  await app.inject('/')
  const controller = app[kAdmissionController]
  t.equal(values((await otel.collect()).get(OTEL_INSTRUMENTS.requests.name)).admitted, 1, 'reporting while open')
  await app.close()
  t.equal(removed.length, 1, 'one callback removed on close')
  controller.totals.admitted = 99
  controller.inflight = 7
  const after = await otel.collect()
  t.equal(after.get(OTEL_INSTRUMENTS.requests.name)?.dataPoints.length ?? 0, 0, 'no counter point after close')
  t.equal(after.get(OTEL_INSTRUMENTS.inflight.name)?.dataPoints.length ?? 0, 0, 'no gauge point after close')
})

t.test('a failed boot leaves no callback on the meter', async t => {
  const otel = sdk(t)
  const registry = new Registry()
  const { app } = await build(t, { registry })
  await app.ready()
  const other = Fastify()
  t.teardown(() => other.close())
  other.register(admission, { registry, meter: otel.meter })
  await t.rejects(async () => { await other.ready() }, { code: 'FST_ERR_ADMISSION_METRICS_CONFLICT' })
  const m = await otel.collect()
  t.equal(m.get(OTEL_INSTRUMENTS.inflight.name), undefined, 'no instrument was created')
})

t.test('the recorder ignores negative and NaN durations, as the Prometheus histograms do', async t => {
  const otel = sdk(t)
  const { app, controller } = await build(t)
  await app.ready()
  const handle = registerOpenTelemetry(otel.meter, controller)
  t.teardown(() => handle.stop())
  handle.recorder.loopDelay(-0.001)
  handle.recorder.loopDelay(NaN)
  handle.recorder.loopDelay(0.002)
  handle.recorder.request('rejected', -1)
  handle.recorder.request('admitted', NaN)
  handle.recorder.request('admitted', 0)
  const m = await otel.collect()
  t.same(counts(m.get(OTEL_INSTRUMENTS.eventLoopDelay.name)), { '': 1 })
  t.same(counts(m.get(OTEL_INSTRUMENTS.requestDuration.name)), { admitted: 1 })
})

t.test('two instances on one meter fail the second boot with a coded error; the meter is free again after close', async t => {
  const otel = sdk(t)
  const first = Fastify()
  await first.register(admission, { registry: new Registry(), meter: otel.meter })
  await first.ready()
  const registry = new Registry()
  const second = Fastify()
  t.teardown(() => second.close())
  second.register(admission, { registry, meter: otel.meter })
  await t.rejects(async () => { await second.ready() }, { code: 'FST_ERR_ADMISSION_METER_CONFLICT', message: /meter/ })
  t.equal(registry.getSingleMetric('fastify_admission_inflight_requests'), undefined, 'the failed boot left no metrics behind')
  await first.close()
  const third = Fastify()
  t.teardown(() => third.close())
  await third.register(admission, { registry: new Registry(), meter: otel.meter })
  await third.ready()
  await third.inject('/nothing-here')
  const m = await otel.collect()
  t.same(values(m.get(OTEL_INSTRUMENTS.requests.name)), { admitted: 1, 'rejected/limit': 0 }, 'the next instance reports on it')
})
