// CPU cost of a refusal with Fastify's request logging, measured as bench/hotpath.ts measures: server CPU
// time per request (process.cpuUsage) with the server pinned to CPU 0 and wrk on CPU 1, one fresh process
// per variant and round, the order reversed every round. The servers run from an esbuild bundle of this
// file with process.nextTick warmed (through tsx, or without the warm-up, a Node 20 process may run
// nextTick at its slow speed for its whole life: lib/warm-ticks.ts).
//
//   tsx bench/logging.ts [--seconds 3] [--rounds 3] [--capacity 450] [--only a,b,c,d,e]
//
// The plugin is made to refuse every request: limit fixed at 1, its one permit held by a /hold request
// (sent by the server process to itself) that never ends, and a window with ELU 1 fed to the controller
// so that the limit is enforced. Bare Fastify answering a hello-world 200 is the reference (the cheapest
// success). Log lines per request come from one extra short run per logging variant, logging to a file.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import http from 'node:http'
import os from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { createInterface } from 'node:readline'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import type { FastifyRequest } from 'fastify'
import { warmNextTick } from '../lib/warm-ticks.js'
import { bundleScript, commandExists, hasTaskset, installExitHandlers, killAllChildren, pinSelf, runCommand, track } from './proc.js'
import { median } from './stats.js'

interface Variant {
  id: string
  label: string
  /** the plugin refuses every request to /work (else: bare Fastify, 200 on /hello) */
  refuse: boolean
  logger: boolean
  /** Fastify's request logging skipped by skipRequestLogWhileShedding (from lib/index.ts), through a LogController */
  skip: boolean
}

const variants: Variant[] = [
  { id: 'a', label: 'refusal, logger: false', refuse: true, logger: false, skip: false },
  { id: 'b', label: 'refusal, logger: true', refuse: true, logger: true, skip: false },
  { id: 'c', label: 'refusal, logger: true + skipRequestLogWhileShedding', refuse: true, logger: true, skip: true },
  { id: 'd', label: 'bare Fastify hello 200, logger: false', refuse: false, logger: false, skip: false },
  { id: 'e', label: 'bare Fastify hello 200, logger: true', refuse: false, logger: true, skip: false }
]

const MARK = 'logging-bench mark'

// ---------------------------------------------------------------------------
// server process: LOGGING_VARIANT=<id> [LOGGING_FILE=path]; prints its port (or "unavailable"), then on
// every byte on stdin its CPU time in µs; exits when stdin closes.

async function serve (v: Variant, logFile: string | undefined): Promise<void> {
  warmNextTick()
  const { default: Fastify, LogController } = await import('fastify')
  const lib = v.refuse ? await import('../lib/index.js') : undefined
  let disableRequestLogging: ((request: FastifyRequest) => boolean) | undefined
  if (v.skip) {
    const skip = (lib as unknown as Record<string, unknown>).skipRequestLogWhileShedding
    if (typeof skip !== 'function') {
      process.stdout.write('unavailable\n')
      process.exit(0)
    }
    disableRequestLogging = skip as (request: FastifyRequest) => boolean
  }
  const app = Fastify({
    // Fastify's default request logging (pino, info), into a pino destination opened on /dev/null
    logger: v.logger ? { level: 'info', file: logFile ?? '/dev/null' } : false,
    ...(disableRequestLogging !== undefined ? { logController: new LogController({ disableRequestLogging }) } : {})
  })
  let enforce = (): void => {}
  if (lib !== undefined) {
    const { Registry } = await import('prom-client')
    await app.register(lib.default, { registry: new Registry(), startupGrace: 0, minLimit: 1, maxLimit: 1, initialLimit: 1, sampleInterval: 10000, metricsPath: false })
    app.get('/hold', () => new Promise(() => {}))
    app.get('/work', async () => ({ ok: true }))
  } else {
    app.get('/hello', async () => ({ hello: 'world' }))
  }
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  const port = typeof address === 'object' && address !== null ? address.port : 0
  if (lib !== undefined) {
    // take the only permit over a real socket, and keep it
    http.get({ host: '127.0.0.1', port, path: '/hold', agent: false }).on('error', () => {})
    const controller = app[lib.kAdmissionController]
    for (let waited = 0; controller.inflight < 1; waited += 10) {
      if (waited > 5000) throw new Error('the /hold request never took its permit')
      await sleep(10)
    }
    // A saturated window: the limit is enforced. Fed again before each measurement: keeps it enforced if
    // the sampler ran meanwhile and, the warm-up having been refused, marks the controller as shedding
    // (what skipRequestLogWhileShedding reads; in production the next sampling window does that).
    enforce = () => { controller.onWindow({ durationMs: 100, elu: 1, delayP99Ms: 5 }, performance.now()) }
    enforce()
  }
  process.stdout.write(`${port}\n`)
  const startCpu = process.cpuUsage()
  process.stdin.on('data', () => {
    enforce()
    if (logFile !== undefined) app.log.info(MARK)
    const cpu = process.cpuUsage(startCpu)
    process.stdout.write(`${cpu.user + cpu.system}\n`)
  })
  process.stdin.on('close', () => process.exit(0))
  process.stdin.resume()
}

