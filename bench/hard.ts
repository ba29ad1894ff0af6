// The hard cases: overload as it arrives in production, not after a warm-up over pre-opened connections.
// Every scenario starts a fresh server per contender (bare, under-pressure, admission; back to back), with
// no warm-up load, and drives it from a load generator process of its own (undici-load.ts: connections
// opened on demand, Poisson arrivals, the generator warmed before the load, pinned to CPU 1).
//
//   npm run bench:hard [-- --only burst-4x,sync-3x] [--contenders admission,bare] [--seconds N]
//                      [--capacity N] [--sync-capacity N] [--hello-capacity N] [--out DIR]
//
// Also run at the end of `npm run bench` (full mode; `--hard` adds it to a quick run). --capacity and
// friends skip the capacity measurements (for short runs). Results: bench/results/hard-<date>.md|json
// (hard-<date>-partial.* when narrowed by any of the flags above).
import { mkdirSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'
import { capacityLine, checkHardTargets, fmtMs, markdownReport, printHard } from './hard-report.js'
import { runClosedLoop, type Route } from './open-loop.js'
import {
  cpuSnapshot, foreignLoad, hasTaskset, installExitHandlers, interference, killAllChildren, listenDrops, pidAlive, pinSelf,
  prepareServerBundle, setQuietBudget, startDownstream, startServer, waitQuiet, type DownstreamHandle, type Interference, type ServerHandle
} from './proc.js'
import { gitState, isoDate } from './results.js'
import { measureCapacity, pct100, serverInfo, type BenchConfig, type CapacityResult, type ServerInfo } from './scenarios.js'
import { contenders as allContenders, type Contender } from './server.js'
import type { TargetCheck } from './targets.js'
import { spawnGenerator, type GenResult } from './generator.js'

// A route of its own, as a synchronous route is in an application: the plugin learns a cost per route.
export const SYNC_PATH = '/sync?cpu=10&io=0&cpu2=0'
const SYNC_CPU_MS = 10
const SLOW_PATH = '/work?cpu=15&io=400&cpu2=15'
const SLOW_CPU_MS = 30

/** Which capacity a scenario's multiple refers to. */
export type Base = 'work' | 'sync' | 'slow' | 'mix'

export interface HardScenario {
  name: string
  label: string
  base: Base
  mult: number
  seconds: number
  /** idle: the server sits idle ~2 s after it first answers; flood: the load starts as soon as it answers */
  start: 'idle' | 'flood'
  routes: Route[]
  /** extra environment of the server */
  env?: Record<string, string>
  /**
   * The generator's client, both opening connections on demand without a cap: undici (default), or
   * raw-http.ts's pool where undici cannot offer the rate on one core
   */
  client?: 'undici' | 'raw'
  /**
   * Also run the refuse-all contender (Fastify answering every request 503): the floor of what a refusal
   * through Fastify can do here, the measured reason when a 503 or goodput target is out of reach
   */
  floor?: boolean
  /** the handlers' awaits are queries to a database stand-in in a process of its own (downstream.ts) */
  downstream?: boolean
}

export const mixRoutes: Route[] = [
  { name: 'cheap /hello', path: '/hello', weight: 50 },
  { name: 'async /work', path: '/work', weight: 40 },
  { name: 'sync 10 ms', path: SYNC_PATH, weight: 10 }
]

const work: Route[] = [{ path: '/work' }]

export const hardScenarios: HardScenario[] = [
  { name: 'burst-4x', label: 'idle -> 4x burst of /work', base: 'work', mult: 4, seconds: 8, start: 'idle', routes: work, floor: true },
  // undici fell behind 8000/s against a bare node:http server answering 503 (send lag p50 2.7 s, 20 000
  // connections) and kept 4300/s only just (lag p99 16 ms): with a real server's slower answers it
  // collapsed. raw-http.ts offered 8000/s at ELU 0.25. See README "Hard cases".
  { name: 'burst-10x', label: 'idle -> 10x burst of /work (raw-http client)', base: 'work', mult: 10, seconds: 8, start: 'idle', routes: work, client: 'raw', floor: true },
  // The same burst with a listen queue of 4096 (`listen({ backlog })`, the app's setting; the kernel caps it
  // at net.core.somaxconn) instead of Node's 511: no target, it tells what the 1 s SYN retries of the
  // default queue cost.
  { name: 'burst-10x-backlog', label: 'idle -> 10x burst of /work (raw-http client), listen backlog 4096', base: 'work', mult: 10, seconds: 8, start: 'idle', routes: work, client: 'raw', env: { BENCH_BACKLOG: '4096' }, floor: true },
  { name: 'flood-4x', label: 'started into a 4x flood of /work', base: 'work', mult: 4, seconds: 8, start: 'flood', routes: work, floor: true },
  { name: 'sync-3x', label: 'synchronous CPU route (10 ms, no await) at 3x', base: 'sync', mult: 3, seconds: 8, start: 'idle', routes: [{ path: SYNC_PATH }] },
  { name: 'random-0.8x', label: '0.8x Poisson /work', base: 'work', mult: 0.8, seconds: 10, start: 'idle', routes: work },
  { name: 'slow-0.7x', label: 'slow downstream (30 ms CPU + 400 ms I/O) at 0.7x', base: 'slow', mult: 0.7, seconds: 10, start: 'idle', routes: [{ path: SLOW_PATH }] },
  { name: 'mixed-3x', label: 'mixed app (50 % /hello, 40 % /work, 10 % sync 10 ms) at 3x', base: 'mix', mult: 3, seconds: 8, start: 'idle', routes: mixRoutes },
  { name: 'logger-4x', label: 'idle -> 4x burst of /work, Fastify logger on', base: 'work', mult: 4, seconds: 8, start: 'idle', routes: work, env: { BENCH_LOGGER: '1' }, floor: true },
  // The same CPU per request as /work (2 ms), all of it after the await (a query, then serialisation):
  // no target; it keeps a rule that costs what a request does in the turn that reads it honest (such a
  // rule, tried on 2026-11-24, saw only the work before the first await). /work's capacity applies.
  { name: 'await-first-4x', label: 'idle -> 4x burst of a route that awaits first (20 ms I/O, then 2 ms CPU)', base: 'work', mult: 4, seconds: 8, start: 'idle', routes: [{ path: '/work?cpu=0&io=20&cpu2=2' }] },
  // The same with the await a query over a socket (downstream.ts): its reply is read in the poll phase,
  // among new requests, as a database driver's is. A timer's await resumes in the timers phase, apart
  // from them. /work's capacity applies (measured with timers).
  { name: 'await-first-4x-db', label: 'idle -> 4x burst of a route that awaits a query first (20 ms over a socket, then 2 ms CPU)', base: 'work', mult: 4, seconds: 8, start: 'idle', routes: [{ path: '/work?cpu=0&io=20&cpu2=2' }], downstream: true },
  { name: 'burst-4x-db', label: 'idle -> 4x burst of /work, its await a query over a socket', base: 'work', mult: 4, seconds: 8, start: 'idle', routes: work, downstream: true }
]

/** The timeline's bucket, ms: BENCH_BUCKET_MS (e.g. 20, to see a cold start's first 0.1 s), else 250. */
const bucketEnv = Number(process.env.BENCH_BUCKET_MS)
const BUCKET_MS = Number.isFinite(bucketEnv) && bucketEnv > 0 ? bucketEnv : 250

export interface Capacities {
  /** /work, requests/s: the SLO-based search of scenarios.ts (or given) */
  work: number
  workMethod: string
  /** the 10 ms synchronous route: closed loop (8 connections, 2 s; null when given) and 1000 / CPU ms */
  syncClosedLoop: number | null
  syncCpuEstimate: number
  /** used: given (--sync-capacity), else the closed loop, else the CPU estimate */
  sync: number
  syncGiven: boolean
  /** /hello, closed loop (50 connections, 2 s; the client may be the bottleneck) */
  hello: number | null
  /** slow route: 1000 / (30 ms + the per-request overhead seen on the sync route), and 1000 / 30 */
  slow: number
  slowCpuEstimate: number
  /** the mix: 1 / sum(share / capacity of the route) */
  mix: number | null
}

export interface HardRun {
  gen: GenResult
  server: ServerInfo
  interference: Interference | undefined
  /** ms from the server's first answer to the first scheduled request */
  idleMs: number
  /** connection attempts the kernel dropped at the full listen queue during the run (see listenDrops) */
  listenDrops?: number
}

export interface HardScenarioResult extends HardScenario {
  /** the capacity the multiple refers to, and the offered rate */
  capacity: number
  rate: number
  seed: number
  results: Record<string, HardRun>
}

export interface HardResults {
  date: string
  lib: string
  machine: { cpus: number, model: string, node: string, platform: string, pinned: boolean }
  sloMs: number
  timeoutMs: number
  admissionOptions: string
  capacities: Capacities
  scenarios: HardScenarioResult[]
  targets: TargetCheck[]
  notes: string[]
  elapsedSeconds: number
}

const IDLE_MS = 2000
const SLO_MS = 1000
const TIMEOUT_MS = 10000

const round1 = (x: number): number => Math.round(x * 10) / 10

/** Closed-loop capacities of the sync route and /hello on one fresh bare server. */
async function measureRouteCapacities (needSync: boolean, needHello: boolean, log: (s: string) => void): Promise<{ sync: number | null, hello: number | null }> {
  if (!needSync && !needHello) return { sync: null, hello: null }
  await waitQuiet(5000)
  const srv = await startServer({ contender: 'bare', series: false })
  try {
    const closed = async (path: string, connections: number): Promise<number> => {
      await runClosedLoop({ port: srv.port, path, connections, seconds: 0.5 })
      return round1((await runClosedLoop({ port: srv.port, path, connections, seconds: 2 })).okPerSec)
    }
    const sync = needSync ? await closed(SYNC_PATH, 8) : null
    const hello = needHello ? await closed('/hello', 50) : null
    log(`  closed loop on bare: ${sync !== null ? `sync route ${sync}/s (1000 / ${SYNC_CPU_MS} ms = ${1000 / SYNC_CPU_MS}/s)` : ''}${hello !== null ? `  /hello ${hello}/s` : ''}`)
    return { sync, hello }
  } finally {
    await srv.stop()
  }
}

export function deriveCapacities (workRps: number, workMethod: string, syncGiven: number | undefined, syncClosedLoop: number | null, hello: number | null): Capacities {
  const syncCpuEstimate = 1000 / SYNC_CPU_MS
  const sync = syncGiven ?? syncClosedLoop ?? syncCpuEstimate
  // what a request costs beyond its own CPU work (Fastify, HTTP, the loop), seen on the sync route
  const overheadMs = Math.max(0, 1000 / sync - SYNC_CPU_MS)
  const caps: Record<string, number | null> = { '/hello': hello, '/work': workRps, [SYNC_PATH]: sync }
  let cost = 0
  let known = true
  const total = mixRoutes.reduce((a, r) => a + (r.weight ?? 1), 0)
  for (const r of mixRoutes) {
    const c = caps[r.path]
    if (c === null || c === undefined || !(c > 0)) known = false
    else cost += (r.weight ?? 1) / total / c
  }
  return {
    work: workRps,
    workMethod,
    syncClosedLoop,
    syncCpuEstimate,
    sync: round1(sync),
    syncGiven: syncGiven !== undefined,
    hello,
    slow: round1(1000 / (SLOW_CPU_MS + overheadMs)),
    slowCpuEstimate: round1(1000 / SLOW_CPU_MS),
    mix: known && cost > 0 ? round1(1 / cost) : null
  }
}

function baseCapacity (caps: Capacities, base: Base): number {
  switch (base) {
    case 'work': return caps.work
    case 'sync': return caps.sync
    case 'slow': return caps.slow
    case 'mix': return caps.mix ?? caps.work
  }
}

/** A fixed seed per scenario: every contender gets the same arrivals. */
function seedOf (name: string): number {
  let h = 2166136261
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 16777619) >>> 0
  return h
}

