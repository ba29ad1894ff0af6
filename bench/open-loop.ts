// Open-loop HTTP load generator (minimal keep-alive HTTP/1.1 client, pool opened before the load).
//
// Requests leave on a fixed arrival schedule (evenly spaced at the phase's
// rate) whatever the server does. Latency is measured from the *scheduled*
// send time, so a slow server cannot slow the generator down and hide its
// own queueing (no coordinated omission). The generator reports its own send
// lag (actual − scheduled send time) so a run where it fell behind is visible.
import { performance } from 'node:perf_hooks'
import { ConnPool, type Conn } from './raw-http.js'
import { Outcome, lagStats, newRecords, type LagStats, type Records } from './stats.js'

export interface Phase {
  /** duration of the phase in seconds */
  seconds: number
  /** arrivals per second (0 = silence) */
  rate: number
}

export interface Route {
  path: string
  /** relative share of the requests (smooth weighted round-robin, deterministic) */
  weight?: number
  name?: string
}

export interface OpenLoopOptions {
  port: number
  /** loopback only: 127.0.0.1 unless another 127.x address is given */
  host?: string
  phases: Phase[]
  /** a single path or a weighted mix of routes (default '/work') */
  routes?: string | Route[]
  /** client timeout counted from the scheduled send time (default 10 000 ms) */
  timeoutMs?: number
  /** how long to wait after the last scheduled send for answers (default = timeoutMs, at most timeoutMs) */
  drainMs?: number
  /**
   * Connections opened before the load and the cap on concurrent ones (default 256,
   * or BENCH_MAX_CONNECTIONS). Requests beyond it wait in a client-side FIFO queue;
   * they are counted in `connQueued` and their latency still runs from the
   * scheduled time.
   */
  maxConnections?: number
  /** called on every completion (for live displays); times in ms from run start */
  onComplete?: (index: number, outcome: number, latencyMs: number, route: number) => void
  /** stops sending new requests (outstanding ones are still awaited up to drainMs) */
  signal?: AbortSignal
}

export interface OpenLoopResult {
  records: Records
  routes: Route[]
  phases: Phase[]
  /** epoch ms of t = 0 (the first scheduled send), to align server time series */
  startEpochMs: number
  /** total scheduled seconds */
  seconds: number
  lag: LagStats
  /** true when the generator could not keep its schedule (send lag p99 > 5 ms or > 1 % of requests > 5 ms late) */
  behind: boolean
  /** requests that had to wait for a free connection because of maxConnections */
  connQueued: number
  /** highest number of simultaneously open requests */
  maxOutstanding: number
  /** connections opened */
  connectionsOpened: number
  /** wall time from first send to end of drain, ms */
  wallMs: number
}

function defaultMaxConnections (): number {
  const fromEnv = Number(process.env.BENCH_MAX_CONNECTIONS)
  if (Number.isFinite(fromEnv) && fromEnv > 0) return fromEnv
  // A bounded pool, opened before the load, as a load balancer keeps: beyond it requests wait in the
  // client (latency still counts from the scheduled time). See raw-http.ts on connection storms.
  return 256
}

function assertLoopback (host: string): void {
  if (!/^127\.\d+\.\d+\.\d+$/.test(host)) throw new Error(`open-loop: refusing to send load to ${host} (loopback 127.x.x.x only)`)
}

/** Total number of arrivals in the schedule. */
export function countArrivals (phases: Phase[]): number {
  let n = 0
  for (const p of phases) n += Math.floor(p.seconds * p.rate + 1e-9)
  return n
}

/** Precompute the scheduled send times (ms from t = 0), evenly spaced within each phase. */
export function scheduleOf (phases: Phase[]): Float64Array {
  const out = new Float64Array(countArrivals(phases))
  let k = 0
  let phaseStart = 0
  for (const p of phases) {
    const n = Math.floor(p.seconds * p.rate + 1e-9)
    const gap = 1000 / p.rate
    for (let j = 0; j < n; j++) out[k++] = phaseStart + j * gap
    phaseStart += p.seconds * 1000
  }
  return out
}

