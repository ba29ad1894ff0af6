// Process management for the benchmark: CPU pinning, starting a pinned server
// under test, collecting its time series, and making sure no child outlives
// the runner (normal exit, error, SIGINT/SIGTERM; a SIGKILLed runner closes the
// children's stdin pipe and they exit on their own).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import http from 'node:http'
import { performance } from 'node:perf_hooks'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Contender, SeriesPoint } from './server.js'

const serverScript = fileURLToPath(new URL('./server.ts', import.meta.url))
const tsxImport = import.meta.resolve('tsx')
let serverBundle: string | undefined

/**
 * Bundles `entry` with lib/ into one ESM file (dependencies stay external) with esbuild, which tsx
 * already brings along: bench/results/tmp/<name>-<pid>.mjs, removed when this process exits (and by a
 * later run, if this one was killed with SIGKILL). A bundle runs without the tsx loader, which puts a
 * Node 20 process in the slow state of process.nextTick (lib/warm-ticks.ts).
 */
export async function bundleScript (entry: string, name: string): Promise<string> {
  const esbuild = await import('esbuild')
  const dir = fileURLToPath(new URL('./results/tmp/', import.meta.url))
  mkdirSync(dir, { recursive: true })
  const left = new RegExp(`^${name}-(\\d+)\\.mjs$`)
  for (const f of readdirSync(dir)) {
    const m = left.exec(f)
    if (m !== null && !pidAlive(Number(m[1]))) rmSync(dir + f, { force: true })
  }
  const out = `${dir}${name}-${process.pid}.mjs`
  await esbuild.build({
    entryPoints: [entry],
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    packages: 'external',
    outfile: out,
    logLevel: 'silent'
  })
  process.on('exit', () => { rmSync(out, { force: true }) })
  return out
}

/**
 * Bundles bench/server.ts (bundleScript). Servers then start ~0.25 s faster than through tsx, and
 * every server of the run uses the same snapshot of lib/, even if it is edited meanwhile. Falls back
 * to running the TypeScript through tsx when esbuild is not available.
 */
export async function prepareServerBundle (): Promise<string | undefined> {
  try {
    serverBundle = await bundleScript(serverScript, 'server')
  } catch {
    serverBundle = undefined
  }
  return serverBundle
}

const downstreamScript = fileURLToPath(new URL('./downstream.ts', import.meta.url))

/** The database stand-in of downstream.ts: its port, and a stop that kills it. */
export interface DownstreamHandle { port: number, stop: () => void }

/** Starts downstream.ts's stand-in pinned to `cpu` (the load generator's core by default); resolves once it listens. */
export async function startDownstream (cpu = 1): Promise<DownstreamHandle> {
  const args = ['--import', tsxImport, downstreamScript]
  const [cmd, argv] = hasTaskset() ? ['taskset', ['-c', String(cpu), process.execPath, ...args]] : [process.execPath, args]
  const child = spawn(cmd, argv as string[], { stdio: ['pipe', 'pipe', 'inherit'] })
  track(child)
  const stop = (): void => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') }
  const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream })
  const port = await new Promise<number>((resolve, reject) => {
    const limit = setTimeout(() => { stop(); reject(new Error('the downstream stand-in did not start in 10 s')) }, 10000)
    child.once('exit', code => { clearTimeout(limit); reject(new Error(`the downstream stand-in exited (${String(code)})`)) })
    lines.once('line', line => { clearTimeout(limit); resolve((JSON.parse(line) as { port: number }).port) })
  })
  return { port, stop }
}

let tasksetChecked: boolean | undefined
export function hasTaskset (): boolean {
  if (tasksetChecked === undefined) {
    const r = spawnSync('taskset', ['--version'], { stdio: 'ignore' })
    tasksetChecked = r.status === 0
  }
  return tasksetChecked
}

/** Pins every thread of this process to `cpu` (threads created later inherit it). */
export function pinSelf (cpu: number): boolean {
  if (!hasTaskset()) return false
  const r = spawnSync('taskset', ['-a', '-p', '-c', String(cpu), String(process.pid)], { stdio: 'ignore' })
  return r.status === 0
}

export function pidAlive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

const children = new Set<ChildProcess>()

export function killAllChildren (): void {
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) {
      try { c.kill('SIGKILL') } catch {}
    }
  }
  children.clear()
}

let handlersInstalled = false
/** Kill every child on any way out of the runner. */
export function installExitHandlers (): void {
  if (handlersInstalled) return
  handlersInstalled = true
  process.on('exit', killAllChildren)
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      killAllChildren()
      process.stderr.write(`\n${sig}: benchmark interrupted, servers killed\n`)
      process.exit(130)
    })
  }
  process.on('uncaughtException', (err) => {
    killAllChildren()
    console.error(err)
    process.exit(1)
  })
}

/** Track a child so it is killed with the runner. */
export function track (child: ChildProcess): void {
  children.add(child)
  child.once('exit', () => children.delete(child))
}

