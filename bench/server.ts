// Server under test: one contender per process.
//
//   node --import tsx bench/server.ts --contender bare|under-pressure|static-cap|admission|refuse-all|empty-hook|clock-hook|permit-floor --port N
//        [--series FILE|-|off] [--stall-every-ms N --stall-ms M]
//
// Routes:
//   GET /work?cpu=1&io=20&cpu2=<cpu>  busy-loop cpu ms, await io ms (a simulated database), busy-loop cpu2 ms
//   GET /hello                        {"hello":"world"}, no work
// Every 100 ms a JSON line with in-flight, event-loop utilization (interval), loop delay, memory and, for
// the admission contender, the plugin's snapshot is written to stdout (or to --series FILE).
// BENCH_AUTH_MS=n adds an app-level async onRequest hook that awaits n ms (an auth/session lookup),
// registered after the contender's plugin as an application would.
// BENCH_LOGGER=1 turns Fastify's logger on (pino, level info: a line per request and per response, as
// `logger: true` does) writing into a stream that discards the lines: stdout carries the time series.
// BENCH_STATIC_CAP=n sets the static-cap contender's in-flight cap (100 by default).
// BENCH_BACKLOG=n listens with a listen queue of n (`listen({ backlog })`) instead of Node's 511.
// BENCH_WARM_TICKS=0 skips the warm-up of process.nextTick the other contenders get at start, the one
// the plugin runs for itself at registration (lib/warm-ticks.ts): without it a Node 20 process may run
// nextTick slowly for its whole life, and the contenders would be compared on that luck instead of on
// what they do.
// BENCH_WINDOW_TRACE=FILE (admission): every sampling window's report (the plugin's diagnostics
// channel: arrivals, refusals, completions, limit, enforced, late turns) as a JSON line in FILE.
// /work?io=0 skips the await: with cpu2=0 as well the handler is one synchronous block of CPU work.
// BENCH_DOWNSTREAM_PORT=n: the io wait is a query to downstream.ts's database stand-in on that port (a
// socket round trip, read in the poll phase as a driver's reply is) instead of a timer.
import { subscribe } from 'node:diagnostics_channel'
import { createWriteStream } from 'node:fs'
import type { ServerResponse } from 'node:http'
import { monitorEventLoopDelay, performance, type EventLoopUtilization } from 'node:perf_hooks'
import { Writable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import { pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'
import fp from 'fastify-plugin'
import { warmNextTick } from '../lib/warm-ticks.js'
import { DownstreamPool } from './downstream.js'
import Fastify, { type FastifyInstance, type FastifyPluginAsync, type FastifyReply, type FastifyRequest, type FastifyServerOptions } from 'fastify'

export const contenders = ['bare', 'under-pressure', 'static-cap', 'admission', 'refuse-all', 'empty-hook', 'clock-hook', 'permit-floor'] as const
export type Contender = typeof contenders[number]

/** The read-only snapshot the admission plugin exposes as `app.admission` (see the plugin contract). */
export interface AdmissionSnapshot {
  mode: 'enforce' | 'observe'
  limit: number
  inflight: number
  eventLoopUtilization: number
  eventLoopDelaySeconds: number
  saturation: number
  shedding: boolean
  retryAfterSeconds: number
  capacity: number
}

export interface SeriesPoint {
  /** epoch ms */
  t: number
  /** requests received by Node's HTTP server and not yet answered (same probe for every contender) */
  inflight: number
  /** highest in-flight seen during the interval */
  inflightMax?: number
  /** event-loop utilization over the last interval, 0..1 */
  elu: number
  /** event-loop delay over the last interval, ms */
  delayP99: number
  delayMax: number
  /** resident set size and V8 heap in use, bytes */
  rss?: number
  heapUsed?: number
  /** admission contender only */
  limit?: number
  admInflight?: number
  saturation?: number
  shedding?: boolean
  capacity?: number
}

/** Busy-wait for `ms` milliseconds of synchronous CPU work. */
export function burnCpu (ms: number): void {
  if (!(ms > 0)) return
  const end = performance.now() + ms
  // eslint-disable-next-line no-empty
  while (performance.now() < end) {}
}

function numberParam (v: unknown, fallback: number): number {
  if (typeof v !== 'string' || v === '') return fallback
  const n = Number(v)
  return Number.isFinite(n) && n >= 0 ? Math.min(n, 60000) : fallback
}

interface WorkQuery { cpu?: string, io?: string, cpu2?: string }

/** The database stand-in's connections (BENCH_DOWNSTREAM_PORT), or undefined: the io wait is a timer. */
let downstream: DownstreamPool | undefined

async function workHandler (request: FastifyRequest<{ Querystring: WorkQuery }>, reply: FastifyReply): Promise<{ ok: true }> {
  const q = request.query
  const cpu = numberParam(q.cpu, 1)
  const io = numberParam(q.io, 20)
  const cpu2 = numberParam(q.cpu2, cpu)
  burnCpu(cpu)
  if (io > 0) await (downstream !== undefined ? downstream.query(io) : sleep(io))
  burnCpu(cpu2)
  return { ok: true }
}

async function helloHandler (): Promise<{ hello: string }> {
  return { hello: 'world' }
}

/** A static in-flight cap: 503 above `max` requests in flight, released when the response closes. */
export function staticCap (app: FastifyInstance, max: number): void {
  let inflight = 0
  function staticCapRelease (): void { inflight-- }
  app.addHook('onRequest', function staticCapOnRequest (request, reply, done) {
    if (inflight >= max) {
      reply.code(503).header('retry-after', '1').send({ statusCode: 503, error: 'Service Unavailable', message: 'in-flight cap reached' })
      return
    }
    inflight++
    reply.raw.once('close', staticCapRelease)
    done()
  })
}

/**
 * The hello-world overhead's floor: the least a controller that bounds the requests in flight and
 * learns from their latency does per request, registered as the plugin is. Its hook counts the request
 * in and reads the clock; the response's 'close' counts it out and reads the clock again. It decides
 * nothing and refuses nothing.
 */
async function permitFloor (app: FastifyInstance): Promise<void> {
  const kStart = Symbol('permit-floor.start')
  type Timed = ServerResponse & { [kStart]?: number }
  let inflight = 0
  let latencySumMs = 0
  function permitFloorRelease (this: Timed): void {
    inflight--
    latencySumMs += performance.now() - (this[kStart] as number)
  }
  await app.register(fp(async function permitFloorPlugin (instance) {
    instance.addHook('onRequest', function permitFloorHook (_request, reply, done) {
      inflight++
      const res = reply.raw as Timed
      res[kStart] = performance.now()
      res.on('close', permitFloorRelease)
      done()
    })
    // Read, so that neither count is dead code to the JIT.
    instance.decorate('permitFloor', { getter: () => ({ inflight, latencySumMs }) })
  }))
}

export async function loadAdmission (): Promise<FastifyPluginAsync> {
  // Loaded dynamically so the other contenders keep working while lib/ is being edited.
  const mod = await import('../lib/index.js') as unknown as { default?: unknown, admission?: unknown, WINDOW_CHANNEL?: unknown }
  const plugin = mod.default ?? mod.admission
  if (typeof plugin !== 'function') throw new Error('lib/index.js has no default export yet (admission plugin missing)')
  const trace = process.env.BENCH_WINDOW_TRACE
  if (trace !== undefined && typeof mod.WINDOW_CHANNEL === 'string') {
    const out = createWriteStream(trace, { flags: 'a' })
    subscribe(mod.WINDOW_CHANNEL, report => { out.write(JSON.stringify(report) + '\n') })
  }
  return plugin as FastifyPluginAsync
}

/** `logger: true`'s logging (BENCH_LOGGER=1) into a sink, or no logger. */
function loggerOption (): FastifyServerOptions['logger'] {
  if (process.env.BENCH_LOGGER !== '1') return false
  const discard = new Writable({ write (_chunk, _encoding, callback) { callback() } })
  return { level: 'info', stream: discard }
}

export async function buildServer (contender: Contender): Promise<FastifyInstance> {
  // The plugin warms nextTick itself at registration: the admission contender runs that, not this.
  if (process.env.BENCH_WARM_TICKS !== '0' && contender !== 'admission') warmNextTick()
  const app = Fastify({ logger: loggerOption() })
  const downstreamPort = numberParam(process.env.BENCH_DOWNSTREAM_PORT, 0)
  if (downstreamPort > 0 && downstream === undefined) downstream = await DownstreamPool.connect(downstreamPort)
  switch (contender) {
    case 'bare':
      break
    case 'under-pressure': {
      const { default: underPressure } = await import('@fastify/under-pressure')
      await app.register(underPressure, {
        eventLoopUtilizationMode: 'interval',
        maxEventLoopUtilization: 0.98,
        maxEventLoopDelay: 200,
        sampleInterval: 100
      })
      break
    }
    case 'static-cap':
      staticCap(app, numberParam(process.env.BENCH_STATIC_CAP, 100))
      break
    case 'refuse-all': {
      // The floor of a refusal through Fastify: one hook answers every request 503, nothing is admitted.
      // What it cannot do (a cold process, connections opened on demand) no admission policy can. With
      // the logger on, its refusals skip the "request completed" line as the plugin's do (the
      // "incoming request" line is written before any hook): a floor that logged more than the plugin
      // would put a goodput bound below what the plugin serves.
      const quiet = app.log.child({}, { level: 'warn' })
      app.addHook('onRequest', function refuseAll (_request, reply, _done) {
        reply.log = quiet
        reply.code(503).header('retry-after', '1').send({ statusCode: 503, error: 'Service Unavailable', message: 'refused' })
      })
      break
    }
    case 'empty-hook':
      // The hello-world overhead's reference: what an onRequest hook that does nothing costs, registered
      // as the plugin is (a fastify-plugin, awaited before the routes).
      await app.register(fp(async function emptyHookPlugin (instance) {
        instance.addHook('onRequest', function emptyHook (_request, _reply, done) { done() })
      }))
      break
    case 'clock-hook': {
      // One clock read per request, in a hook registered as the plugin is: what timing a request costs
      // here, apart from everything else a controller does.
      let readings = 0
      await app.register(fp(async function clockHookPlugin (instance) {
        instance.addHook('onRequest', function clockHook (_request, _reply, done) {
          readings += performance.now()
          done()
        })
        instance.decorate('clockReadings', { getter: () => readings })
      }))
      break
    }
    case 'permit-floor':
      await permitFloor(app)
      break
    case 'admission':
      // Default options are what the benchmark measures; BENCH_ADMISSION_OPTIONS (JSON) is for tuning runs.
      await app.register(await loadAdmission(), JSON.parse(process.env.BENCH_ADMISSION_OPTIONS ?? '{}'))
      break
  }
  const authMs = numberParam(process.env.BENCH_AUTH_MS, 0)
  if (authMs > 0) {
    app.addHook('onRequest', async function authLikeHook () { await sleep(authMs) })
  }
  app.get('/work', workHandler)
  app.get('/hello', helloHandler)
  // The same handler (hard.ts gives it a 10 ms synchronous query), for the synchronous route's scenarios.
  app.get('/sync', workHandler)
  return app
}

function readSnapshot (app: FastifyInstance): AdmissionSnapshot | undefined {
  const snap = (app as unknown as { admission?: AdmissionSnapshot }).admission
  return snap !== undefined && typeof snap === 'object' ? snap : undefined
}

/** Starts the 100 ms time series; returns a stop function. */
export function startSeries (app: FastifyInstance, write: (line: string) => void, intervalMs = 100): () => void {
  let inflight = 0
  let peak = 0
  function seriesRelease (): void { inflight-- }
  app.server.on('request', function seriesCount (_req, res) {
    if (++inflight > peak) peak = inflight
    res.once('close', seriesRelease)
  })
  const hist = monitorEventLoopDelay({ resolution: 5 })
  hist.enable()
  let last: EventLoopUtilization = performance.eventLoopUtilization()
  const timer = setInterval(() => {
    const now = performance.eventLoopUtilization()
    const elu = performance.eventLoopUtilization(now, last).utilization
    last = now
    const mem = process.memoryUsage()
    const point: SeriesPoint = {
      t: Math.round((performance.timeOrigin + performance.now()) * 10) / 10,
      inflight,
      inflightMax: peak,
      elu: Math.round(elu * 1000) / 1000,
      delayP99: hist.count > 0 ? Math.round(hist.percentile(99) / 1e4) / 100 : 0,
      delayMax: hist.count > 0 ? Math.round(hist.max / 1e4) / 100 : 0,
      rss: mem.rss,
      heapUsed: mem.heapUsed
    }
    hist.reset()
    peak = inflight
    const snap = readSnapshot(app)
    if (snap !== undefined) {
      point.limit = snap.limit
      point.admInflight = snap.inflight
      point.saturation = Math.round(snap.saturation * 1000) / 1000
      point.shedding = snap.shedding
      point.capacity = Math.round(snap.capacity * 10) / 10
    }
    write(JSON.stringify(point) + '\n')
  }, intervalMs)
  return () => {
    clearInterval(timer)
    hist.disable()
  }
}

/** A synchronous stall of `stallMs` every `everyMs` (GC-like pause); each stall is reported as {"stall": epochMs, "ms": n}. */
export function startStalls (everyMs: number, stallMs: number, write?: (line: string) => void): () => void {
  const timer = setInterval(() => {
    const start = performance.now()
    burnCpu(stallMs)
    const end = performance.now()
    if (write !== undefined) {
      write(JSON.stringify({ stall: Math.round((performance.timeOrigin + start) * 10) / 10, ms: Math.round((end - start) * 10) / 10 }) + '\n')
    }
  }, everyMs)
  return () => clearInterval(timer)
}

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: {
      contender: { type: 'string', default: 'bare' },
      port: { type: 'string', default: '3001' },
      series: { type: 'string', default: '-' },
      'stall-every-ms': { type: 'string', default: '0' },
      'stall-ms': { type: 'string', default: '0' },
      'exit-with-stdin': { type: 'boolean', default: false }
    }
  })
  const contender = values.contender as Contender
  if (!contenders.includes(contender)) throw new Error(`unknown contender ${String(values.contender)}`)
  const port = Number(values.port)
  const app = await buildServer(contender)
  await app.listen({ host: '127.0.0.1', port, ...(process.env.BENCH_BACKLOG === undefined ? {} : { backlog: Number(process.env.BENCH_BACKLOG) }) })

  const stops: Array<() => void> = []
  let write: ((line: string) => void) | undefined
  if (values.series !== 'off') {
    const out = values.series === '-' ? process.stdout : createWriteStream(values.series)
    write = (line) => { out.write(line) }
    stops.push(startSeries(app, write))
  }
  const every = Number(values['stall-every-ms'])
  const stall = Number(values['stall-ms'])
  if (every > 0 && stall > 0) stops.push(startStalls(every, stall, write))

  const shutdown = (): void => {
    for (const stop of stops) stop()
    app.close().then(() => process.exit(0), () => process.exit(1))
    setTimeout(() => process.exit(0), 500).unref()
  }
  process.once('SIGTERM', shutdown)
  process.once('SIGINT', shutdown)
  if (values['exit-with-stdin'] === true) {
    // die with the runner: stdin (a pipe from it) closes when it goes away, even on SIGKILL
    process.stdin.on('end', () => process.exit(0))
    process.stdin.on('error', () => process.exit(0))
    process.stdin.resume()
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    console.error(err)
    process.exit(1)
  })
}