// ---------------------------------------------------------------------------
// runner

const script = fileURLToPath(import.meta.url)
/** The servers' bundle (main() builds it). */
let bundle = script
const warnings = new Set<string>()

interface Server {
  port: number
  /** the server's CPU time since start, µs */
  cpu: () => Promise<number>
  stop: () => Promise<void>
}

async function startServer (v: Variant, logFile?: string): Promise<Server | undefined> {
  const args = [process.execPath, bundle]
  const [cmd, argv] = hasTaskset() ? ['taskset', ['-c', '0', ...args]] : [process.execPath, args.slice(1)]
  const child = spawn(cmd as string, argv as string[], {
    env: { ...process.env, NODE_ENV: 'production', LOGGING_VARIANT: v.id, ...(logFile !== undefined ? { LOGGING_FILE: logFile } : {}) },
    stdio: ['pipe', 'pipe', 'pipe']
  })
  track(child)
  let stderr = ''
  child.stderr.setEncoding('utf8')
  child.stderr.on('data', (d: string) => { if (stderr.length < 20000) stderr += d })
  const exited = once(child, 'exit')
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.stdin.end()
    await exited
    for (const line of stderr.split('\n')) if (/Warning|Deprecation/.test(line)) warnings.add(line.replace(/^\(node:\d+\) /, ''))
  }
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]()
  const first = await lines.next()
  if (first.done === true || first.value === 'unavailable') {
    await stop()
    if (first.done === true) throw new Error(`server (${v.label}) exited during start:\n${stderr.slice(0, 3000)}`)
    return undefined
  }
  return {
    port: Number(first.value),
    cpu: async () => {
      child.stdin.write('x')
      const r = await lines.next()
      if (r.done === true) throw new Error(`server (${v.label}) died:\n${stderr.slice(0, 3000)}`)
      return Number(r.value)
    },
    stop
  }
}

interface WrkResult { requests: number, non2xx: number }

async function wrk (port: number, path: string, seconds: number): Promise<WrkResult> {
  const r = await runCommand('wrk', ['-t1', '-c50', `-d${seconds}s`, `http://127.0.0.1:${port}${path}`], (seconds + 10) * 1000)
  return {
    requests: Number(/(\d+) requests in/.exec(r.stdout)?.[1] ?? NaN),
    non2xx: Number(/Non-2xx or 3xx responses:\s*(\d+)/.exec(r.stdout)?.[1] ?? 0)
  }
}

/** One measurement: a fresh server, 1 s of wrk to warm it up, then `seconds` measured. */
async function measureOnce (v: Variant, seconds: number, logFile?: string): Promise<{ us: number, non2xxShare: number, requests: number } | undefined> {
  const srv = await startServer(v, logFile)
  if (srv === undefined) return undefined
  try {
    const path = v.refuse ? '/work' : '/hello'
    await wrk(srv.port, path, 1)
    const before = await srv.cpu()
    const w = await wrk(srv.port, path, seconds)
    const after = await srv.cpu()
    return { us: (after - before) / w.requests, non2xxShare: w.non2xx / w.requests, requests: w.requests }
  } finally {
    await srv.stop() // pino flushes its destination on exit
  }
}