export interface StallEvent { t: number, ms: number }

export interface ServerHandle {
  contender: Contender
  port: number
  pid: number | undefined
  /** time series points received so far (epoch ms timestamps) */
  series: SeriesPoint[]
  stalls: StallEvent[]
  stderr: string
  stop: () => Promise<void>
}

export interface StartOptions {
  contender: Contender
  series?: boolean
  stallEveryMs?: number
  stallMs?: number
  /** CPU to pin the server to (default 0) */
  cpu?: number
  /** extra environment */
  env?: Record<string, string>
  /** A command and its arguments that run node (valgrind, say), and node's own flags. */
  wrapper?: string[]
  nodeArgs?: string[]
  /** How long the server may take to answer its first request (default 15 s). */
  startTimeoutMs?: number
}

let nextPort = 20000 + (process.pid % 500) * 20

async function answers (port: number, path = '/hello'): Promise<boolean> {
  return await new Promise<boolean>((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path, agent: false, timeout: 500 }, (res) => {
      res.resume()
      // any answer: the refuse-all contender answers 503 to everything
      res.on('end', () => resolve(res.statusCode !== undefined && res.statusCode > 0))
    })
    req.on('timeout', () => req.destroy())
    req.on('error', () => resolve(false))
  })
}

/** Starts a server under test pinned to core 0 and waits until it answers. */
export async function startServer (opts: StartOptions): Promise<ServerHandle> {
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = nextPort++
    if (nextPort > 32000) nextPort = 20000
    try {
      return await startOn(port, opts)
    } catch (err) {
      if (!String(err).includes('EADDRINUSE')) throw err
    }
  }
  throw new Error('could not find a free port for the server under test')
}

async function startOn (port: number, opts: StartOptions): Promise<ServerHandle> {
  const args = [
    ...(opts.nodeArgs ?? []),
    ...(serverBundle !== undefined ? [serverBundle] : ['--import', tsxImport, serverScript]),
    '--contender', opts.contender,
    '--port', String(port),
    '--series', opts.series === false ? 'off' : '-',
    '--exit-with-stdin'
  ]
  if (opts.stallEveryMs !== undefined && opts.stallMs !== undefined) {
    args.push('--stall-every-ms', String(opts.stallEveryMs), '--stall-ms', String(opts.stallMs))
  }
  const cpu = opts.cpu ?? 0
  const node = [...(opts.wrapper ?? []), process.execPath, ...args]
  const [cmd, argv] = hasTaskset()
    ? ['taskset', ['-c', String(cpu), ...node]]
    : [node[0] as string, node.slice(1)]
  const child = spawn(cmd, argv as string[], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, ...opts.env, NODE_ENV: 'production' }
  })
  track(child)
  const handle: ServerHandle = {
    contender: opts.contender,
    port,
    pid: child.pid,
    series: [],
    stalls: [],
    stderr: '',
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
      child.kill('SIGKILL')
      await exited
    }
  }
  child.stderr?.setEncoding('utf8')
  child.stderr?.on('data', (d: string) => { if (handle.stderr.length < 20000) handle.stderr += d })
  if (child.stdout !== null) {
    const rl = createInterface({ input: child.stdout })
    rl.on('line', (line) => {
      if (line.length === 0 || line[0] !== '{') return
      try {
        const obj = JSON.parse(line) as SeriesPoint & { stall?: number, ms?: number }
        if (typeof obj.stall === 'number') handle.stalls.push({ t: obj.stall, ms: obj.ms ?? 0 })
        else handle.series.push(obj)
      } catch {}
    })
  }
  const startMs = opts.startTimeoutMs ?? 15000
  const deadline = Date.now() + startMs
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`server ${opts.contender} exited during start: ${handle.stderr.slice(0, 2000)}`)
    }
    if (await answers(port)) return handle
    await sleep(40)
  }
  await handle.stop()
  throw new Error(`server ${opts.contender} did not answer within ${startMs / 1000} s: ${handle.stderr.slice(0, 2000)}`)
}

/** Runs a command (pinned like this process) and returns its stdout. Bounded by timeoutMs. */
export async function runCommand (cmd: string, args: string[], timeoutMs: number): Promise<{ code: number | null, stdout: string }> {
  return await new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'ignore'] })
    track(child)
    let stdout = ''
    child.stdout?.setEncoding('utf8')
    child.stdout?.on('data', (d: string) => { stdout += d })
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    child.on('error', () => { clearTimeout(timer); resolve({ code: -1, stdout }) })
    child.on('exit', (code) => { clearTimeout(timer); resolve({ code, stdout }) })
  })
}

export function commandExists (cmd: string): boolean {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' })
  return r.status === 0
}

export interface CpuSnapshot {
  at: number
  /** per CPU: [busy (user+nice+system), steal] in clock ticks */
  cpus: Array<[number, number]>
  /** server process CPU ticks (utime+stime), or NaN */
  server: number
  /** this process' CPU time in µs */
  self: number
}

