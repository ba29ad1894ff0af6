// Aggregation of open-loop request records: counts by outcome, goodput and
// latency percentiles, over a whole window or per time bucket.
// Every request is attributed to its *scheduled* send time, so a bucket
// says what happened to the load offered during that bucket.

/** Outcome codes stored per request (Uint8Array). */
export const Outcome = {
  pending: 0,
  ok: 1, // 2xx
  rejected: 2, // 503
  other: 3, // any other status
  error: 4, // connection error / reset
  timeout: 5, // no answer within the client timeout
  unfinished: 6 // still outstanding when the run was cut (drain shorter than the timeout)
} as const

export type OutcomeCode = typeof Outcome[keyof typeof Outcome]

/** Raw per-request records of one open-loop run. Times are ms relative to the run start. */
export interface Records {
  count: number
  /** scheduled send time */
  sched: Float64Array
  /** actual send time minus scheduled time */
  lag: Float32Array
  /** completion time minus scheduled time (NaN when not completed) */
  latency: Float32Array
  outcome: Uint8Array
  /** index into the route list */
  route: Uint8Array
}

/** Empty records for a run of `sched.length` requests: nothing sent, nothing completed yet. */
export function newRecords (sched: Float64Array, route: Uint8Array): Records {
  const n = sched.length
  return {
    count: n,
    sched,
    lag: new Float32Array(n),
    latency: new Float32Array(n).fill(Number.NaN),
    outcome: new Uint8Array(n),
    route
  }
}

export interface WindowStats {
  /** window start / end, seconds from run start (by scheduled time) */
  from: number
  to: number
  offered: number
  ok: number
  /** 2xx within the SLO */
  good: number
  rejected: number
  other: number
  errors: number
  timeouts: number
  unfinished: number
  offeredPerSec: number
  goodPerSec: number
  okP50: number | null
  okP99: number | null
  okMax: number | null
  rejP50: number | null
  rejP99: number | null
}

export function percentile (sorted: ArrayLike<number>, p: number): number | null {
  const n = sorted.length
  if (n === 0) return null
  const idx = Math.min(n - 1, Math.max(0, Math.ceil((p / 100) * n) - 1))
  return sorted[idx] ?? null
}

/** Median of unsorted values; NaN for none. */
export function median (values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b)
  const mid = s.length >> 1
  return s.length === 0 ? NaN : s.length % 2 === 1 ? s[mid] as number : ((s[mid - 1] as number) + (s[mid] as number)) / 2
}

function sortedOf (values: number[]): Float64Array {
  const a = Float64Array.from(values)
  a.sort()
  return a
}

export interface WindowFilter {
  /** only requests whose route index is in this list */
  routes?: number[]
}

/** Statistics for requests scheduled in [fromS, toS) seconds. */
export function windowStats (rec: Records, fromS: number, toS: number, sloMs: number, filter: WindowFilter = {}): WindowStats {
  const fromMs = fromS * 1000
  const toMs = toS * 1000
  const okLat: number[] = []
  const rejLat: number[] = []
  let offered = 0
  let good = 0
  let other = 0
  let errors = 0
  let timeouts = 0
  let unfinished = 0
  const routes = filter.routes
  for (let i = 0; i < rec.count; i++) {
    const s = rec.sched[i] as number
    if (s < fromMs || s >= toMs) continue
    if (routes !== undefined && !routes.includes(rec.route[i] as number)) continue
    offered++
    const lat = rec.latency[i] as number
    switch (rec.outcome[i]) {
      case Outcome.ok:
        okLat.push(lat)
        if (lat <= sloMs) good++
        break
      case Outcome.rejected:
        rejLat.push(lat)
        break
      case Outcome.other:
        other++
        break
      case Outcome.error:
        errors++
        break
      case Outcome.timeout:
        timeouts++
        break
      default:
        unfinished++
    }
  }
  const ok = sortedOf(okLat)
  const rej = sortedOf(rejLat)
  const seconds = Math.max(1e-9, toS - fromS)
  return {
    from: fromS,
    to: toS,
    offered,
    ok: ok.length,
    good,
    rejected: rej.length,
    other,
    errors,
    timeouts,
    unfinished,
    offeredPerSec: offered / seconds,
    goodPerSec: good / seconds,
    okP50: percentile(ok, 50),
    okP99: percentile(ok, 99),
    okMax: ok.length > 0 ? (ok[ok.length - 1] as number) : null,
    rejP50: percentile(rej, 50),
    rejP99: percentile(rej, 99)
  }
}

/** Per-bucket statistics over [0, totalS) in buckets of bucketMs. */
export function bucketStats (rec: Records, totalS: number, bucketMs: number, sloMs: number): WindowStats[] {
  const out: WindowStats[] = []
  const n = Math.ceil((totalS * 1000) / bucketMs - 1e-9)
  // one pass to split indices by bucket, then reuse windowStats logic per bucket
  const byBucket: number[][] = Array.from({ length: n }, () => [])
  for (let i = 0; i < rec.count; i++) {
    const b = Math.floor((rec.sched[i] as number) / bucketMs)
    if (b >= 0 && b < n) (byBucket[b] as number[]).push(i)
  }
  for (let b = 0; b < n; b++) {
    out.push(indexStats(rec, byBucket[b] as number[], (b * bucketMs) / 1000, ((b + 1) * bucketMs) / 1000, sloMs))
  }
  return out
}

function indexStats (rec: Records, idx: number[], fromS: number, toS: number, sloMs: number): WindowStats {
  const sub: Records = {
    count: idx.length,
    sched: new Float64Array(idx.length),
    lag: new Float32Array(idx.length),
    latency: new Float32Array(idx.length),
    outcome: new Uint8Array(idx.length),
    route: new Uint8Array(idx.length)
  }
  for (let j = 0; j < idx.length; j++) {
    const i = idx[j] as number
    sub.sched[j] = fromS * 1000
    sub.lag[j] = rec.lag[i] as number
    sub.latency[j] = rec.latency[i] as number
    sub.outcome[j] = rec.outcome[i] as number
    sub.route[j] = rec.route[i] as number
  }
  return windowStats(sub, fromS, toS, sloMs)
}

export interface LagStats {
  p50: number | null
  p99: number | null
  max: number | null
  /** share of requests sent more than 5 ms late */
  lateShare: number
}

/** Send-lag statistics; `exclude` marks requests whose delay was not the generator's doing. */
export function lagStats (rec: Records, exclude?: Uint8Array): LagStats {
  const values: number[] = []
  for (let i = 0; i < rec.count; i++) {
    if (exclude !== undefined && exclude[i] === 1) continue
    values.push(rec.lag[i] as number)
  }
  const a = sortedOf(values)
  let late = 0
  for (let i = 0; i < a.length; i++) if ((a[i] as number) > 5) late++
  return {
    p50: percentile(a, 50),
    p99: percentile(a, 99),
    max: a.length > 0 ? (a[a.length - 1] as number) : null,
    lateShare: a.length > 0 ? late / a.length : 0
  }
}