/** Deterministic, evenly interleaved route choice (nginx smooth weighted round-robin). */
export function routeSequence (routes: Route[], n: number): Uint8Array {
  const out = new Uint8Array(n)
  if (routes.length <= 1) return out
  const w = routes.map(r => r.weight ?? 1)
  const total = w.reduce((a, b) => a + b, 0)
  const cur = w.map(() => 0)
  for (let i = 0; i < n; i++) {
    let best = 0
    for (let r = 0; r < w.length; r++) {
      cur[r] = (cur[r] as number) + (w[r] as number)
      if ((cur[r] as number) > (cur[best] as number)) best = r
    }
    cur[best] = (cur[best] as number) - total
    out[i] = best
  }
  return out
}

export async function runOpenLoop (opts: OpenLoopOptions): Promise<OpenLoopResult> {
  const host = opts.host ?? '127.0.0.1'
  assertLoopback(host)
  const timeoutMs = opts.timeoutMs ?? 10000
  const drainMs = Math.min(opts.drainMs ?? timeoutMs, timeoutMs)
  const maxConnections = opts.maxConnections ?? defaultMaxConnections()
  const routes: Route[] = typeof opts.routes === 'string'
    ? [{ path: opts.routes }]
    : (opts.routes ?? [{ path: '/work' }])
  const pool = new ConnPool(host, opts.port)
  const encoded = routes.map(r => pool.encode(r.path))
  const sched = scheduleOf(opts.phases)
  const n = sched.length
  const records = newRecords(sched, routeSequence(routes, n))
  const reqs: Array<Conn | undefined> = new Array(n)
  const totalMs = opts.phases.reduce((a, p) => a + p.seconds * 1000, 0)
  const onComplete = opts.onComplete

  let outstanding = 0 // scheduled and not settled (on a connection or waiting for one)
  let active = 0 // on a connection
  let maxOutstanding = 0
  let connQueued = 0
  const waiting: number[] = [] // indices waiting for a connection (FIFO)
  const queuedMask = new Uint8Array(n)
  let waitHead = 0

  let t0 = 0 // performance.now() of t = 0
  let next = 0 // next index to send
  let oldest = 0 // all indices below are settled
  let stopped = false

  function finish (i: number, outcome: number): void {
    if (records.outcome[i] !== Outcome.pending) return
    const lat = performance.now() - t0 - (sched[i] as number)
    records.outcome[i] = outcome
    records.latency[i] = lat
    if (reqs[i] !== undefined) active--
    reqs[i] = undefined
    outstanding--
    if (onComplete !== undefined) onComplete(i, outcome, lat, records.route[i] as number)
    pump()
  }

  function dispatch (i: number): void {
    const now = performance.now() - t0
    records.lag[i] = now - (sched[i] as number)
    active++
    reqs[i] = pool.send(encoded[records.route[i] as number] as Buffer, (status) => {
      finish(i, status === 0 ? Outcome.error : status >= 200 && status < 300 ? Outcome.ok : status === 503 ? Outcome.rejected : Outcome.other)
    })
  }

  function start (i: number): void {
    outstanding++
    if (outstanding > maxOutstanding) maxOutstanding = outstanding
    if (active >= maxConnections) {
      waiting.push(i)
      queuedMask[i] = 1
      connQueued++
      return
    }
    dispatch(i)
  }

  // release waiting requests as connections free up
  function pump (): void {
    while (waitHead < waiting.length && active < maxConnections) {
      const i = waiting[waitHead++] as number
      if (waitHead > 4096 && waitHead * 2 > waiting.length) {
        waiting.splice(0, waitHead)
        waitHead = 0
      }
      if (records.outcome[i] === Outcome.pending) dispatch(i)
    }
  }

  // expire requests older than the client timeout; indices are in scheduled order
  function sweep (): void {
    const now = performance.now() - t0
    while (oldest < next) {
      if (records.outcome[oldest] !== Outcome.pending) { oldest++; continue }
      if ((sched[oldest] as number) + timeoutMs > now) break
      const conn = reqs[oldest]
      const i = oldest
      oldest++
      finish(i, Outcome.timeout)
      if (conn !== undefined) pool.abort(conn)
    }
  }

  await pool.warm(maxConnections)
  return await new Promise<OpenLoopResult>((resolve) => {
    t0 = performance.now() + 5
    const sweepTimer = setInterval(sweep, 50)
    let drainTimer: NodeJS.Timeout | undefined
    let doneCheck: NodeJS.Timeout | undefined

    const onAbort = (): void => { stopped = true }
    opts.signal?.addEventListener('abort', onAbort, { once: true })

    function tick (): void {
      const now = performance.now() - t0
      while (next < n && (sched[next] as number) <= now) {
        if (stopped) break
        start(next++)
      }
      if (next < n && !stopped) {
        const wait = (sched[next] as number) - (performance.now() - t0)
        if (wait > 2) setTimeout(tick, wait - 1)
        else setImmediate(tick)
      } else {
        beginDrain()
      }
    }

    function beginDrain (): void {
      const sentAll = next
      // requests never sent (aborted) are dropped from the records
      records.count = sentAll
      const endAt = Math.max(performance.now() - t0, totalMs)
      const deadline = (stopped ? performance.now() - t0 : endAt) + drainMs
      const check = (): void => {
        sweep()
        if (outstanding === 0 || performance.now() - t0 >= deadline) done()
        else doneCheck = setTimeout(check, 20)
      }
      check()
      drainTimer = setTimeout(done, Math.max(0, deadline - (performance.now() - t0)) + 50)
    }

    let finished = false
    function done (): void {
      if (finished) return
      finished = true
      clearInterval(sweepTimer)
      clearTimeout(drainTimer)
      clearTimeout(doneCheck)
      opts.signal?.removeEventListener('abort', onAbort)
      // whatever is still open was cut by a drain shorter than the timeout
      for (let i = 0; i < records.count; i++) {
        if (records.outcome[i] === Outcome.pending) {
          const conn = reqs[i]
          records.outcome[i] = Outcome.unfinished
          reqs[i] = undefined
          if (conn !== undefined) pool.abort(conn)
        }
      }
      const wallMs = performance.now() - t0
      pool.close()
      const sub: Records = {
        count: records.count,
        sched: records.sched.subarray(0, records.count),
        lag: records.lag.subarray(0, records.count),
        latency: records.latency.subarray(0, records.count),
        outcome: records.outcome.subarray(0, records.count),
        route: records.route.subarray(0, records.count)
      }
      // requests delayed by the connection cap are not generator lag
      const lag = lagStats(sub, connQueued > 0 ? queuedMask : undefined)
      resolve({
        records: sub,
        routes,
        phases: opts.phases,
        startEpochMs: performance.timeOrigin + t0,
        seconds: totalMs / 1000,
        lag,
        behind: (lag.p99 ?? 0) > 5 || lag.lateShare > 0.01,
        connQueued,
        maxOutstanding,
        connectionsOpened: pool.opened,
        wallMs
      })
    }

    setTimeout(tick, 5)
  })
}