const ticksPerSecond = 100 // USER_HZ on Linux

/** Reads /proc/stat and /proc/<pid>/stat to tell how much *other* work shared our CPUs (Linux only). */
export function cpuSnapshot (serverPid: number | undefined): CpuSnapshot | undefined {
  try {
    const stat = readFileSync('/proc/stat', 'utf8')
    const cpus: Array<[number, number]> = []
    for (const line of stat.split('\n')) {
      const m = /^cpu(\d+)\s+(.*)$/.exec(line)
      if (m === null) continue
      const f = (m[2] as string).split(/\s+/).map(Number)
      cpus[Number(m[1])] = [(f[0] ?? 0) + (f[1] ?? 0) + (f[2] ?? 0), f[7] ?? 0]
    }
    let server = Number.NaN
    if (serverPid !== undefined) {
      const s = readFileSync(`/proc/${serverPid}/stat`, 'utf8')
      const rest = s.slice(s.lastIndexOf(')') + 2).split(' ')
      server = Number(rest[11]) + Number(rest[12])
    }
    const u = process.cpuUsage()
    return { at: performance.now(), cpus, server, self: u.user + u.system }
  } catch {
    return undefined
  }
}

/**
 * Connection attempts the kernel has dropped at a full listen queue (TcpExt ListenDrops in
 * /proc/net/netstat), or undefined where that file is missing. The count covers the whole network
 * namespace: the benchmark runs alone. A client retries a dropped SYN after 1 s, so a latency tail
 * above a second in a run with drops comes from them.
 */
export function listenDrops (): number | undefined {
  try {
    const lines = readFileSync('/proc/net/netstat', 'utf8').split('\n')
    const at = lines.findIndex(line => line.startsWith('TcpExt:'))
    const names = lines[at]?.split(/\s+/) ?? []
    const values = lines[at + 1]?.split(/\s+/) ?? []
    const i = names.indexOf('ListenDrops')
    const n = Number(values[i])
    return at >= 0 && i > 0 && Number.isFinite(n) ? n : undefined
  } catch {
    return undefined
  }
}

export interface Interference {
  /** share of CPU 0 used by processes other than the server under test */
  cpu0Foreign: number
  /** share of CPU 1 used by processes other than this runner (and its children) */
  cpu1Foreign: number
  /** share of time our CPUs were stolen by the hypervisor */
  steal: number
}

export function interference (a: CpuSnapshot | undefined, b: CpuSnapshot | undefined, extraSelfMs = 0): Interference | undefined {
  if (a === undefined || b === undefined) return undefined
  const wall = (b.at - a.at) / 1000
  if (!(wall > 0.2)) return undefined
  const d = (i: number, k: 0 | 1): number => ((b.cpus[i]?.[k] ?? 0) - (a.cpus[i]?.[k] ?? 0)) / ticksPerSecond
  const serverS = (b.server - a.server) / ticksPerSecond
  const selfS = (b.self - a.self) / 1e6 + extraSelfMs / 1000
  const r = (x: number): number => Math.round(Math.max(0, x) * 1000) / 1000
  return {
    cpu0Foreign: r((d(0, 0) - (Number.isFinite(serverS) ? serverS : 0)) / wall),
    cpu1Foreign: r((d(1, 0) - selfS) / wall),
    steal: r((d(0, 1) + d(1, 1)) / (2 * wall))
  }
}

/** Busy share of CPU 0 and CPU 1 not used by this process, over `windowMs` (no server running). */
export async function foreignLoad (windowMs: number): Promise<[number, number] | undefined> {
  const a = cpuSnapshot(undefined)
  await new Promise(resolve => setTimeout(resolve, windowMs))
  const b = cpuSnapshot(undefined)
  if (a === undefined || b === undefined) return undefined
  const i = interference(a, b)
  return i === undefined ? undefined : [i.cpu0Foreign, i.cpu1Foreign]
}

let quietBudgetMs = 0
/** Allow up to `totalMs` of waiting for other processes to leave our CPUs, over the whole run. */
export function setQuietBudget (totalMs: number): void { quietBudgetMs = totalMs }

/**
 * Before a measurement: if other processes keep CPU 0 or 1 busy (> 10 %), wait for them to go
 * quiet, at most `maxMs` and within the run's remaining budget. Returns the ms waited.
 */
export async function waitQuiet (maxMs: number, ignoreBudget = false): Promise<number> {
  if (quietBudgetMs <= 0 && !ignoreBudget) return 0
  const start = performance.now()
  const limit = ignoreBudget ? maxMs : Math.min(maxMs, quietBudgetMs)
  while (performance.now() - start < limit) {
    const f = await foreignLoad(300)
    if (f === undefined || (f[0] < 0.1 && f[1] < 0.1)) break
  }
  const waited = performance.now() - start
  if (!ignoreBudget) quietBudgetMs -= waited
  return waited
}
