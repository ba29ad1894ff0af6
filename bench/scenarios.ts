// The benchmark scenarios. Each function starts a fresh, pinned server per
// contender, warms it up, drives open-loop load, kills it, and returns plain data.
import { readFileSync } from 'node:fs'
import { performance } from 'node:perf_hooks'
import { runClosedLoop, runOpenLoop, type OpenLoopResult, type Phase, type Route } from './open-loop.js'
import { commandExists, cpuSnapshot, interference, pidAlive, runCommand, startServer, waitQuiet, type Interference, type ServerHandle, type StartOptions } from './proc.js'
import type { Contender, SeriesPoint } from './server.js'
import { Outcome, bucketStats, median, windowStats, type WindowStats } from './stats.js'

export interface BenchConfig {
  quick: boolean
  sloMs: number
  timeoutMs: number
  /** wait after the last scheduled send (= timeoutMs in full mode; ≥ sloMs in quick mode, so goodput stays exact) */
  drainMs: number
  log: (line: string) => void
}

export interface GenInfo {
  /** CPU share taken by other processes on CPU 0 (server) / CPU 1 (generator) during the run */
  foreignCpu0: number | null
  foreignCpu1: number | null
  lagP99: number | null
  lagMax: number | null
  behind: boolean
  connQueued: number
  maxOutstanding: number
  connectionsOpened: number
}

export interface ServerInfo {
  maxInflight: number
  meanInflight: number
  meanElu: number
  maxDelayP99: number
  /** admission contender: limit range seen */
  minLimit?: number
  maxLimit?: number
  died: boolean
}

/** Series point with t in seconds from the start of the measured run. */
export type RelPoint = Omit<SeriesPoint, 't'> & { t: number }

export interface Measured {
  gen: OpenLoopResult
  /** CPU used by other processes on our two CPUs during the measured run */
  interference: Interference | undefined
  series: RelPoint[]
  stalls: Array<{ t: number, ms: number }>
  died: boolean
}

const round = (x: number | null, d = 2): number | null => x === null ? null : Math.round(x * 10 ** d) / 10 ** d

export function genInfo (g: OpenLoopResult, intf?: Interference): GenInfo {
  return {
    foreignCpu0: intf?.cpu0Foreign ?? null,
    foreignCpu1: intf?.cpu1Foreign ?? null,
    lagP99: round(g.lag.p99),
    lagMax: round(g.lag.max),
    behind: g.behind,
    connQueued: g.connQueued,
    maxOutstanding: g.maxOutstanding,
    connectionsOpened: g.connectionsOpened
  }
}

export function serverInfo (m: Pick<Measured, 'series' | 'died'>, fromS = 0, toS = Infinity): ServerInfo {
  const pts = m.series.filter(p => p.t >= fromS && p.t < toS)
  const n = Math.max(1, pts.length)
  const limits = pts.map(p => p.limit).filter((x): x is number => typeof x === 'number')
  const info: ServerInfo = {
    maxInflight: pts.reduce((a, p) => Math.max(a, p.inflightMax ?? p.inflight), 0),
    meanInflight: round(pts.reduce((a, p) => a + p.inflight, 0) / n, 1) ?? 0,
    meanElu: round(pts.reduce((a, p) => a + p.elu, 0) / n, 3) ?? 0,
    maxDelayP99: pts.reduce((a, p) => Math.max(a, p.delayP99), 0),
    died: m.died
  }
  if (limits.length > 0) {
    info.minLimit = Math.min(...limits)
    info.maxLimit = Math.max(...limits)
  }
  return info
}

export function roundStats (s: WindowStats): WindowStats {
  return {
    ...s,
    offeredPerSec: round(s.offeredPerSec, 1) ?? 0,
    goodPerSec: round(s.goodPerSec, 1) ?? 0,
    okP50: round(s.okP50),
    okP99: round(s.okP99),
    okMax: round(s.okMax),
    rejP50: round(s.rejP50),
    rejP99: round(s.rejP99)
  }
}

interface MeasureOptions {
  phases: Phase[]
  routes: string | Route[]
  /** warm-up load (discarded): seconds at rate */
  warmup?: Phase
  drainMs: number
  timeoutMs: number
}

