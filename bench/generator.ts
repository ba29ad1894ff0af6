// Runner side of the hard cases' load generator (undici-load.ts): what it is asked (LoadSpec), what it
// answers (GenResult), and a handle on the process: pinned to CPU 1, killed with the runner, bounded in time.
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import type { Route } from './open-loop.js'
import { hasTaskset, track } from './proc.js'
import type { LagStats, WindowStats } from './stats.js'

export interface LoadSpec {
  port: number
  /** arrivals per second */
  rate: number
  seconds: number
  routes: Route[]
  /** evenly spaced arrivals (and a smooth round-robin route mix) instead of Poisson */
  even: boolean
  seed: number
  timeoutMs: number
  sloMs: number
  /** timeline bucket, ms */
  bucketMs: number
  /**
   * undici (`request` on one Agent, the client of the hard cases) or raw-http.ts's pool, also opening
   * connections on demand without a cap: undici cannot offer more than about 2000/s on one core here
   * (see README "Hard cases")
   */
  client: 'undici' | 'raw'
}

/** The generator's warm-up: requests, duration, and the slowest request of its last round (warm by then), ms. */
export interface WarmInfo { requests: number, ms: number, lastRoundMax: number }

/** One bucket of the timeline, by scheduled time; latencies in ms. */
export interface TimelineRow { t: number, ok: number, okMax: number | null, rejected: number, rejMax: number | null, failed: number }

export interface GenResult {
  spec: LoadSpec
  warm: WarmInfo
  /** epoch ms of t = 0 (the first scheduled send) */
  startEpochMs: number
  arrivals: number
  /** the whole schedule; goodPerSec = 2xx within the SLO per second */
  stats: WindowStats
  byRoute?: Array<{ name: string, path: string, stats: WindowStats }>
  timeline: TimelineRow[]
  /** actual `request()` call minus scheduled time */
  lag: LagStats
  /**
   * the generator could not keep its schedule (send lag p99 > 10 ms; an idle loop's timers alone are a few
   * ms late here) or its event loop was saturated (ELU > 0.9: answers are read late, so latencies include
   * the generator's own queue)
   */
  behind: boolean
  /** connections opened / failed to open */
  conns: number
  connErrors: number
  /** failed requests by error code (timeouts not included) */
  errorCodes: Record<string, number>
  maxOutstanding: number
  /** the generator's own event loop over the schedule: utilization and delay (ms) */
  elu: number
  delayP99: number
  delayMax: number
  /** generator CPU time from the start of the load to the result, ms */
  cpuMs: number
  wallMs: number
}

function specArgs (spec: Omit<LoadSpec, 'port'>): string[] {
  return [
    '--rate', String(spec.rate), '--seconds', String(spec.seconds),
    '--routes', JSON.stringify(spec.routes), '--seed', String(spec.seed), '--timeout', String(spec.timeoutMs),
    '--slo', String(spec.sloMs), '--bucket', String(spec.bucketMs), '--client', spec.client, ...(spec.even ? ['--even'] : [])
  ]
}

export interface GeneratorHandle {
  /** resolves after the generator's warm-up */
  ready: Promise<WarmInfo>
  /** starts the load against 127.0.0.1:port (after `ready`) */
  go: (port: number) => void
  result: Promise<GenResult>
  stop: () => void
}

const script = fileURLToPath(new URL('./undici-load.ts', import.meta.url))
const tsxImport = import.meta.resolve('tsx')

/** Starts a generator process pinned to `cpu` (default 1); it warms itself and waits for `go(port)`. */
export function spawnGenerator (spec: Omit<LoadSpec, 'port'>, cpu = 1): GeneratorHandle {
  const args = ['--import', tsxImport, script, ...specArgs(spec), '--wait-go']
  const [cmd, argv] = hasTaskset() ? ['taskset', ['-c', String(cpu), process.execPath, ...args]] : [process.execPath, args]
  const child = spawn(cmd, argv as string[], { stdio: ['pipe', 'pipe', 'pipe'] })
  track(child)
  let stderr = ''
  child.stderr?.setEncoding('utf8')
  child.stderr?.on('data', (d: string) => { if (stderr.length < 4000) stderr += d })
  const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream })
  const exited = new Promise<never>((_resolve, reject) => {
    child.once('close', (code, signal) => reject(new Error(`load generator exited (${signal ?? code}) ${stderr.slice(0, 2000)}`)))
  })
  const ready = Promise.race([exited, new Promise<WarmInfo>((resolve) => {
    lines.on('line', (line) => {
      if (line.startsWith('{"ready"')) resolve((JSON.parse(line) as { ready: WarmInfo }).ready)
    })
  })])
  const result = Promise.race([exited, new Promise<GenResult>((resolve) => {
    lines.on('line', (line) => {
      if (line.startsWith('{"result"')) resolve((JSON.parse(line) as { result: GenResult }).result)
    })
  })])
  // bounded: warm-up, schedule, timeout and some slack
  const limit = setTimeout(() => child.kill('SIGKILL'), 30000 + spec.seconds * 1000 + spec.timeoutMs)
  child.once('exit', () => clearTimeout(limit))
  ready.catch(() => {})
  result.catch(() => {})
  return {
    ready,
    result,
    go: (port) => { child.stdin?.write(`go ${port}\n`) },
    stop: () => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') }
  }
}