async function runOne (s: HardScenario, rate: number, seed: number, contender: Contender): Promise<HardRun> {
  await waitQuiet(5000)
  const gen = spawnGenerator({ rate, seconds: s.seconds, routes: s.routes, even: false, seed, timeoutMs: TIMEOUT_MS, sloMs: SLO_MS, bucketMs: BUCKET_MS, client: s.client ?? 'undici' })
  let srv: ServerHandle | undefined
  let db: DownstreamHandle | undefined
  try {
    if (s.downstream === true) db = await startDownstream()
    const env = { ...s.env, ...(db !== undefined ? { BENCH_DOWNSTREAM_PORT: String(db.port) } : {}) }
    const start = async (): Promise<{ srv: ServerHandle, upAt: number }> => {
      const h = await startServer({ contender, env })
      return { srv: h, upAt: performance.now() }
    }
    let upAt: number
    if (s.start === 'flood') {
      await gen.ready
      ;({ srv, upAt } = await start())
    } else {
      // the generator warms itself while the server sits idle
      const [ready, up] = await Promise.allSettled([gen.ready, start()])
      if (up.status === 'fulfilled') srv = up.value.srv
      if (ready.status === 'rejected') throw ready.reason
      if (up.status === 'rejected') throw up.reason
      upAt = up.value.upAt
      await sleep(Math.max(0, upAt + IDLE_MS - performance.now()))
    }
    if (srv === undefined) throw new Error('no server')
    srv.series.length = 0
    const before = cpuSnapshot(srv.pid)
    const drops = listenDrops()
    const idleMs = Math.round(performance.now() - upAt)
    gen.go(srv.port)
    const result = await gen.result
    const intf = interference(before, cpuSnapshot(srv.pid), result.cpuMs)
    const series = srv.series.map(p => ({ ...p, t: Math.round(p.t - result.startEpochMs) / 1000 }))
    const died = srv.pid === undefined || !pidAlive(srv.pid)
    const dropsAfter = listenDrops()
    return {
      gen: result,
      server: serverInfo({ series, died }, 0, s.seconds),
      interference: intf,
      idleMs,
      ...(drops !== undefined && dropsAfter !== undefined ? { listenDrops: dropsAfter - drops } : {})
    }
  } finally {
    gen.stop()
    await srv?.stop()
    db?.stop()
  }
}