export interface ClosedLoopOptions {
  port: number
  host?: string
  path?: string
  connections: number
  seconds: number
}

/** Closed-loop throughput (each connection sends its next request when the previous answer arrives). */
export async function runClosedLoop (opts: ClosedLoopOptions): Promise<{ requests: number, perSec: number, ok: number, okPerSec: number, errors: number }> {
  const host = opts.host ?? '127.0.0.1'
  assertLoopback(host)
  const pool = new ConnPool(host, opts.port)
  const req = pool.encode(opts.path ?? '/hello')
  let requests = 0
  let ok = 0
  let errors = 0
  let running = true
  const t0 = performance.now()
  await new Promise<void>((resolve) => {
    let live = opts.connections
    const loop = (): void => {
      if (!running) {
        if (--live === 0) resolve()
        return
      }
      pool.send(req, onResponse)
    }
    const onResponse = (status: number): void => {
      if (status === 0) {
        errors++
        setTimeout(loop, 10)
        return
      }
      requests++
      if (status >= 200 && status < 300) ok++
      loop()
    }
    for (let c = 0; c < opts.connections; c++) loop()
    setTimeout(() => { running = false }, opts.seconds * 1000)
  })
  const elapsed = (performance.now() - t0) / 1000
  pool.close()
  return { requests, perSec: requests / elapsed, ok, okPerSec: ok / elapsed, errors }
}