/** Warm up, then run the measured load against a running server and collect its series. */
export async function measure (srv: ServerHandle, o: MeasureOptions): Promise<Measured> {
  if (o.warmup !== undefined && o.warmup.seconds > 0) {
    await runOpenLoop({ port: srv.port, phases: [o.warmup], routes: o.routes, drainMs: 1000, timeoutMs: o.timeoutMs })
    await sleepMs(50)
  }
  srv.series.length = 0
  srv.stalls.length = 0
  const before = cpuSnapshot(srv.pid)
  const gen = await runOpenLoop({ port: srv.port, phases: o.phases, routes: o.routes, drainMs: o.drainMs, timeoutMs: o.timeoutMs })
  const intf = interference(before, cpuSnapshot(srv.pid))
  const start = gen.startEpochMs
  const end = gen.seconds
  const series = srv.series
    .map(p => ({ ...p, t: Math.round((p.t - start) / 10) / 100 }))
    .filter(p => p.t >= -0.2 && p.t <= end + 0.2)
  const stalls = srv.stalls.map(s => ({ t: Math.round((s.t - start) / 10) / 100, ms: s.ms }))
  const died = srv.pid === undefined || !pidAlive(srv.pid)
  return { gen, interference: intf, series, stalls, died }
}

export async function sleepMs (ms: number): Promise<void> {
  await new Promise(resolve => setTimeout(resolve, ms))
}

/** Start a fresh server, measure, and always kill it. */
export async function withServer<T> (opts: StartOptions, fn: (srv: ServerHandle) => Promise<T>): Promise<T> {
  await waitQuiet(5000)
  const srv = await startServer(opts)
  try {
    return await fn(srv)
  } finally {
    await srv.stop()
  }
}

// ---------------------------------------------------------------------------
// capacity

export interface CapacityResult {
  rps: number
  method: string
  ramp: Array<{ rate: number, okP90: number | null, offered: number, good: number }>
  estimate: number
  probes: Array<{ rate: number, seconds: number, pass: boolean, goodShare: number, okP99: number | null, why: string }>
  unloadedP99: number | null
  /** CPU taken by other processes during the search (the search is repeated once when > 10 %) */
  interference?: Interference | undefined
}

const RAMP_FACTOR = 1.1
const RAMP_STEP_S = 0.2
/** A failed capacity probe is followed by one at this share of its rate. */
const PROBE_STEP = 0.93

/**
 * The highest rate at which bare Fastify still meets the SLO on /work: a geometric ramp
 * (0.2 s steps, ×1.1) finds where latency starts to grow, then probes refine it.
 * A probe passes when ≥ 99 % of requests are 2xx within the SLO and admitted p99 stays
 * ≤ max(100 ms, 3 × the ramp's unloaded p99) — i.e. no queue builds up during the probe.
 * Each probe runs as a sweep point does (a fresh server, 1 s of warm-up at 0.3x, then as long as
 * a point): a 3 s probe on the ramp's server, warm from thousands of requests, passed at 456/s
 * where bare Fastify run as a sweep point at that rate built a queue from its first second (p99
 * 119 ms, then 271, 519 … 958 ms; 400/s held, 420/s did not).
 */
export async function measureCapacity (cfg: BenchConfig): Promise<CapacityResult> {
  let result = await measureCapacityOnce(cfg)
  // other processes on our CPUs make the server look slower than it is: wait for quiet and retry once
  const noisy = (r: CapacityResult): boolean => (r.interference?.cpu0Foreign ?? 0) > 0.1 || (r.interference?.cpu1Foreign ?? 0) > 0.1
  if (noisy(result) && !cfg.quick) {
    const i = result.interference
    cfg.log(`  other processes used CPU0 ${pct100(i?.cpu0Foreign ?? 0)} / CPU1 ${pct100(i?.cpu1Foreign ?? 0)} during the capacity search: waiting for quiet and measuring again`)
    await waitQuiet(cfg.quick ? 3000 : 15000, true)
    const again = await measureCapacityOnce(cfg)
    if (!noisy(again) || again.rps > result.rps) result = again
  }
  return result
}

