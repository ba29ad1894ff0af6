// Prometheus metrics: turns controller state into prom-client metrics, computed at scrape time so the
// hot path only increments plain integers.

import { Counter, Gauge, Registry, register as globalRegistry, type Metric } from 'prom-client'
import { requestSeries, type AdmissionController } from './admission.js'
import { histogramValues, type BucketHistogram, type Histograms, type SeriesValue } from './histogram.js'
import { MetricsConflictError } from './options.js'
import { DELAY_RESOLUTION_MS } from './signals.js'

export interface MetricsHandle {
  /** Content type of text(). */
  readonly contentType: string
  /** The exposition served at the metrics path. */
  text (): Promise<string>
  /** Remove this plugin's metrics from the registry (on close), so a new instance can register again. */
  unregister (): void
}

interface Logger {
  info (obj: object, msg: string): void
}

type Aggregator = 'sum' | 'average' | 'max'

/**
 * Registers the metrics in `chosen`, or in prom-client's global registry when none is chosen. A second
 * instance in one process (a public and an admin server, an app per test) finds the global names
 * taken: it gets a registry of its own, served together with the global one at its metrics path, so
 * that it boots and its scrape still shows the process's other metrics. A registry chosen explicitly
 * that already holds the names is a configuration error.
 */
export function registerMetrics (
  controller: AdmissionController, histograms: Histograms, prefix: string, chosen: Registry | undefined, log: Logger
): MetricsHandle {
  const probe = prefix + 'inflight_requests'
  let registry = chosen ?? globalRegistry
  let alsoServe: Registry | undefined
  if (registry.getSingleMetric(probe) !== undefined) {
    if (chosen !== undefined) throw new MetricsConflictError(probe)
    log.info({ metric: probe }, 'fastify-admission: the global prom-client registry already holds this plugin\'s metrics (another instance in this process); this instance uses a registry of its own, served at its metrics path')
    registry = new Registry()
    alsoServe = globalRegistry
  }
  const names: string[] = []
  const registers = [registry]

  /**
   * `aggregator`: how prom-client's AggregatorRegistry combines the workers of a cluster into one
   * series (see README, "Cluster").
   */
  function gauge (name: string, help: string, aggregator: Aggregator, read: () => number): void {
    names.push(prefix + name)
    // eslint-disable-next-line no-new
    new Gauge({
      name: prefix + name,
      help,
      aggregator,
      registers,
      collect () {
        const value = read()
        this.set(Number.isFinite(value) ? value : 0)
      }
    })
  }

  // A worker's share of the process's requests and capacity adds up; its limit is the requests it may
  // hold, so the limits add up too. Utilisation and saturation are averages: round-robin gives every
  // worker the same share of the load, so the mean is the process's figure. Delay, Retry-After and the
  // flags are the worst worker's: a request waits behind the loop it landed on.
  gauge('inflight_requests', 'Requests admitted and not yet finished.', 'sum', () => controller.inflight)
  gauge('concurrency_limit', 'Adaptive concurrency limit (enforced while the event loop is under pressure).', 'sum',
    () => controller.limit)
  gauge('event_loop_utilization_ratio', 'Event-loop utilization over the last sampling window (0..1).', 'average',
    () => controller.elu)
  gauge('event_loop_delay_p99_seconds', 'Event-loop delay, 99th percentile over the last sampling window.', 'max',
    () => controller.delayP99Ms / 1000)
  gauge('retry_after_seconds', 'Retry-After currently advertised to refused clients, before jitter.', 'max',
    () => controller.retryAfter.base)
  gauge('saturation_ratio',
    'Offered load divided by sustainable throughput: about the event-loop utilization without overload, ' +
    'above 1 by the factor of missing capacity during overload. Autoscale on it (target 0.8 to 1).', 'average',
    () => controller.saturation)
  gauge('capacity_requests_per_second', 'Estimated sustainable throughput of this process at a fully busy event loop.', 'sum',
    () => controller.limiter.capacity)
  gauge('shedding', '1 while requests are being refused (observe mode: would be refused), else 0.', 'max',
    () => controller.shedding ? 1 : 0)
  gauge('draining', '1 once the server is closing: new requests refused, in-flight ones finishing.', 'max',
    () => controller.draining ? 1 : 0)

  function histogram (name: string, help: string, parts: BucketHistogram[], read: () => SeriesValue[]): void {
    names.push(prefix + name)
    const metric = {
      name: prefix + name,
      help,
      type: 'histogram',
      aggregator: 'sum',
      async get () {
        return { name: prefix + name, help, type: 'histogram', aggregator: 'sum', values: read() }
      },
      reset () {
        for (const h of parts) h.reset()
      }
    }
    // Shaped like prom-client's own histograms (name, help, type, aggregator, get()), which is what its
    // registries read; the type names only its built-in classes.
    registry.registerMetric(metric as unknown as Metric)
  }
  histogram('event_loop_delay_seconds',
    `How late the event loop ran a timer, sampled every ${DELAY_RESOLUTION_MS} ms: how long an await that became ready waited to resume.`,
    [histograms.delay],
    () => histogramValues(prefix + 'event_loop_delay_seconds', histograms.delay, {}))
  // Observe mode refuses nothing: its histogram has no rejected series.
  const durations: Array<[string, BucketHistogram]> = controller.mode === 'enforce'
    ? [['admitted', histograms.admitted], ['rejected', histograms.rejected]]
    : [['admitted', histograms.admitted]]
  histogram('request_duration_seconds',
    'Time in the server of requests that asked for admission, by outcome: admitted (until the response ended or ' +
    'the client left) or rejected (until the refusal was sent).',
    [histograms.admitted, histograms.rejected],
    () => durations.flatMap(([outcome, h]) => histogramValues(prefix + 'request_duration_seconds', h, { outcome })))

  const reported = new Map<string, number>()
  const series = requestSeries(controller.totals, controller.mode)
  names.push(prefix + 'requests_total')
  // eslint-disable-next-line no-new
  new Counter({
    name: prefix + 'requests_total',
    help: 'Requests that asked for admission, by outcome (admitted, rejected, would_reject) and reason ' +
      '(limit, inflight, delay, utilization, heap, rss, health, drain). Exempt routes are not counted.',
    labelNames: ['outcome', 'reason'],
    registers,
    collect () {
      for (const s of series) {
        const total = s.read()
        const before = reported.get(s.key) ?? 0
        if (total > before || (s.always && !reported.has(s.key))) {
          this.inc(s.labels, total - before)
          reported.set(s.key, total)
        }
      }
    }
  })

  return {
    contentType: registry.contentType,
    async text () {
      const mine = await registry.metrics()
      if (alsoServe === undefined) return mine
      // The global registry also holds the first instance's series under the same names: leave those
      // families out, or every one would appear twice (invalid exposition).
      const others: string[] = []
      for (const metric of alsoServe.getMetricsAsArray()) {
        const name = (metric as { name: string }).name
        if (!names.includes(name)) others.push(await alsoServe.getSingleMetricAsString(name))
      }
      others.push(mine)
      return others.join('\n')
    },
    unregister () {
      for (const name of names) registry.removeSingleMetric(name)
    }
  }
}
