// OpenTelemetry: the plugin's instruments on a Meter the application passes. The gauges and the request
// counter are observed by one batch callback at collection time, from the state the Prometheus gauges
// read; the histograms are fed through the Recorder. Only types come from @opentelemetry/api, so the
// plugin runs where the package is not installed.

import type { Attributes, BatchObservableResult, Histogram, Meter, Observable } from '@opentelemetry/api'
import { requestSeries, type AdmissionController, type AdmissionSnapshot } from './admission.js'
import { SECONDS_BUCKETS, type Recorder } from './histogram.js'
import { MeterConflictError } from './options.js'
import { DELAY_RESOLUTION_MS } from './signals.js'

export interface OtelInstrument {
  readonly name: string
  readonly kind: 'gauge' | 'counter' | 'histogram'
  /** UCUM unit, or an annotation in braces; '' for a 0/1 flag. */
  readonly unit: string
  readonly description: string
  /** The metric of the Prometheus side that shows the same state, without `metricsPrefix`. */
  readonly prometheus: string
}

function instrument (name: string, kind: OtelInstrument['kind'], unit: string, prometheus: string, description: string): OtelInstrument {
  return Object.freeze({ name, kind, unit, description, prometheus })
}

/** Every instrument of the plugin, by key: names, units and the Prometheus metric each one matches. */
export const OTEL_INSTRUMENTS = Object.freeze({
  inflight: instrument('fastify.admission.inflight', 'gauge', '{request}', 'inflight_requests',
    'Requests admitted and not yet finished.'),
  concurrencyLimit: instrument('fastify.admission.concurrency_limit', 'gauge', '{request}', 'concurrency_limit',
    'Adaptive concurrency limit (enforced while the event loop is under pressure).'),
  eventLoopUtilization: instrument('fastify.admission.event_loop.utilization', 'gauge', '1', 'event_loop_utilization_ratio',
    'Event-loop utilization over the last sampling window (0..1).'),
  eventLoopDelayP99: instrument('fastify.admission.event_loop.delay.p99', 'gauge', 's', 'event_loop_delay_p99_seconds',
    'Event-loop delay, 99th percentile over the last sampling window.'),
  retryAfter: instrument('fastify.admission.retry_after', 'gauge', 's', 'retry_after_seconds',
    'Retry-After currently advertised to refused clients, before jitter.'),
  saturation: instrument('fastify.admission.saturation', 'gauge', '1', 'saturation_ratio',
    'Offered load divided by sustainable throughput; above 1 by the factor of missing capacity.'),
  capacity: instrument('fastify.admission.capacity', 'gauge', '{request}/s', 'capacity_requests_per_second',
    'Estimated sustainable throughput of this process at a fully busy event loop.'),
  shedding: instrument('fastify.admission.shedding', 'gauge', '', 'shedding',
    '1 while requests are being refused (observe mode: would be refused), else 0.'),
  draining: instrument('fastify.admission.draining', 'gauge', '', 'draining',
    '1 once the server is closing: new requests refused, in-flight ones finishing.'),
  requests: instrument('fastify.admission.requests', 'counter', '{request}', 'requests_total',
    'Requests that asked for admission, by outcome (admitted, rejected, would_reject) and reason.'),
  eventLoopDelay: instrument('fastify.admission.event_loop.delay', 'histogram', 's', 'event_loop_delay_seconds',
    `How late the event loop ran a timer, sampled every ${DELAY_RESOLUTION_MS} ms.`),
  requestDuration: instrument('fastify.admission.request.duration', 'histogram', 's', 'request_duration_seconds',
    'Time in the server of requests that asked for admission, by outcome (admitted, rejected).')
})

type GaugeKey = 'inflight' | 'concurrencyLimit' | 'eventLoopUtilization' | 'eventLoopDelayP99' | 'retryAfter' |
  'saturation' | 'capacity' | 'shedding' | 'draining'

/** What each gauge reads from one snapshot of the controller. */
const GAUGES: ReadonlyArray<[GaugeKey, (s: AdmissionSnapshot) => number]> = [
  ['inflight', s => s.inflight],
  ['concurrencyLimit', s => s.limit],
  ['eventLoopUtilization', s => s.eventLoopUtilization],
  ['eventLoopDelayP99', s => s.eventLoopDelaySeconds],
  ['retryAfter', s => s.retryAfterSeconds],
  ['saturation', s => s.saturation],
  ['capacity', s => s.capacity],
  ['shedding', s => s.shedding ? 1 : 0],
  ['draining', s => s.draining ? 1 : 0]
]

export interface OtelHandle {
  /** Feeds the histograms. */
  readonly recorder: Recorder
  /** Removes the batch callback (on close): the gauges and the counter stop reporting. */
  stop (): void
}

type Source = Pick<AdmissionController, 'mode' | 'totals' | 'snapshot'>

/** Meters an instance reports on, until it stops: two instances on one meter would overwrite each other. */
const inUse = new WeakSet<Meter>()

/**
 * Creates the instruments on `meter` and registers the callback that observes `controller`. A meter
 * another instance reports on is a configuration error.
 */
export function registerOpenTelemetry (meter: Meter, controller: Source): OtelHandle {
  if (inUse.has(meter)) throw new MeterConflictError()
  function create (key: keyof typeof OTEL_INSTRUMENTS): Observable {
    const { name, kind, unit, description } = OTEL_INSTRUMENTS[key]
    return kind === 'counter'
      ? meter.createObservableCounter(name, { unit, description })
      : meter.createObservableGauge(name, { unit, description })
  }
  const gauges = GAUGES.map(([key, read]): [Observable, (s: AdmissionSnapshot) => number] => [create(key), read])
  const requests = create('requests')

  // The same series as the Prometheus counter.
  const series = requestSeries(controller.totals, controller.mode)

  function observeAdmission (result: BatchObservableResult): void {
    const snapshot = controller.snapshot()
    for (const [gauge, read] of gauges) {
      const value = read(snapshot)
      result.observe(gauge, Number.isFinite(value) ? value : 0)
    }
    for (const s of series) {
      const total = s.read()
      if (total > 0 || s.always) result.observe(requests, total, s.labels)
    }
  }
  const delay = histogram(meter, 'eventLoopDelay')
  const duration = histogram(meter, 'requestDuration')
  const admitted: Attributes = Object.freeze({ outcome: 'admitted' })
  const rejected: Attributes = Object.freeze({ outcome: 'rejected' })
  // Last: nothing is left observing the controller when creating an instrument throws.
  const observables = [...gauges.map(([gauge]) => gauge), requests]
  meter.addBatchObservableCallback(observeAdmission, observables)
  inUse.add(meter)
  return {
    recorder: {
      loopDelay (seconds) {
        if (seconds >= 0) delay.record(seconds)
      },
      request (outcome, seconds) {
        if (seconds >= 0) duration.record(seconds, outcome === 'admitted' ? admitted : rejected)
      }
    },
    stop () {
      inUse.delete(meter)
      meter.removeBatchObservableCallback(observeAdmission, observables)
    }
  }
}

function histogram (meter: Meter, key: 'eventLoopDelay' | 'requestDuration'): Histogram {
  const { name, unit, description } = OTEL_INSTRUMENTS[key]
  // The same bucket bounds as the Prometheus histograms (the SDK's default ones are for milliseconds).
  return meter.createHistogram(name, { unit, description, advice: { explicitBucketBoundaries: [...SECONDS_BUCKETS] } })
}