async function measureCapacityOnce (cfg: BenchConfig): Promise<CapacityResult> {
  const { steps, estimate, baseP99, rampInterference } = await withServer({ contender: 'bare', series: false }, async (srv) => {
    const before = cpuSnapshot(srv.pid)
    await runOpenLoop({ port: srv.port, phases: [{ seconds: 0.5, rate: 150 }], routes: '/work', drainMs: 1000 })
    const rates: number[] = []
    for (let r = 180; r < 4000; r *= RAMP_FACTOR) rates.push(Math.round(r))
    const ctl = new AbortController()
    const ramp = await runOpenLoop({
      port: srv.port,
      phases: rates.map(rate => ({ seconds: RAMP_STEP_S, rate })),
      routes: '/work',
      drainMs: 3000,
      signal: ctl.signal,
      onComplete: (_i, outcome, lat) => { if (lat > 400 || outcome !== Outcome.ok) ctl.abort() }
    })
    const steps: CapacityResult['ramp'] = []
    let t = 0
    for (const rate of rates) {
      const w = windowStats(ramp.records, t, t + RAMP_STEP_S, cfg.sloMs)
      t += RAMP_STEP_S
      if (w.offered === 0) break
      const lat = collectOk(ramp, (t - RAMP_STEP_S) * 1000, t * 1000)
      steps.push({ rate, okP90: round(pct(lat, 90)), offered: w.offered, good: w.good })
    }
    const base = pct(collectOk(ramp, 0, 800), 50) ?? 25
    // queue onset: the first of two consecutive steps whose p90 is 25 ms above the unloaded median
    // (a single slow step is noise; a real queue only grows)
    const slow = steps.map(s => s.okP90 === null || s.okP90 > base + 25 || s.good < s.offered)
    let estimate = rates[0] as number
    for (let k = 0; k < steps.length; k++) {
      if (slow[k] === true && (slow[k + 1] ?? true)) break
      estimate = (steps[k] as { rate: number }).rate
    }
    return { steps, estimate, baseP99: pct(collectOk(ramp, 0, 800), 99) ?? 30, rampInterference: interference(before, cpuSnapshot(srv.pid)) }
  })
  // refine around the estimate with probes under the sweep's conditions: down by PROBE_STEP until one
  // passes (or up until one fails), then halve the bracket
  const probeSeconds = cfg.quick ? 3 : 7
  const maxProbes = cfg.quick ? 3 : 5
  const p99Limit = Math.max(100, 3 * baseP99)
  let passed: number | undefined
  let failed: number | undefined
  const probes: CapacityResult['probes'] = []
  let worst = rampInterference
  let r = estimate
  for (let k = 0; k < maxProbes; k++) {
    const m = await withServer({ contender: 'bare', series: false }, async (srv) => await measure(srv, {
      phases: [{ seconds: probeSeconds, rate: r }],
      routes: '/work',
      warmup: { seconds: 1, rate: Math.round(r * 0.3) },
      drainMs: 3000,
      timeoutMs: cfg.timeoutMs
    }))
    worst = worseInterference(worst, m.interference)
    const w = windowStats(m.gen.records, 0, probeSeconds, cfg.sloMs)
    const goodShare = w.offered > 0 ? w.good / w.offered : 0
    const pass = goodShare >= 0.99 && w.okP99 !== null && w.okP99 <= p99Limit
    probes.push({
      rate: r,
      seconds: probeSeconds,
      pass,
      goodShare: round(goodShare, 4) ?? 0,
      okP99: round(w.okP99),
      why: pass ? 'meets SLO' : goodShare < 0.99 ? `only ${(goodShare * 100).toFixed(1)} % good` : `p99 ${w.okP99?.toFixed(0)} ms > ${p99Limit.toFixed(0)} ms`
    })
    cfg.log(`  capacity probe ${r}/s: ${pass ? 'pass' : 'fail'} (good ${(goodShare * 100).toFixed(1)} %, p99 ${w.okP99?.toFixed(1)} ms)`)
    if (pass) passed = r
    else failed = r
    if (passed !== undefined && failed !== undefined && failed / passed < 1.02) break
    r = Math.round(passed === undefined ? r * PROBE_STEP : failed === undefined ? r / PROBE_STEP : Math.sqrt(passed * failed))
  }
  return {
    // no probe passed: below the lowest one tried, unverified
    rps: passed ?? Math.round(r),
    method: `ramp ×${RAMP_FACTOR} per ${RAMP_STEP_S} s to queue onset, then up to ${maxProbes} probes of ${probeSeconds} s, each on a fresh server after 1 s at 0.3x: ≥ 99 % 2xx within ${cfg.sloMs} ms and p99 ≤ ${p99Limit.toFixed(0)} ms`,
    ramp: steps,
    estimate,
    probes,
    unloadedP99: round(baseP99),
    interference: worst
  }
}

/** Of two measurements, the one in which other processes took more CPU (both CPUs together). */
function worseInterference (a: Interference | undefined, b: Interference | undefined): Interference | undefined {
  if (a === undefined || b === undefined) return a ?? b
  return a.cpu0Foreign + a.cpu1Foreign >= b.cpu0Foreign + b.cpu1Foreign ? a : b
}

function collectOk (g: OpenLoopResult, fromMs: number, toMs: number): Float64Array {
  const r = g.records
  const out: number[] = []
  for (let i = 0; i < r.count; i++) {
    const s = r.sched[i] as number
    if (s >= fromMs && s < toMs && r.outcome[i] === Outcome.ok) out.push(r.latency[i] as number)
  }
  const a = Float64Array.from(out)
  a.sort()
  return a
}

function pct (sorted: Float64Array, p: number): number | null {
  if (sorted.length === 0) return null
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] ?? null
}

// ---------------------------------------------------------------------------
// sweep