function runLine (s: HardScenarioResult, c: string, r: HardRun): string {
  const g = r.gen
  const st = g.stats
  const f = fmtMs
  const warn: string[] = []
  if (g.behind) warn.push(`generator behind: send lag p99 ${f(g.lag.p99)}, ELU ${g.elu}`)
  const i = r.interference
  if (i !== undefined && (i.cpu0Foreign > 0.05 || i.cpu1Foreign > 0.05)) warn.push(`other processes used CPU0 ${pct100(i.cpu0Foreign)}, CPU1 ${pct100(i.cpu1Foreign)}`)
  if (r.server.died) warn.push('server died')
  return `  ${s.name.padEnd(12)} ${c.padEnd(15)} goodput ${pct100(st.goodPerSec / s.capacity).padStart(5)}  2xx p50 ${f(st.okP50)} p99 ${f(st.okP99)}` +
    `  503 ${st.rejected} (p99 ${f(st.rejP99)})  timeouts ${st.timeouts}  errors ${st.errors + st.other}  conns ${g.conns}${r.listenDrops !== undefined ? ` (listen drops ${r.listenDrops})` : ''}` +
    `  gen lag p99 ${f(g.lag.p99)} ELU ${g.elu}${warn.length > 0 ? `  [${warn.join('; ')}]` : ''}`
}

