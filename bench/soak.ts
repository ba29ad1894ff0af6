// Soak: minutes of open-loop overload against the admission plugin (default options), with an app-level
// async auth-like onRequest hook and clients that abort ~5 % of their requests at a random moment.
// Checks that nothing drifts: RSS, the plugin's in-flight count after the load, goodput over time.
//
//   tsx bench/soak.ts [--minutes 10] [--rate N] [--mult 1.5] [--abort-share 0.05] [--out DIR]
//
// Server: bench/server.ts --contender admission with BENCH_AUTH_MS=2, pinned to CPU 0; this runner and
// its load on CPU 1. Capacity: --rate (requests/s at 1x), else the benchmark's capacity search.
// Results: <out>/soak-<date>.json (default bench/results/) and a table; exit code 1 if a target fails.
import { mkdirSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { runOpenLoop, scheduleOf } from './open-loop.js'
import {
  cpuSnapshot, hasTaskset, installExitHandlers, interference, killAllChildren, pidAlive, pinSelf,
  prepareServerBundle, startServer, type ServerHandle
} from './proc.js'
import { ConnPool } from './raw-http.js'
import { genInfo, measureCapacity, ms, pct100, roundStats } from './scenarios.js'
import type { SeriesPoint } from './server.js'
import { gitState, isoDate } from './results.js'
import { bucketStats, windowStats, type Records } from './stats.js'

const SLO_MS = 1000
const TIMEOUT_MS = 10000
/** the auth-like hook's await, ms */
const AUTH_MS = 2
const MB = 1024 * 1024

// ---------------------------------------------------------------------------
// client aborts

/** What became of a request of the abort stream. */
const Cut = { pending: 0, cut: 1, ok: 2, rejected: 3, other: 4, error: 5 } as const

interface AbortRun {
  /** epoch ms of each send */
  sentAt: Float64Array
  result: Uint8Array
}

/**
 * When to cut a request, ms after it was sent: 40 % within 4 ms (while the app's 2 ms auth hook awaits,
 * when the request is read at once), the rest 4–40 ms (in the handler's 20 ms await, or still queued).
 */
function cutDelayMs (): number {
  return Math.random() < 0.4 ? Math.random() * 4 : 4 + Math.random() * 36
}

/**
 * The aborting clients: `rate` requests/s to /work on connections of their own, each cut after
 * cutDelayMs() unless its answer came first (the socket is destroyed, as any HTTP/1.1 client's abort
 * does). Connections are opened ahead of use, so a cut hits a request the server is working on rather
 * than a connect still in the listen backlog.
 */
async function runAborts (port: number, rate: number, seconds: number): Promise<AbortRun> {
  const pool = new ConnPool('127.0.0.1', port)
  const req = pool.encode('/work')
  const sched = scheduleOf(rate > 0 ? [{ seconds, rate }] : [])
  const n = sched.length
  const run: AbortRun = { sentAt: new Float64Array(n), result: new Uint8Array(n) }
  let settled = 0
  const settle = (i: number, r: number): void => {
    if (run.result[i] !== Cut.pending) return
    run.result[i] = r
    settled++
  }
  const reserve = Math.max(8, Math.ceil(rate / 4))
  let warming: Promise<void> | undefined
  let sending = true
  const topUp = (): Promise<void> | undefined => {
    if (sending && warming === undefined && pool.open < reserve) {
      warming = pool.warm(reserve - pool.open).finally(() => { warming = undefined })
    }
    return warming
  }
  await topUp()
  const topUpTimer = setInterval(topUp, 100)

  function send (i: number): void {
    run.sentAt[i] = performance.timeOrigin + performance.now()
    const conn = pool.send(req, function answered (status) {
      clearTimeout(cutTimer)
      settle(i, status === 0 ? Cut.error : status >= 200 && status < 300 ? Cut.ok : status === 503 ? Cut.rejected : Cut.other)
    })
    const cutTimer = setTimeout(function cut () {
      if (run.result[i] !== Cut.pending) return
      pool.abort(conn)
      settle(i, Cut.cut)
    }, cutDelayMs())
  }

  const t0 = performance.now()
  let next = 0
  await new Promise<void>((resolve) => {
    const tick = (): void => {
      const now = performance.now() - t0
      while (next < n && (sched[next] as number) <= now) send(next++)
      if (next < n) setTimeout(tick, Math.max(0, (sched[next] as number) - (performance.now() - t0)))
      else resolve()
    }
    tick()
  })
  clearInterval(topUpTimer)
  sending = false
  // every request settles within 40 ms of its send (answer or cut)
  const unsettled = (): boolean => settled < n
  for (let waited = 0; unsettled() && waited < 2000; waited += 20) await sleep(20)
  await topUp()
  pool.close()
  return run
}

// ---------------------------------------------------------------------------
// analysis

interface SecondRow {
  t: number
  /** main stream + aborting clients */
  offered: number
  /** 2xx within the SLO (main stream) */
  good: number
  rejected: number
  /** connection errors, timeouts, other statuses (main stream) */
  errors: number
  /** requests of the aborting clients sent / actually cut before their answer */
  abortSent: number
  abortCut: number
  rssMB: number | null
  heapMB: number | null
  /** the plugin's in-flight count, highest in the second */
  admInflightMax: number | null
  limit: number | null
}

type RelPoint = SeriesPoint & { rel: number }

function perSecond (rec: Records, aborts: AbortRun, series: RelPoint[], startEpochMs: number, totalS: number): SecondRow[] {
  const rows: SecondRow[] = bucketStats(rec, totalS, 1000, SLO_MS).map((w, s) => ({
    t: s,
    offered: w.offered,
    good: w.good,
    rejected: w.rejected,
    errors: w.offered - w.ok - w.rejected,
    abortSent: 0,
    abortCut: 0,
    rssMB: null,
    heapMB: null,
    admInflightMax: null,
    limit: null
  }))
  const rowAt = (relS: number): SecondRow | undefined => rows[Math.min(rows.length - 1, Math.max(0, Math.floor(relS)))]
  for (let i = 0; i < aborts.sentAt.length; i++) {
    const row = rowAt(((aborts.sentAt[i] as number) - startEpochMs) / 1000)
    if (row === undefined) continue
    row.offered++
    row.abortSent++
    if (aborts.result[i] === Cut.cut) row.abortCut++
  }
  for (const p of series) {
    if (p.rel < 0 || p.rel >= totalS) continue
    const row = rowAt(p.rel) as SecondRow
    if (p.rss !== undefined) row.rssMB = round(p.rss / MB, 1)
    if (p.heapUsed !== undefined) row.heapMB = round(p.heapUsed / MB, 1)
    if (p.admInflight !== undefined) row.admInflightMax = Math.max(row.admInflightMax ?? 0, p.admInflight)
    if (p.limit !== undefined) row.limit = p.limit
  }
  return rows
}

function median (xs: number[]): number | null {
  if (xs.length === 0) return null
  const s = [...xs].sort((a, b) => a - b)
  return s[s.length >> 1] as number
}

/** Median RSS of the series points in [fromS, toS) (GC makes single points noisy). */
function rssBetween (series: RelPoint[], fromS: number, toS: number): number | null {
  return median(series.filter(p => p.rel >= fromS && p.rel < toS && p.rss !== undefined).map(p => p.rss as number))
}

/** One row per minute (in-flight: the plugin's, highest seen; RSS and heap: at the end of the minute). */
function printMinutes (rows: SecondRow[], totalS: number, W: number, log: (line: string) => void): void {
  log(`\n${'minute'.padEnd(12)}${['offered/s', 'goodput/s', '503/s', 'errors', 'aborted', 'cut', 'RSS', 'heap', 'in-flight', 'limit'].map(h => h.padStart(11)).join('')}`)
  for (let from = 0; from < totalS; from += W) {
    const to = Math.min(totalS, from + W)
    const rs = rows.filter(r => r.t >= from && r.t < to)
    const sum = (f: (r: SecondRow) => number): number => rs.reduce((a, r) => a + f(r), 0)
    const lastWith = <T>(f: (r: SecondRow) => T | null): T | null => rs.map(f).filter((x): x is T => x !== null).at(-1) ?? null
    const limits = rs.map(r => r.limit).filter((x): x is number => x !== null)
    const cells = [
      (sum(r => r.offered) / (to - from)).toFixed(0), (sum(r => r.good) / (to - from)).toFixed(0), (sum(r => r.rejected) / (to - from)).toFixed(0),
      String(sum(r => r.errors)), String(sum(r => r.abortSent)), String(sum(r => r.abortCut)),
      `${lastWith(r => r.rssMB) ?? '–'} MB`, `${lastWith(r => r.heapMB) ?? '–'} MB`,
      String(rs.reduce((a, r) => Math.max(a, r.admInflightMax ?? 0), 0)),
      limits.length > 0 ? `${Math.min(...limits)}–${Math.max(...limits)}` : '–'
    ]
    log(`${`${from}–${to} s`.padEnd(12)}${cells.map(c => c.padStart(11)).join('')}`)
  }
}

interface Target { name: string, target: string, value: string, pass: boolean }

const round = (x: number, d = 1): number => Math.round(x * 10 ** d) / 10 ** d

// ---------------------------------------------------------------------------

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: {
      minutes: { type: 'string', default: '10' },
      rate: { type: 'string' },
      mult: { type: 'string', default: '1.5' },
      'abort-share': { type: 'string', default: '0.05' },
      out: { type: 'string' }
    }
  })
  const minutes = Number(values.minutes)
  const mult = Number(values.mult)
  const abortShare = Number(values['abort-share'])
  if (!(minutes > 0) || !(mult > 0) || !(abortShare >= 0 && abortShare < 1)) throw new Error('--minutes and --mult must be > 0, --abort-share in [0, 1)')
  const totalS = Math.round(minutes * 60)
  // "minute" = 60 s; shorter runs (smoke tests) scale it to a third of the run
  const W = Math.min(60, totalS / 3)
  const span = Math.min(5, W / 2)
  const log = (line: string): void => console.log(line)
  installExitHandlers()
  const pinned = os.availableParallelism() >= 2 && hasTaskset() && pinSelf(1)
  const bundle = await prepareServerBundle()
  const lib = gitState()
  log(`soak: ${minutes} min at ${mult}x capacity, ${pct100(abortShare)} of requests aborted by the client, ${AUTH_MS} ms async auth hook; ${pinned ? 'server on CPU 0, load on CPU 1' : 'NOT pinned'}; lib/ at ${lib}`)
  if (W < 60) log(`(short run: "minute" = ${W} s)`)

  let capacity: number
  let capacitySource: string
  if (values.rate !== undefined) {
    capacity = Number(values.rate)
    if (!(capacity > 0)) throw new Error('--rate must be > 0')
    capacitySource = '--rate'
  } else {
    log('measuring capacity of bare Fastify on /work (1 ms CPU + 20 ms await + 1 ms CPU)…')
    const c = await measureCapacity({ quick: totalS < 60, sloMs: SLO_MS, timeoutMs: TIMEOUT_MS, drainMs: TIMEOUT_MS, log })
    capacity = c.rps
    capacitySource = c.method
  }
  const rate = capacity * mult
  const mainRate = Math.round(rate * (1 - abortShare))
  const abortRate = Math.round(rate * abortShare)
  log(`capacity ${capacity}/s: offering ${mainRate}/s + ${abortRate}/s from aborting clients for ${totalS} s`)

  const srv = await startServer({ contender: 'admission', env: { BENCH_AUTH_MS: String(AUTH_MS) } })
  let run: Awaited<ReturnType<typeof soak>>
  try {
    run = await soak(srv, { capacity, mainRate, abortRate, totalS, W, log })
  } finally {
    await srv.stop()
  }
  const { gen, aborts, intf, end, died } = run
  const series: RelPoint[] = srv.series.map(p => ({ ...p, rel: (p.t - gen.startEpochMs) / 1000 }))
  const rows = perSecond(gen.records, aborts, series, gen.startEpochMs, totalS)

  // targets
  const first = windowStats(gen.records, 0, W, SLO_MS)
  const last = windowStats(gen.records, totalS - W, totalS, SLO_MS)
  const goodDrift = first.goodPerSec > 0 ? last.goodPerSec / first.goodPerSec - 1 : NaN
  const rssWarm = rssBetween(series, W - span, W)
  const rssEnd = rssBetween(series, totalS - span, totalS)
  const rssGrowth = rssWarm !== null && rssEnd !== null ? rssEnd / rssWarm - 1 : NaN
  const mb = (x: number | null): string => x === null ? '–' : `${(x / MB).toFixed(1)} MB`
  const signed = (x: number): string => `${x >= 0 ? '+' : ''}${(x * 100).toFixed(1)} %`
  const targets: Target[] = [
    {
      name: 'rss-growth',
      target: `RSS growth from the end of the first minute (${W} s) to the end < 10 %`,
      value: `${mb(rssWarm)} → ${mb(rssEnd)} (${Number.isFinite(rssGrowth) ? signed(rssGrowth) : 'not reported'})`,
      pass: rssGrowth < 0.1
    },
    {
      name: 'inflight-end',
      target: 'plugin in-flight exactly 0 one quiet second after the load',
      value: `${end?.admInflight ?? 'not reported'} (Node-level open requests ${end?.inflight ?? '–'})`,
      pass: end?.admInflight === 0
    },
    {
      name: 'goodput-drift',
      target: 'goodput of the last minute within 5 % of the first',
      value: `${first.goodPerSec.toFixed(1)}/s → ${last.goodPerSec.toFixed(1)}/s (${Number.isFinite(goodDrift) ? signed(goodDrift) : '–'})`,
      pass: Math.abs(goodDrift) <= 0.05
    }
  ]
  if (died) targets.push({ name: 'alive', target: 'server alive at the end', value: 'died', pass: false })

  printMinutes(rows, totalS, W, log)
  const byResult = (r: number): number => aborts.result.reduce((a, x) => a + (x === r ? 1 : 0), 0)
  const abortSummary = { sent: aborts.result.length, cut: byResult(Cut.cut), answeredOk: byResult(Cut.ok), answered503: byResult(Cut.rejected), other: byResult(Cut.other), errors: byResult(Cut.error) }
  log(`aborting clients: ${abortSummary.sent} sent, ${abortSummary.cut} cut before their answer (${abortSummary.answeredOk} answered 2xx first, ${abortSummary.answered503} 503, ${abortSummary.errors} errors)`)
  const g = genInfo(gen, intf)
  const whole = roundStats(windowStats(gen.records, 0, totalS, SLO_MS))
  log(`main stream: goodput ${pct100(whole.goodPerSec / capacity)} of capacity, 2xx p99 ${ms(whole.okP99)}, 503 p99 ${ms(whole.rejP99)}, timeouts ${whole.timeouts}, send lag p99 ${ms(g.lagP99)}`)
  const warnings: string[] = []
  if (g.behind) warnings.push(`the load generator fell behind its schedule (send lag p99 ${ms(g.lagP99)})`)
  if ((g.foreignCpu0 ?? 0) > 0.05 || (g.foreignCpu1 ?? 0) > 0.05) warnings.push(`other processes used CPU0 ${pct100(g.foreignCpu0 ?? 0)}, CPU1 ${pct100(g.foreignCpu1 ?? 0)}`)
  for (const w of warnings) log(`warning: ${w}`)
  if (srv.stderr.length > 0) log(`server stderr:\n${srv.stderr.slice(0, 2000)}`)

  log('')
  for (const t of targets) log(`${t.pass ? 'PASS' : 'FAIL'}  ${t.target}: ${t.value}`)

  const outDir = values.out ?? fileURLToPath(new URL('./results/', import.meta.url))
  mkdirSync(outDir, { recursive: true })
  const file = `${outDir.replace(/\/$/, '')}/soak-${isoDate()}.json`
  writeFileSync(file, JSON.stringify({
    date: new Date().toISOString(),
    lib,
    machine: { cpus: os.availableParallelism(), model: os.cpus()[0]?.model ?? 'unknown', node: process.version, pinned, bundled: bundle !== undefined },
    options: { minutes, totalSeconds: totalS, minuteSeconds: W, capacity, capacitySource, mult, mainRate, abortRate, abortShare, authMs: AUTH_MS, sloMs: SLO_MS, timeoutMs: TIMEOUT_MS },
    targets,
    pass: targets.every(t => t.pass),
    warnings,
    stats: whole,
    gen: g,
    aborts: abortSummary,
    end,
    perSecond: rows
  }, null, 1))
  log(`\nresults: ${file}`)
  killAllChildren()
  if (!targets.every(t => t.pass)) process.exitCode = 1
}