export interface SweepPoint {
  mult: number
  rate: number
  seconds: number
  stats: WindowStats
  /**
   * per second of scheduled time: good, 503, other failures, 2xx p99 and 503 p99 (ms), and the server's
   * mean event-loop utilisation (absent in results from before 2026-12-07's night)
   */
  perSecond: Array<{ t: number, good: number, rejected: number, failed: number, okP99: number | null, rejP99: number | null, elu?: number }>
  gen: GenInfo
  server: ServerInfo
}

export async function runSweep (cfg: BenchConfig, capacity: number, contenders: Contender[], mults: number[], seconds: number, skip: (c: Contender, m: number) => boolean = () => false): Promise<Record<string, SweepPoint[]>> {
  const out: Record<string, SweepPoint[]> = {}
  for (const c of contenders) {
    const points: SweepPoint[] = []
    for (const mult of mults) {
      if (skip(c, mult)) continue
      const rate = Math.round(capacity * mult)
      const m = await withServer({ contender: c }, async (srv) => await measure(srv, {
        phases: [{ seconds, rate }],
        routes: '/work',
        warmup: { seconds: 1, rate: Math.round(capacity * 0.3) },
        drainMs: cfg.drainMs,
        timeoutMs: cfg.timeoutMs
      }))
      const stats = roundStats(windowStats(m.gen.records, 0, seconds, cfg.sloMs))
      const perSecond = bucketStats(m.gen.records, seconds, 1000, cfg.sloMs).map(w => ({
        t: w.from,
        good: w.good,
        rejected: w.rejected,
        failed: w.offered - w.good - w.rejected,
        okP99: round(w.okP99, 1),
        rejP99: round(w.rejP99, 1),
        elu: serverInfo(m, w.from, w.from + 1).meanElu
      }))
      points.push({ mult, rate, seconds, stats, perSecond, gen: genInfo(m.gen, m.interference), server: serverInfo(m, 0, seconds) })
      cfg.log(`  sweep ${c.padEnd(14)} ${String(mult).padStart(4)}x ${String(rate).padStart(5)}/s  goodput ${pct100(stats.goodPerSec / capacity)}  2xx p99 ${ms(stats.okP99)}  503 ${stats.rejected} (p99 ${ms(stats.rejP99)})  timeouts ${stats.timeouts}${flags(m)}`)
    }
    out[c] = points
  }
  return out
}

/** Warnings for a measured run: generator behind its schedule, other processes on our CPUs. */
export function flags (m: Measured): string {
  const out: string[] = []
  if (m.gen.behind) out.push(`generator behind (lag p99 ${m.gen.lag.p99?.toFixed(0)} ms)`)
  const i = m.interference
  if (i !== undefined && (i.cpu0Foreign > 0.05 || i.cpu1Foreign > 0.05)) out.push(`other processes used CPU0 ${pct100(i.cpu0Foreign)}, CPU1 ${pct100(i.cpu1Foreign)}`)
  if (m.died) out.push('server died')
  return out.length > 0 ? `  [${out.join('; ')}]` : ''
}

export const pct100 = (x: number): string => `${(x * 100).toFixed(0)} %`
export const ms = (x: number | null): string => x === null ? '–' : x >= 1000 ? `${(x / 1000).toFixed(2)} s` : `${x.toFixed(x < 10 ? 1 : 0)} ms`

// ---------------------------------------------------------------------------
// step 0.5x → 3x → 0.5x

export interface StepResult {
  phases: Array<Phase & { mult: number }>
  stepUpAt: number
  stepDownAt: number
  /** per 100 ms, by scheduled time */
  buckets: Array<{ t: number, offered: number, ok: number, good: number, rejected: number, failed: number, okP99: number | null }>
  series: RelPoint[]
  phaseStats: WindowStats[]
  /** seconds from the step up to the first 503 (null: none) */
  firstRejectAfter: number | null
  /** seconds from the step up until the 500 ms rolling goodput first reaches 90 % of capacity */
  recoveryTime: number | null
  /** goodput over [step + 1 s, step down) as a share of capacity */
  goodputAfter1s: number
  /** seconds from the step down to the last 503 (0: none after the step down) */
  lastRejectAfterDown: number
  rejectionsAfterDown2s: number
  gen: GenInfo
  server: ServerInfo
}

