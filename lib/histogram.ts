// Fixed-bucket histograms kept as plain numbers: observing is a few comparisons and two additions, with
// no label hashing on the hot path. The metrics module shows them to prom-client at scrape time in the
// shape its own histograms have, so the exposition, the default labels and the cluster aggregation
// (sum per bucket) treat them like any other histogram.

/** Upper bounds, in seconds, of the buckets of every histogram of the plugin (+Inf is implicit). */
export const SECONDS_BUCKETS: readonly number[] = Object.freeze([
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10
])

export class BucketHistogram {
  /** Upper bounds, ascending (a typed array: the bucket search is an index loop over it). */
  readonly bounds: Float64Array
  /** Observations per bucket (not cumulative); the last one is above every bound. */
  readonly counts: Float64Array
  sum = 0
  count = 0

  constructor (bounds: readonly number[] = SECONDS_BUCKETS) {
    this.bounds = Float64Array.from(bounds)
    this.counts = new Float64Array(bounds.length + 1)
  }

  /** Back to no observation (prom-client's resetMetrics()). */
  reset (): void {
    this.counts.fill(0)
    this.sum = 0
    this.count = 0
  }

  observe (value: number): void {
    if (!(value >= 0)) return
    // An index loop over a typed array: a for-of over the frozen bounds cost 150 ns here, this 6-30.
    const bounds = this.bounds
    const n = bounds.length
    let i = 0
    while (i < n && value > (bounds[i] as number)) i++
    this.counts[i] = (this.counts[i] as number) + 1
    this.sum += value
    this.count++
  }
}

/** One series of prom-client's metric JSON. */
export interface SeriesValue {
  value: number
  labels: Record<string, string | number>
  metricName: string
}

/**
 * The values of a histogram as prom-client's own `get()` returns them: cumulative `_bucket` series with
 * `le`, then `_sum` and `_count`, each with the given labels.
 */
export function histogramValues (name: string, h: BucketHistogram, labels: Record<string, string>): SeriesValue[] {
  const values: SeriesValue[] = []
  let cumulative = 0
  h.counts.forEach((count, i) => {
    cumulative += count
    values.push({ value: cumulative, labels: { ...labels, le: h.bounds[i] ?? '+Inf' }, metricName: name + '_bucket' })
  })
  values.push({ value: h.sum, labels, metricName: name + '_sum' }, { value: h.count, labels, metricName: name + '_count' })
  return values
}

/** What a request's time in the server is labelled with. */
export type RequestOutcome = 'admitted' | 'rejected'

/** Where the plugin hands its timings: the Prometheus histograms, and OpenTelemetry's when a meter is set. */
export interface Recorder {
  /** One loop-delay sample, seconds. */
  loopDelay (seconds: number): void
  /** One request's time in the server, seconds. */
  request (outcome: RequestOutcome, seconds: number): void
}

/** The Prometheus side: plain bucket counts, read at scrape time. */
export class Histograms implements Recorder {
  readonly delay = new BucketHistogram()
  readonly admitted = new BucketHistogram()
  readonly rejected = new BucketHistogram()

  loopDelay (seconds: number): void {
    this.delay.observe(seconds)
  }

  request (outcome: RequestOutcome, seconds: number): void {
    (outcome === 'admitted' ? this.admitted : this.rejected).observe(seconds)
  }
}

/** Both recorders, in order. */
export function bothRecorders (a: Recorder, b: Recorder): Recorder {
  return {
    loopDelay (seconds) {
      a.loopDelay(seconds)
      b.loopDelay(seconds)
    },
    request (outcome, seconds) {
      a.request(outcome, seconds)
      b.request(outcome, seconds)
    }
  }
}
