// Prometheus metrics: turns controller state into prom-client metrics, computed at scrape time so the
// hot path only increments plain integers.

import { Counter, Gauge, Registry, register as globalRegistry } from 'prom-client'
import type { AdmissionController, RejectReason } from './admission.js'
import { MetricsConflictError } from './options.js'

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

type Labels = { outcome: 'admitted' } | { outcome: 'rejected' | 'would_reject', reason: RejectReason }

/**
 * Registers the metrics in `chosen`, or in prom-client's global registry when none is chosen. A second
 * instance in one process (a public and an admin server, an app per test) finds the global names
 * taken: it gets a registry of its own, served together with the global one at its metrics path, so
 * that it boots and its scrape still shows the process's other metrics. A registry chosen explicitly
 * that already holds the names is a configuration error.
 */
export function registerMetrics (controller: AdmissionController, prefix: string, chosen: Registry | undefined, log: Logger): MetricsHandle {
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

  function gauge (name: string, help: string, read: () => number): void {
    names.push(prefix + name)
    // eslint-disable-next-line no-new
    new Gauge({
      name: prefix + name,
      help,
      registers,
      collect () {
        const value = read()
        this.set(Number.isFinite(value) ? value : 0)
      }
    })
  }

  gauge('inflight_requests', 'Requests admitted and not yet finished.', () => controller.inflight)
  gauge('concurrency_limit', 'Adaptive concurrency limit (enforced while the event loop is under pressure).', () => controller.limit)
  gauge('event_loop_utilization_ratio', 'Event-loop utilization over the last sampling window (0..1).', () => controller.elu)
  gauge('event_loop_delay_seconds', 'Event-loop delay, 99th percentile over the last sampling window.', () => controller.delayP99Ms / 1000)
  gauge('retry_after_seconds', 'Retry-After currently advertised to refused clients, before jitter.', () => controller.retryAfter.base)
  gauge('saturation_ratio',
    'Offered load divided by sustainable throughput: about the event-loop utilization without overload, ' +
    'above 1 by the factor of missing capacity during overload. Autoscale on it (target 0.8 to 1).',
    () => controller.saturation)
  gauge('capacity_requests_per_second', 'Estimated sustainable throughput of this process at a fully busy event loop.',
    () => controller.limiter.capacity)
  gauge('shedding', '1 while requests are being refused (observe mode: would be refused), else 0.',
    () => controller.shedding ? 1 : 0)
  gauge('draining', '1 once the server is closing: new requests refused, in-flight ones finishing.',
    () => controller.draining ? 1 : 0)

  const reported = new Map<string, number>()
  const series: Array<{ key: string, labels: Labels, read: () => number }> = [
    { key: 'admitted', labels: { outcome: 'admitted' }, read: () => controller.totals.admitted }
  ]
  for (const reason of Object.keys(controller.totals.rejected) as RejectReason[]) {
    series.push(
      { key: `rejected/${reason}`, labels: { outcome: 'rejected', reason }, read: () => controller.totals.rejected[reason] },
      { key: `would_reject/${reason}`, labels: { outcome: 'would_reject', reason }, read: () => controller.totals.observed[reason] }
    )
  }
  const refusedOutcome = controller.mode === 'observe' ? 'would_reject' : 'rejected'
  names.push(prefix + 'requests_total')
  // eslint-disable-next-line no-new
  new Counter({
    name: prefix + 'requests_total',
    help: 'Requests that asked for admission, by outcome (admitted, rejected, would_reject) and reason ' +
      '(limit, heap, rss, health, drain). Exempt routes are not counted.',
    labelNames: ['outcome', 'reason'],
    registers,
    collect () {
      for (const s of series) {
        const total = s.read()
        const before = reported.get(s.key) ?? 0
        // Series always shown: admitted, and the limit refusals of the current mode (0 until the first).
        const always = s.key === 'admitted' || s.key === `${refusedOutcome}/limit`
        if (total > before || (always && !reported.has(s.key))) {
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