export async function runStep (cfg: BenchConfig, capacity: number, contenders: Contender[], secs: [number, number, number]): Promise<Record<string, StepResult>> {
  const mults = [0.5, 3, 0.5]
  const phases = mults.map((mult, k) => ({ seconds: secs[k] as number, rate: Math.round(capacity * mult), mult }))
  const stepUpAt = secs[0]
  const stepDownAt = secs[0] + secs[1]
  const total = secs[0] + secs[1] + secs[2]
  const out: Record<string, StepResult> = {}
  for (const c of contenders) {
    const m = await withServer({ contender: c }, async (srv) => await measure(srv, {
      phases,
      routes: '/work',
      warmup: { seconds: 1, rate: Math.round(capacity * 0.3) },
      drainMs: cfg.drainMs,
      timeoutMs: cfg.timeoutMs
    }))
    const rec = m.gen.records
    const b = bucketStats(rec, total, 100, cfg.sloMs)
    const buckets = b.map(w => ({
      t: round(w.from, 1) ?? 0,
      offered: w.offered,
      ok: w.ok,
      good: w.good,
      rejected: w.rejected,
      failed: w.errors + w.timeouts + w.unfinished + w.other,
      okP99: round(w.okP99, 1)
    }))
    let firstRejectAfter: number | null = null
    let lastRejectAfterDown = 0
    let rejectionsAfterDown2s = 0
    for (let i = 0; i < rec.count; i++) {
      if (rec.outcome[i] !== Outcome.rejected) continue
      const s = (rec.sched[i] as number) / 1000
      if (s >= stepUpAt && firstRejectAfter === null) firstRejectAfter = s - stepUpAt
      if (s >= stepDownAt) {
        lastRejectAfterDown = Math.max(lastRejectAfterDown, s - stepDownAt)
        if (s >= stepDownAt + 2) rejectionsAfterDown2s++
      }
    }
    let recoveryTime: number | null = null
    const first = Math.round(stepUpAt * 10)
    const last = Math.round(stepDownAt * 10)
    for (let k = first; k + 5 <= last; k++) {
      let good = 0
      for (let j = k; j < k + 5; j++) good += buckets[j]?.good ?? 0
      if (good / 0.5 >= 0.9 * capacity) { recoveryTime = round((k + 5) / 10 - stepUpAt, 1); break }
    }
    const after = windowStats(rec, stepUpAt + 1, stepDownAt, cfg.sloMs)
    const phaseStats = [
      windowStats(rec, 0, stepUpAt, cfg.sloMs),
      windowStats(rec, stepUpAt, stepDownAt, cfg.sloMs),
      windowStats(rec, stepDownAt, total, cfg.sloMs)
    ].map(roundStats)
    out[c] = {
      phases,
      stepUpAt,
      stepDownAt,
      buckets,
      series: m.series,
      phaseStats,
      firstRejectAfter: round(firstRejectAfter, 2),
      recoveryTime,
      goodputAfter1s: round(after.goodPerSec / capacity, 3) ?? 0,
      lastRejectAfterDown: round(lastRejectAfterDown, 2) ?? 0,
      rejectionsAfterDown2s,
      gen: genInfo(m.gen, m.interference),
      server: serverInfo(m, 0, total)
    }
    cfg.log(`  step  ${c.padEnd(14)} 3x goodput after 1 s ${pct100(out[c].goodputAfter1s)}, recovery ${out[c].recoveryTime ?? '–'} s, last 503 after step-down +${out[c].lastRejectAfterDown} s${flags(m)}`)
  }
  return out
}

// ---------------------------------------------------------------------------
// single-load scenarios: slow downstream, stall, bimodal

export interface LoadResult {
  rate: number
  mult: number
  seconds: number
  stats: WindowStats
  gen: GenInfo
  server: ServerInfo
  /** stall scenario */
  stalls?: Array<{ t: number, ms: number }>
  rejectedOutsideStalls?: number
  rejectedNearStalls?: number
  /** bimodal scenario */
  byRoute?: Array<{ name: string, cpuMs: number, stats: WindowStats }>
  /** CPU-ms of work completed within the SLO per second of wall time, as a share of one core */
  usefulCpuShare?: number
}

export async function runSlowDownstream (cfg: BenchConfig, capacity: number, contenders: Contender[], seconds: number): Promise<Record<string, LoadResult>> {
  const out: Record<string, LoadResult> = {}
  const mult = 0.7
  const rate = Math.round(capacity * mult)
  const route = '/work?cpu=1&io=300'
  for (const c of contenders) {
    const m = await withServer({ contender: c }, async (srv) => await measure(srv, {
      phases: [{ seconds, rate }],
      routes: route,
      warmup: { seconds: 1, rate: Math.round(capacity * 0.3) },
      drainMs: cfg.drainMs,
      timeoutMs: cfg.timeoutMs
    }))
    const stats = roundStats(windowStats(m.gen.records, 0, seconds, cfg.sloMs))
    out[c] = { rate, mult, seconds, stats, gen: genInfo(m.gen, m.interference), server: serverInfo(m, 0, seconds) }
    cfg.log(`  slow  ${c.padEnd(14)} 503s ${stats.rejected}, in-flight max ${out[c].server.maxInflight}, ELU ${out[c].server.meanElu}, 2xx p99 ${ms(stats.okP99)}${flags(m)}`)
  }
  return out
}