interface SoakPlan { capacity: number, mainRate: number, abortRate: number, totalS: number, W: number, log: (line: string) => void }

/** Warm-up, the load with its aborting clients, the drain, a quiet second, and the server's state then. */
async function soak (srv: ServerHandle, o: SoakPlan): Promise<{
  gen: Awaited<ReturnType<typeof runOpenLoop>>
  aborts: AbortRun
  intf: ReturnType<typeof interference>
  end: SeriesPoint | undefined
  died: boolean
}> {
  // as the benchmark does: 1 s at 0.3x (past the plugin's default start-up grace)
  await runOpenLoop({ port: srv.port, phases: [{ seconds: 1, rate: Math.round(o.capacity * 0.3) }], routes: '/work', drainMs: 1000 })
  srv.series.length = 0
  const before = cpuSnapshot(srv.pid)
  const t0 = performance.now()
  const progress = setInterval(() => {
    const p = srv.series.at(-1)
    if (p === undefined) return
    o.log(`  ${((performance.now() - t0) / 1000).toFixed(0)} s: RSS ${((p.rss ?? 0) / MB).toFixed(1)} MB, plugin in-flight ${p.admInflight ?? '–'}, limit ${p.limit ?? '–'}, ELU ${p.elu}`)
  }, o.W * 1000)
  try {
    const abortsDone = runAborts(srv.port, o.abortRate, o.totalS)
    const gen = await runOpenLoop({ port: srv.port, phases: [{ seconds: o.totalS, rate: o.mainRate }], routes: '/work', timeoutMs: TIMEOUT_MS, drainMs: TIMEOUT_MS })
    const aborts = await abortsDone
    const intf = interference(before, cpuSnapshot(srv.pid))
    await sleep(1000)
    // the first series point taken after the quiet second
    const mark = performance.timeOrigin + performance.now()
    let end: SeriesPoint | undefined
    for (let waited = 0; end === undefined && waited < 2000; waited += 50) {
      await sleep(50)
      end = srv.series.find(p => p.t > mark)
    }
    return { gen, aborts, intf, end, died: srv.pid === undefined || !pidAlive(srv.pid) }
  } finally {
    clearInterval(progress)
  }
}

main().catch((err: unknown) => {
  killAllChildren()
  console.error(err)
  process.exit(1)
})