/** Log lines written per request: one short run logging to a file, lines between the two marks. */
async function linesPerRequest (v: Variant, dir: string): Promise<number | undefined> {
  const file = join(dir, `${v.id}.log`)
  const r = await measureOnce(v, 1, file)
  if (r === undefined) return undefined
  const lines = readFileSync(file, 'utf8').split('\n')
  const marks = lines.flatMap((l, i) => l.includes(`"msg":"${MARK}"`) ? [i] : [])
  if (marks.length !== 2) throw new Error(`expected 2 marks in ${file}, found ${marks.length}`)
  return ((marks[1] as number) - (marks[0] as number) - 1) / r.requests
}

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string', default: '3' },
      rounds: { type: 'string', default: '3' },
      capacity: { type: 'string', default: '450' },
      only: { type: 'string' }
    }
  })
  const only = values.only?.split(',').map(x => x.trim())
  const chosen = only === undefined ? variants : variants.filter(v => only.includes(v.id))
  const seconds = Number(values.seconds)
  const rounds = Number(values.rounds)
  const C = Number(values.capacity)
  if (!(seconds >= 1) || !(rounds >= 1) || !(C > 0)) throw new Error('--seconds ≥ 1, --rounds ≥ 1 and --capacity > 0 please')
  if (!commandExists('wrk')) throw new Error('wrk is missing (apt-get install wrk)')
  installExitHandlers()
  bundle = await bundleScript(script, 'logging')
  const pinned = os.availableParallelism() >= 2 && hasTaskset() && pinSelf(1)
  console.log(`server CPU per request, wrk -t1 -c50 ${seconds} s × ${rounds} rounds; ${pinned ? 'server on CPU 0, wrk on CPU 1' : 'NOT pinned'}`)

  const us = new Map<string, number[]>()
  const non2xx = new Map<string, number[]>()
  const unavailable = new Set<string>()
  for (let round = 0; round < rounds; round++) {
    for (const v of round % 2 === 0 ? chosen : [...chosen].reverse()) {
      if (unavailable.has(v.id)) continue
      const r = await measureOnce(v, seconds)
      if (r === undefined) {
        unavailable.add(v.id)
        continue
      }
      us.set(v.id, [...(us.get(v.id) ?? []), r.us])
      non2xx.set(v.id, [...(non2xx.get(v.id) ?? []), r.non2xxShare])
    }
  }
  const dir = mkdtempSync(join(os.tmpdir(), 'logging-bench-'))
  const lines = new Map<string, number>()
  try {
    for (const v of chosen) {
      if (!v.logger || unavailable.has(v.id)) continue
      const n = await linesPerRequest(v, dir)
      if (n !== undefined) lines.set(v.id, n)
    }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }

  console.log(`\n${'variant'.padEnd(58)}${'µs CPU/request (rounds)'.padEnd(28)}${'median'.padStart(8)}${'non-2xx'.padStart(9)}${'log lines/req'.padStart(15)}`)
  for (const v of chosen) {
    const name = `(${v.id}) ${v.label}`
    if (unavailable.has(v.id)) {
      console.log(`${name.padEnd(58)}not available (lib/index.ts does not export skipRequestLogWhileShedding)`)
      continue
    }
    const list = us.get(v.id) ?? []
    const share = median(non2xx.get(v.id) ?? [])
    const lpr = v.logger ? (lines.get(v.id)?.toFixed(2) ?? '–') : '0'
    console.log(`${name.padEnd(58)}${list.map(x => x.toFixed(1)).join(' / ').padEnd(28)}${median(list).toFixed(1).padStart(8)}${`${(share * 100).toFixed(1)} %`.padStart(9)}${lpr.padStart(15)}`)
    if (v.refuse && !(share > 0.99)) console.log(`  WARNING: only ${(share * 100).toFixed(1)} % of the requests were refused: this is not the cost of a refusal`)
    if (!v.refuse && share > 0.01) console.log(`  WARNING: ${(share * 100).toFixed(1)} % of the hello-world requests failed`)
  }
  const refusals = 9 * C
  console.log(`\nat 10x capacity (C = ${C} req/s): ${refusals} refusals/s take`)
  for (const v of chosen) {
    if (!v.refuse || unavailable.has(v.id)) continue
    console.log(`  (${v.id}) ${v.label.padEnd(52)} ${(refusals * median(us.get(v.id) ?? []) / 1e4).toFixed(1)} % of one core`)
  }
  for (const w of warnings) console.log(`server: ${w}`)
  killAllChildren()
}

const variantId = process.env.LOGGING_VARIANT
if (variantId !== undefined) {
  const v = variants.find(x => x.id === variantId)
  if (v === undefined) throw new Error(`unknown LOGGING_VARIANT ${variantId}`)
  await serve(v, process.env.LOGGING_FILE)
} else {
  await main().catch((err: unknown) => {
    killAllChildren()
    console.error(err)
    process.exit(1)
  })
}