export async function runStall (cfg: BenchConfig, capacity: number, contenders: Contender[], seconds: number, everyMs: number, stallMs: number): Promise<Record<string, LoadResult>> {
  const out: Record<string, LoadResult> = {}
  const mult = 0.7
  const rate = Math.round(capacity * mult)
  for (const c of contenders) {
    const m = await withServer({ contender: c, stallEveryMs: everyMs, stallMs }, async (srv) => await measure(srv, {
      phases: [{ seconds, rate }],
      routes: '/work',
      warmup: { seconds: 1, rate: Math.round(capacity * 0.3) },
      drainMs: cfg.drainMs,
      timeoutMs: cfg.timeoutMs
    }))
    const rec = m.gen.records
    const stalls = m.stalls.filter(s => s.t > -1 && s.t < seconds + 1)
    let outside = 0
    let near = 0
    for (let i = 0; i < rec.count; i++) {
      if (rec.outcome[i] !== Outcome.rejected) continue
      const s = (rec.sched[i] as number) / 1000
      const inStall = stalls.some(st => s >= st.t && s <= st.t + st.ms / 1000)
      const nearStall = stalls.some(st => s >= st.t && s <= st.t + st.ms / 1000 + 0.5)
      if (!inStall) outside++
      if (nearStall && !inStall) near++
    }
    const stats = roundStats(windowStats(rec, 0, seconds, cfg.sloMs))
    out[c] = {
      rate,
      mult,
      seconds,
      stats,
      gen: genInfo(m.gen, m.interference),
      server: serverInfo(m, 0, seconds),
      stalls,
      rejectedOutsideStalls: outside,
      rejectedNearStalls: near
    }
    cfg.log(`  stall ${c.padEnd(14)} ${stalls.length} stalls, 503s ${stats.rejected} (outside the stall windows ${outside}, of which ≤ 0.5 s after a stall ${near}), 2xx p99 ${ms(stats.okP99)}${flags(m)}`)
  }
  return out
}

export const bimodalRoutes: Array<Route & { name: string, cpuMs: number }> = [
  { name: 'cheap', path: '/work?cpu=0.1&io=1&cpu2=0.1', weight: 9, cpuMs: 0.2 },
  { name: 'expensive', path: '/work?cpu=5&io=1&cpu2=5', weight: 1, cpuMs: 10 }
]

export async function runBimodal (cfg: BenchConfig, capacity: number, contenders: Contender[], seconds: number, mult: number): Promise<Record<string, LoadResult>> {
  const out: Record<string, LoadResult> = {}
  const rate = Math.round(capacity * mult)
  for (const c of contenders) {
    const m = await withServer({ contender: c }, async (srv) => await measure(srv, {
      phases: [{ seconds, rate }],
      routes: bimodalRoutes,
      warmup: { seconds: 1, rate: Math.round(capacity * 0.3) },
      drainMs: cfg.drainMs,
      timeoutMs: cfg.timeoutMs
    }))
    const rec = m.gen.records
    const byRoute = bimodalRoutes.map((r, idx) => ({
      name: r.name,
      cpuMs: r.cpuMs,
      stats: roundStats(windowStats(rec, 0, seconds, cfg.sloMs, { routes: [idx] }))
    }))
    const usefulCpuMs = byRoute.reduce((a, r) => a + r.stats.good * r.cpuMs, 0)
    const stats = roundStats(windowStats(rec, 0, seconds, cfg.sloMs))
    out[c] = {
      rate,
      mult,
      seconds,
      stats,
      gen: genInfo(m.gen, m.interference),
      server: serverInfo(m, 0, seconds),
      byRoute,
      usefulCpuShare: round(usefulCpuMs / (seconds * 1000), 3) ?? 0
    }
    cfg.log(`  mixed ${c.padEnd(14)} useful CPU ${pct100(out[c].usefulCpuShare ?? 0)}, cheap good ${byRoute[0]?.stats.good} / 503 ${byRoute[0]?.stats.rejected}, expensive good ${byRoute[1]?.stats.good} / 503 ${byRoute[1]?.stats.rejected}${flags(m)}`)
  }
  return out
}

// ---------------------------------------------------------------------------
// hello-world overhead (closed loop)