export interface HardOptions {
  log: (line: string) => void
  /** /work capacity already measured (run.ts), or a number given on the command line */
  capacity?: CapacityResult | number
  syncCapacity?: number
  helloCapacity?: number
  only?: Set<string>
  contenders?: Contender[]
  /** overrides every scenario's duration */
  seconds?: number
  /** this process is pinned to CPU 1 (servers run on CPU 0) */
  pinned: boolean
  outDir: string
  partial: boolean
  notes?: string[]
}

/** Runs the selected hard cases, writes hard-<date>[-partial].md|json and prints the summary. */
export async function runHardBench (o: HardOptions): Promise<HardResults> {
  const t0 = performance.now()
  const log = o.log
  const picked = hardScenarios
    .filter(s => o.only === undefined || o.only.has(s.name))
    .map(s => ({ ...s, seconds: o.seconds ?? s.seconds }))
  const contenders = o.contenders ?? ['admission', 'under-pressure', 'bare']
  log(`\nhard cases: ${picked.map(s => s.name).join(', ')}; contenders ${contenders.join(', ')}${o.contenders === undefined ? ' (and refuse-all, the floor, where a scenario has a 503 target)' : ''}; fresh server per run, no warm-up load`)

  const uses = (b: Base): boolean => picked.some(s => s.base === b || (b === 'sync' && (s.base === 'slow' || s.base === 'mix')))
  let workRps: number
  let workMethod: string
  if (typeof o.capacity === 'number') {
    workRps = o.capacity
    workMethod = 'given (--capacity)'
  } else if (!uses('work') && !uses('mix')) {
    workRps = 0
    workMethod = 'not measured (no scenario of this run needs it)'
  } else {
    const cfg: BenchConfig = { quick: false, sloMs: SLO_MS, timeoutMs: TIMEOUT_MS, drainMs: TIMEOUT_MS, log }
    if (o.capacity === undefined) log('measuring capacity of bare Fastify on /work (the search of npm run bench)...')
    const c = o.capacity ?? await measureCapacity(cfg)
    workRps = c.rps
    workMethod = c.method
  }
  const measured = await measureRouteCapacities(uses('sync') && o.syncCapacity === undefined, uses('mix') && o.helloCapacity === undefined, log)
  const caps = deriveCapacities(workRps, workMethod, o.syncCapacity, measured.sync, o.helloCapacity ?? measured.hello)
  log(`capacities: ${capacityLine(caps)}`)

  const notes = [...(o.notes ?? [])]
  const scenarios: HardScenarioResult[] = []
  for (const s of picked) {
    const capacity = baseCapacity(caps, s.base)
    const rate = round1(capacity * s.mult)
    const seed = seedOf(s.name)
    log(`${s.name}: ${s.label}, ${rate}/s Poisson for ${s.seconds} s (${s.mult}x of ${capacity}/s)  [${((performance.now() - t0) / 1000).toFixed(0)} s]`)
    const res: HardScenarioResult = { ...s, capacity, rate, seed, results: {} }
    for (const c of o.contenders ?? (s.floor === true ? [...contenders, 'refuse-all' as const] : contenders)) {
      try {
        const run = await runOne(s, rate, seed, c)
        res.results[c] = run
        log(runLine(res, c, run))
      } catch (err) {
        // one broken run (a server that does not start, a generator that dies) must not lose the others
        const msg = `${s.name} ${c}: run failed: ${String(err).slice(0, 500)}`
        notes.push(msg)
        log(`  ${msg}`)
      }
    }
    scenarios.push(res)
  }

  const results: HardResults = {
    date: isoDate(),
    lib: gitState(),
    // os.cpus(), not availableParallelism(): this process is pinned to one CPU by now
    machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model ?? 'unknown', node: process.version, platform: `${os.platform()} ${os.release()}`, pinned: o.pinned },
    sloMs: SLO_MS,
    timeoutMs: TIMEOUT_MS,
    admissionOptions: process.env.BENCH_ADMISSION_OPTIONS ?? '{}',
    capacities: caps,
    scenarios,
    targets: [],
    notes,
    elapsedSeconds: 0
  }
  results.targets = checkHardTargets(results)
  results.elapsedSeconds = Math.round((performance.now() - t0) / 100) / 10
  mkdirSync(o.outDir, { recursive: true })
  const base = `hard-${results.date}${o.partial ? '-partial' : ''}`
  writeFileSync(`${o.outDir}/${base}.json`, JSON.stringify(results, null, 1))
  writeFileSync(`${o.outDir}/${base}.md`, markdownReport(results))
  printHard(results, log)
  log(`\nhard-case report: ${o.outDir}/${base}.md, data: ${base}.json (${results.elapsedSeconds} s)`)
  return results
}

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: {
      only: { type: 'string' },
      contenders: { type: 'string' },
      seconds: { type: 'string' },
      capacity: { type: 'string' },
      'sync-capacity': { type: 'string' },
      'hello-capacity': { type: 'string' },
      out: { type: 'string' },
      // seconds the run may spend waiting for other processes to leave CPUs 0 and 1
      'wait-quiet': { type: 'string', default: '30' }
    }
  })
  const num = (v: string | undefined, name: string): number | undefined => {
    if (v === undefined) return undefined
    const n = Number(v)
    if (!(Number.isFinite(n) && n > 0)) throw new Error(`--${name} must be a positive number`)
    return n
  }
  const only = values.only === undefined ? undefined : new Set(values.only.split(',').map(s => s.trim()))
  const unknown = [...(only ?? [])].filter(n => !hardScenarios.some(s => s.name === n))
  if (unknown.length > 0) throw new Error(`unknown scenario(s) ${unknown.join(', ')}; known: ${hardScenarios.map(s => s.name).join(', ')}`)
  const contenders = values.contenders?.split(',').map(s => s.trim())
  const bad = (contenders ?? []).filter(c => !(allContenders as readonly string[]).includes(c))
  if (bad.length > 0) throw new Error(`unknown contender(s) ${bad.join(', ')}`)

  installExitHandlers()
  const quiet = Number(values['wait-quiet'])
  setQuietBudget(Number.isFinite(quiet) && quiet > 0 ? quiet * 1000 : 0)
  const log = (line: string): void => console.log(line)
  const notes: string[] = []
  const pinned = os.availableParallelism() >= 2 && hasTaskset() && pinSelf(1)
  if (!pinned) notes.push('not pinned (needs taskset and >= 2 CPUs): server and load generator share CPUs')
  const bundle = await prepareServerBundle()
  log(`fastify-admission hard cases; servers ${bundle !== undefined ? 'bundled with esbuild' : 'through tsx'}; lib/ at ${gitState()}; ${pinned ? 'server on CPU 0, generator on CPU 1' : 'unpinned'}`)
  const busy = await foreignLoad(300)
  if (busy !== undefined && (busy[0] > 0.1 || busy[1] > 0.1)) {
    const msg = `other processes are using the benchmark CPUs (CPU0 ${pct100(busy[0])}, CPU1 ${pct100(busy[1])}): expect noisy figures`
    notes.push(msg)
    log(`warning: ${msg}`)
  }
  const capacity = num(values.capacity, 'capacity')
  const syncCapacity = num(values['sync-capacity'], 'sync-capacity')
  const helloCapacity = num(values['hello-capacity'], 'hello-capacity')
  const seconds = num(values.seconds, 'seconds')
  await runHardBench({
    log,
    ...(capacity !== undefined ? { capacity } : {}),
    ...(syncCapacity !== undefined ? { syncCapacity } : {}),
    ...(helloCapacity !== undefined ? { helloCapacity } : {}),
    ...(only !== undefined ? { only } : {}),
    ...(contenders !== undefined ? { contenders: contenders as Contender[] } : {}),
    ...(seconds !== undefined ? { seconds } : {}),
    pinned,
    outDir: values.out ?? fileURLToPath(new URL('./results/', import.meta.url)),
    partial: [values.only, values.contenders, values.seconds, values.capacity, values['sync-capacity'], values['hello-capacity']].some(v => v !== undefined),
    notes
  })
  killAllChildren()
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    killAllChildren()
    console.error(err)
    process.exit(1)
  })
}