export interface HelloResult {
  tool: string
  connections: number
  roundSeconds: number
  /** 2xx per second by round and contender: every round on fresh processes, one per contender */
  rounds: Array<Record<string, number>>
  mean: Record<string, number>
  /** median over the rounds, by contender */
  median: Record<string, number>
  /** admission / bare within each round (adjacent in time) */
  roundRatios: number[]
  /** median admission / median bare: the target is checked on it */
  ratio: number
  /** ratio of the means */
  meanRatio: number
  /**
   * The reference: an onRequest hook that does nothing, registered as the plugin is. `ratio` = its
   * median / bare's, `admissionRatio` = admission's median / its.
   */
  hook?: { ratio: number, admissionRatio: number }
  /**
   * The floor: the least a controller that bounds in-flight requests and learns from their latency does
   * per request (the `permit-floor` contender: a count, a clock read at each end, a 'close' listener).
   * `ratio` = its median / bare's, `admissionRatio` = admission's median / its.
   */
  floor?: { ratio: number, admissionRatio: number }
  /** One clock read per request in an otherwise empty hook (`clock-hook`): its median / bare's. */
  clock?: { ratio: number }
  /** admission's median / the median of bare Fastify processes that did not warm process.nextTick */
  unwarmedRatio?: number
  /** median main-thread CPU time of the server per 2xx response (µs), from /proc/<pid>/schedstat */
  cpuPerRequestUs: Record<string, number>
  /** seconds of the same closed-loop load each process ran before its round */
  warmupSeconds?: number
  /** answers other than 2xx during the warm-ups (a cold process' refusals), by contender */
  warmupOther?: Record<string, number>
  /** answers other than 2xx during the rounds, by contender */
  roundsOther?: Record<string, number>
  /** the same closed loop with MANY_CONNECTIONS connections: 2xx per second by round, answers other than 2xx, ratio of the medians */
  many?: { connections: number, rounds: Array<Record<string, number>>, other: Record<string, number>, ratio: number }
  note?: string
}

/** Connections of the hello-world rounds that read more requests per turn than the turn budget holds. */
const MANY_CONNECTIONS = 200
/** The label of bare Fastify without the warm-up of process.nextTick every other process gets. */
export const UNWARMED = 'bare-unwarmed'

/**
 * Hello-world overhead, closed loop. Every round starts a fresh process per contender (the order
 * reversed every round), warms it up with the same client, then measures it with 50 connections and
 * with MANY_CONNECTIONS. Fresh processes, because one process runs the same code at one of two speeds
 * for its whole life, about a quarter apart, bare Fastify included: process.nextTick, which every
 * response calls about nine times, is either fast or slow (lib/warm-ticks.ts). Rounds on one process
 * pair measured which speed each process fell on.
 */
export async function runHello (cfg: BenchConfig, contenders: Contender[], rounds: number, roundSeconds: number, warmupSeconds: number): Promise<HelloResult> {
  const connections = 50
  const useWrk = commandExists('wrk')
  const tool = useWrk ? 'wrk -t1 -c50 (pinned to core 1)' : 'built-in closed-loop client, 50 connections (install wrk for a client that cannot be the bottleneck)'
  // one closed-loop run: 2xx per second, answers that were not 2xx, and the server's main-thread CPU
  // per 2xx (ns, from schedstat)
  const once = async (srv: ServerHandle, seconds: number, conns = connections): Promise<{ perSec: number, other: number, cpuNs: number | null }> => {
    const cpuBefore = mainThreadNs(srv.pid)
    let perSec = 0
    let count = 0
    let other = 0
    if (useWrk) {
      const r = await runCommand('wrk', ['-t1', `-c${conns}`, `-d${seconds}s`, `http://127.0.0.1:${srv.port}/hello`], (seconds + 10) * 1000)
      const total = /(\d+) requests in ([\d.]+)(m?s)/.exec(r.stdout)
      const non2xx = /Non-2xx or 3xx responses:\s*(\d+)/.exec(r.stdout)
      if (total !== null) {
        const secs = Number(total[2]) / (total[3] === 'ms' ? 1000 : 1)
        other = non2xx !== null ? Number(non2xx[1]) : 0
        count = Number(total[1]) - other
        perSec = secs > 0 ? count / secs : 0
      }
    } else {
      const r = await runClosedLoop({ port: srv.port, path: '/hello', connections: conns, seconds })
      perSec = r.okPerSec
      count = r.ok
      other = r.requests - r.ok
    }
    const cpuAfter = mainThreadNs(srv.pid)
    const cpuNs = cpuBefore !== null && cpuAfter !== null && count > 0 ? (cpuAfter - cpuBefore) / count : null
    return { perSec, other, cpuNs }
  }
  const res: Array<Record<string, number>> = []
  const many: Array<Record<string, number>> = []
  const warmupOther: Record<string, number> = {}
  const roundsOther: Record<string, number> = {}
  const manyOther: Record<string, number> = {}
  const cpu: Record<string, number[]> = {}
  const add = (to: Record<string, number>, c: string, n: number): void => { to[c] = (to[c] ?? 0) + n }
  // Every contender's process warms process.nextTick at start (bench/server.ts), as the plugin does for
  // its own: the overhead is then measured between processes in the same state. Bare Fastify without
  // that warm-up is measured too: what an application without the plugin runs at.
  const entries: Array<{ label: string, contender: Contender, env?: Record<string, string> }> = contenders.map(c => ({ label: c, contender: c }))
  if (contenders.includes('bare')) entries.push({ label: UNWARMED, contender: 'bare', env: { BENCH_WARM_TICKS: '0' } })
  for (let k = 0; k < rounds; k++) {
    const row: Record<string, number> = {}
    const manyRow: Record<string, number> = {}
    for (const { label: c, contender, env } of k % 2 === 0 ? entries : [...entries].reverse()) {
      await withServer({ contender, series: false, ...(env !== undefined ? { env } : {}) }, async (srv) => {
        // The same warm-up for every process, with the same client: a fresh process runs its first
        // thousands of requests before the JIT has compiled them, and the plugin refuses some of them
        // (its turns run over their budget). Its refusals are reported; cold bursts are the hard
        // scenarios' subject.
        add(warmupOther, c, (await once(srv, warmupSeconds)).other)
        const r = await once(srv, roundSeconds)
        row[c] = Math.round(r.perSec)
        add(roundsOther, c, r.other)
        if (r.cpuNs !== null) (cpu[c] ??= []).push(r.cpuNs)
        // Many connections: each turn reads one request per ready connection, 200 hello-world requests
        // make turns longer than the turn budget, and a client that sends again at once after a
        // refusal is back in the next turn.
        const m = await once(srv, roundSeconds, MANY_CONNECTIONS)
        manyRow[c] = Math.round(m.perSec)
        add(manyOther, c, m.other)
      })
    }
    res.push(row)
    many.push(manyRow)
    cfg.log(`  hello round ${k + 1} (fresh processes): ${Object.entries(row).map(([c, v]) => `${c} ${v}/s`).join(', ')}; ${MANY_CONNECTIONS} connections: ${Object.entries(manyRow).map(([c, v]) => `${c} ${v}/s`).join(', ')}`)
  }
  cfg.log(`  hello warm-ups (${warmupSeconds} s each), answers other than 2xx: ${Object.entries(warmupOther).map(([c, v]) => `${c} ${v}`).join(', ')}`)
  const cpuPerRequestUs: Record<string, number> = {}
  for (const [c, v] of Object.entries(cpu)) cpuPerRequestUs[c] = round(median(v) / 1000, 2) ?? 0
  const mean: Record<string, number> = {}
  const middle: Record<string, number> = {}
  for (const { label: c } of entries) {
    mean[c] = Math.round(res.reduce((a, r) => a + (r[c] ?? 0), 0) / res.length)
    middle[c] = Math.round(median(res.map(r => r[c] ?? 0)))
  }
  const over = (rows: Array<Record<string, number>>, a: string, b: string): number => {
    const x = median(rows.map(r => r[b] ?? 0))
    return x > 0 ? round(median(rows.map(r => r[a] ?? 0)) / x, 3) ?? 0 : 0
  }
  const base = mean.bare ?? 0
  return {
    tool,
    connections,
    roundSeconds,
    rounds: res,
    mean,
    median: middle,
    roundRatios: res.map(r => (r.bare ?? 0) > 0 ? round((r.admission ?? 0) / (r.bare as number), 3) ?? 0 : 0),
    ratio: over(res, 'admission', 'bare'),
    meanRatio: base > 0 ? round((mean.admission ?? 0) / base, 3) ?? 0 : 0,
    ...(contenders.includes('empty-hook') ? { hook: { ratio: over(res, 'empty-hook', 'bare'), admissionRatio: over(res, 'admission', 'empty-hook') } } : {}),
    ...(contenders.includes('clock-hook') ? { clock: { ratio: over(res, 'clock-hook', 'bare') } } : {}),
    ...(contenders.includes('permit-floor') ? { floor: { ratio: over(res, 'permit-floor', 'bare'), admissionRatio: over(res, 'admission', 'permit-floor') } } : {}),
    ...(contenders.includes('bare') ? { unwarmedRatio: over(res, 'admission', UNWARMED) } : {}),
    cpuPerRequestUs,
    warmupSeconds,
    warmupOther,
    roundsOther,
    many: { connections: MANY_CONNECTIONS, rounds: many, other: manyOther, ratio: over(many, 'admission', 'bare') },
    ...(useWrk ? {} : { note: 'closed-loop client may be the bottleneck: the ratio is then biased towards 1' })
  }
}

/** CPU time of a process' main thread (the event loop) in ns, Linux only. */
export function mainThreadNs (pid: number | undefined): number | null {
  if (pid === undefined) return null
  try {
    return Number(readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ')[0])
  } catch {
    return null
  }
}

export function elapsedSince (t0: number): number {
  return (performance.now() - t0) / 1000
}
