// Open-loop load through undici, in a process of its own: the generator of the hard cases (hard.ts).
//
//   tsx bench/undici-load.ts --port N --rate R --seconds S [--routes /work | '[{"path":"/hello","weight":5}]']
//        [--even] [--seed N] [--timeout 10000] [--slo 1000] [--bucket 250] [--client undici|raw]
//   (the runner passes --wait-go instead of --port)
//
// Unlike open-loop.ts (256 connections opened before the load), every request goes through undici's
// `request` on one fresh Agent: connections are opened on demand, with no cap per origin, as Node's fetch
// does. `--client raw` uses raw-http.ts's pool instead, also opening a connection for every request that
// finds none idle, without a cap: measured against a node:http server answering 503 at once, undici on one
// core kept 4300/s only just (send lag p99 16 ms) and collapsed at 8000/s (lag p50 2.7 s, 20 000
// connections), where raw-http.ts kept up at ELU 0.25. Arrivals are Poisson (exponential gaps from a
// seeded generator, so every contender of a scenario gets the same arrivals) or evenly spaced; a route mix is drawn with the same seed. Latency counts from
// the *scheduled* send time; the client gives up 10 s after it (AbortController).
//
// Before the load the generator warms itself (undici, timers, JIT) against a tiny HTTP server of its own,
// through another Agent that is then closed: a cold generator alone adds 300-600 ms of latency in its first
// second, even against an idle hello-world server. The server under test sees nothing before the load.
//
// Protocol (generator.ts starts it for the runner), one JSON line each on stdout: {"ready":{...}} after
// the warm-up; with --wait-go the load starts when the line "go <port>" arrives on stdin (so the generator
// can be ready before the server under test exists); {"result":{...}} at the end. With --wait-go the
// process exits when its stdin closes (the runner went away).
import { createServer } from 'node:http'
import { monitorEventLoopDelay, performance } from 'node:perf_hooks'
import { createInterface } from 'node:readline'
import { pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'
import { Agent, request } from 'undici'
import type { GenResult, LoadSpec, TimelineRow, WarmInfo } from './generator.js'
import { routeSequence, type Route } from './open-loop.js'
import { ConnPool } from './raw-http.js'
import { Outcome, lagStats, newRecords, windowStats, type Records, type WindowStats } from './stats.js'

type Settle = (status: number, err: unknown, timedOut: boolean) => void

/** A client that opens connections on demand, without a cap: undici's Agent or raw-http.ts's pool. */
interface LoadClient {
  /** One GET of route `route`; `settle` gets the status (0 on failure) once the body has been read. */
  send: (route: number, waitMs: number, settle: Settle) => void
  /** connections opened / failed */
  conns: () => number
  connErrors: () => number
  close: () => Promise<void>
}

function abortRequest (ac: AbortController): void { ac.abort() }

function undiciClient (port: number, paths: string[]): LoadClient {
  const agent = new Agent()
  const urls = paths.map(p => `http://127.0.0.1:${port}${p}`)
  let conns = 0
  let connErrors = 0
  agent.on('connect', () => { conns++ })
  agent.on('connectionError', () => { connErrors++ })
  return {
    send (route, waitMs, settle) {
      const ac = new AbortController()
      const timer = setTimeout(abortRequest, Math.max(1, waitMs), ac)
      request(urls[route] as string, { dispatcher: agent, signal: ac.signal })
        .then(async (res) => {
          await res.body.dump()
          return res.statusCode
        })
        .then((status) => {
          clearTimeout(timer)
          settle(status, undefined, false)
        }, (err: unknown) => {
          clearTimeout(timer)
          settle(0, err, ac.signal.aborted)
        })
    },
    conns: () => conns,
    connErrors: () => connErrors,
    close: async () => { await agent.destroy() }
  }
}

const connectionLost = Object.freeze({ code: 'ECONNRESET' })

function rawClient (port: number, paths: string[]): LoadClient {
  const pool = new ConnPool('127.0.0.1', port)
  const encoded = paths.map(p => pool.encode(p))
  let connErrors = 0
  return {
    send (route, waitMs, settle) {
      let done = false
      const conn = pool.send(encoded[route] as Buffer, (status) => {
        if (done) return
        done = true
        clearTimeout(timer)
        if (status === 0) connErrors++
        settle(status, status === 0 ? connectionLost : undefined, false)
      })
      const timer = setTimeout(() => {
        if (done) return
        done = true
        pool.abort(conn)
        settle(0, undefined, true)
      }, Math.max(1, waitMs))
    },
    conns: () => pool.opened,
    connErrors: () => connErrors,
    close: async () => { pool.close() }
  }
}

function makeClient (kind: LoadSpec['client'], port: number, paths: string[]): LoadClient {
  return kind === 'raw' ? rawClient(port, paths) : undiciClient(port, paths)
}

/** Seeded uniform numbers in [0, 1) (xorshift32): the same seed gives every contender the same arrivals. */
export function seededRandom (seed: number): () => number {
  let x = (seed >>> 0) || 0x9e3779b9
  return () => {
    x ^= x << 13
    x >>>= 0
    x ^= x >>> 17
    x ^= x << 5
    x >>>= 0
    return x / 4294967296
  }
}

/** Scheduled send times (ms from t = 0) and the route of each request. */
export function schedule (spec: LoadSpec): { sched: Float64Array, route: Uint8Array } {
  const endMs = spec.seconds * 1000
  if (spec.even) {
    const n = Math.floor(spec.seconds * spec.rate + 1e-9)
    const sched = new Float64Array(n)
    for (let i = 0; i < n; i++) sched[i] = (i * 1000) / spec.rate
    return { sched, route: routeSequence(spec.routes, n) }
  }
  const rand = seededRandom(spec.seed)
  const times: number[] = []
  for (let t = 0; t < endMs; t += (-Math.log(1 - rand()) * 1000) / spec.rate) times.push(t)
  const weights = spec.routes.map(r => r.weight ?? 1)
  const total = weights.reduce((a, b) => a + b, 0)
  const route = new Uint8Array(times.length)
  for (let i = 0; i < times.length && weights.length > 1; i++) {
    let pick = rand() * total
    let r = 0
    while (r < weights.length - 1 && pick >= (weights[r] as number)) pick -= weights[r++] as number
    route[i] = r
  }
  return { sched: Float64Array.from(times), route }
}

/**
 * Exercise the request path against an in-process server: 2000 requests in rounds of 100 at once. (A
 * pool of 100 requests kept busy left a few requests stuck for the whole warm-up, ~1.3 s, on this machine.)
 */
async function warmUp (kind: LoadSpec['client'], rounds = 20, concurrency = 100): Promise<WarmInfo> {
  const server = createServer((_req, res) => {
    res.setHeader('content-type', 'application/json')
    res.end('{"ok":true}')
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  const address = server.address()
  const client = makeClient(kind, typeof address === 'object' && address !== null ? address.port : 0, ['/'])
  const start = performance.now()
  let lastMax = 0
  for (let round = 0; round < rounds; round++) {
    lastMax = 0
    await new Promise<void>((resolve) => {
      let left = concurrency
      for (let k = 0; k < concurrency; k++) {
        const s = performance.now()
        client.send(0, 10000, () => {
          lastMax = Math.max(lastMax, performance.now() - s)
          if (--left === 0) resolve()
        })
      }
    })
  }
  const ms = performance.now() - start
  await client.close()
  server.closeAllConnections()
  server.close()
  return { requests: rounds * concurrency, ms: Math.round(ms), lastRoundMax: Math.round(lastMax * 10) / 10 }
}

const r2 = (x: number | null): number | null => x === null ? null : Math.round(x * 100) / 100

function roundWindow (s: WindowStats): WindowStats {
  return { ...s, offeredPerSec: r2(s.offeredPerSec) ?? 0, goodPerSec: r2(s.goodPerSec) ?? 0, okP50: r2(s.okP50), okP99: r2(s.okP99), okMax: r2(s.okMax), rejP50: r2(s.rejP50), rejP99: r2(s.rejP99) }
}

function timeline (rec: Records, seconds: number, bucketMs: number): TimelineRow[] {
  const rows: TimelineRow[] = []
  const n = Math.ceil((seconds * 1000) / bucketMs - 1e-9)
  for (let b = 0; b < n; b++) rows.push({ t: (b * bucketMs) / 1000, ok: 0, okMax: null, rejected: 0, rejMax: null, failed: 0 })
  for (let i = 0; i < rec.count; i++) {
    const row = rows[Math.floor((rec.sched[i] as number) / bucketMs)]
    if (row === undefined) continue
    const lat = Math.round(rec.latency[i] as number)
    if (rec.outcome[i] === Outcome.ok) {
      row.ok++
      row.okMax = Math.max(row.okMax ?? 0, lat)
    } else if (rec.outcome[i] === Outcome.rejected) {
      row.rejected++
      row.rejMax = Math.max(row.rejMax ?? 0, lat)
    } else {
      row.failed++
    }
  }
  return rows
}

/** Runs the load of `spec` (after `warm`, started by `go`) and summarises it. */
async function runLoad (spec: LoadSpec, warm: WarmInfo): Promise<GenResult> {
  const { sched, route } = schedule(spec)
  const n = sched.length
  const rec = newRecords(sched, route)
  const client = makeClient(spec.client, spec.port, spec.routes.map(r => r.path))
  const errorCodes: Record<string, number> = {}
  const delay = monitorEventLoopDelay({ resolution: 5 })
  const totalMs = spec.seconds * 1000
  let outstanding = 0
  let maxOutstanding = 0
  let next = 0
  const cpu0 = process.cpuUsage()
  const elu0 = performance.eventLoopUtilization()
  let elu = 0
  let delayP99 = 0
  let delayMax = 0
  const t0 = performance.now() + 1
  delay.enable()

  return await new Promise<GenResult>((resolve) => {
    let finished = false
    function finish (): void {
      if (finished) return
      finished = true
      clearTimeout(hardStop)
      readLoop()
      for (let i = 0; i < rec.count; i++) if (rec.outcome[i] === Outcome.pending) rec.outcome[i] = Outcome.unfinished
      const cpu = process.cpuUsage(cpu0)
      client.close().catch(() => {})
      const lag = lagStats(rec)
      const many = spec.routes.length > 1
      resolve({
        spec,
        warm,
        startEpochMs: Math.round((performance.timeOrigin + t0) * 10) / 10,
        arrivals: n,
        stats: roundWindow(windowStats(rec, 0, spec.seconds, spec.sloMs)),
        ...(many ? { byRoute: spec.routes.map((r, k) => ({ name: r.name ?? r.path, path: r.path, stats: roundWindow(windowStats(rec, 0, spec.seconds, spec.sloMs, { routes: [k] })) })) } : {}),
        timeline: timeline(rec, spec.seconds, spec.bucketMs),
        lag: { p50: r2(lag.p50), p99: r2(lag.p99), max: r2(lag.max), lateShare: Math.round(lag.lateShare * 10000) / 10000 },
        behind: (lag.p99 ?? 0) > 10 || elu > 0.9,
        conns: client.conns(),
        connErrors: client.connErrors(),
        errorCodes,
        maxOutstanding,
        elu,
        delayP99,
        delayMax,
        cpuMs: Math.round((cpu.user + cpu.system) / 1000),
        wallMs: Math.round(performance.now() - t0)
      })
    }
    // every request aborts at its scheduled time + timeout; this only guards against a lost callback
    const hardStop = setTimeout(finish, totalMs + spec.timeoutMs + 2000)

    function settle (i: number, status: number, err: unknown, timedOut: boolean): void {
      outstanding--
      if (rec.outcome[i] === Outcome.pending) {
        rec.latency[i] = performance.now() - t0 - (sched[i] as number)
        if (timedOut) {
          rec.outcome[i] = Outcome.timeout
        } else if (status === 0) {
          rec.outcome[i] = Outcome.error
          const code = (err as { code?: unknown } | null)?.code
          const key = typeof code === 'string' ? code : (err as Error | null)?.name ?? 'unknown'
          errorCodes[key] = (errorCodes[key] ?? 0) + 1
        } else {
          rec.outcome[i] = status >= 200 && status < 300 ? Outcome.ok : status === 503 ? Outcome.rejected : Outcome.other
        }
      }
      if (next >= n && outstanding === 0) finish()
    }

    let loopRead = false
    function readLoop (): void {
      if (loopRead) return
      loopRead = true
      const e = performance.eventLoopUtilization(elu0)
      elu = Math.round(e.utilization * 1000) / 1000
      delayP99 = Math.round(delay.percentile(99) / 1e4) / 100
      delayMax = Math.round(delay.max / 1e4) / 100
      delay.disable()
    }
    function endOfSchedule (): void {
      readLoop()
      if (outstanding === 0) finish()
    }

    function tick (): void {
      const now = performance.now() - t0
      while (next < n && (sched[next] as number) <= now) {
        const i = next++
        rec.lag[i] = performance.now() - t0 - (sched[i] as number)
        if (++outstanding > maxOutstanding) maxOutstanding = outstanding
        client.send(route[i] as number, (sched[i] as number) + spec.timeoutMs - now, (status, err, timedOut) => settle(i, status, err, timedOut))
      }
      if (next < n) {
        // A timer even when the next send is due within a millisecond: polling with setImmediate would
        // keep this loop busy between sends, and its utilisation would no longer tell whether it keeps up.
        setTimeout(tick, Math.max(1, Math.floor((sched[next] as number) - (performance.now() - t0))))
      } else {
        setTimeout(endOfSchedule, Math.max(0, totalMs - (performance.now() - t0)))
      }
    }
    setTimeout(tick, 1)
  })
}

function parseRoutes (s: string): Route[] {
  if (s.startsWith('[')) return JSON.parse(s) as Route[]
  return [{ path: s }]
}

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: {
      port: { type: 'string' },
      rate: { type: 'string' },
      seconds: { type: 'string' },
      routes: { type: 'string', default: '/work' },
      even: { type: 'boolean', default: false },
      seed: { type: 'string', default: '1' },
      timeout: { type: 'string', default: '10000' },
      slo: { type: 'string', default: '1000' },
      bucket: { type: 'string', default: '250' },
      client: { type: 'string', default: 'undici' },
      'wait-go': { type: 'boolean', default: false }
    }
  })
  const waitGo = values['wait-go'] === true
  const spec: LoadSpec = {
    port: waitGo ? 1 : Number(values.port),
    rate: Number(values.rate),
    seconds: Number(values.seconds),
    routes: parseRoutes(values.routes),
    even: values.even === true,
    seed: Number(values.seed),
    timeoutMs: Number(values.timeout),
    sloMs: Number(values.slo),
    bucketMs: Number(values.bucket),
    client: values.client === 'raw' ? 'raw' : 'undici'
  }
  for (const k of ['port', 'rate', 'seconds', 'timeoutMs', 'sloMs', 'bucketMs'] as const) {
    if (!(Number.isFinite(spec[k]) && spec[k] > 0)) throw new Error(`undici-load: --${k} must be a positive number`)
  }
  const warm = await warmUp(spec.client)
  process.stdout.write(JSON.stringify({ ready: warm }) + '\n')
  if (waitGo) {
    spec.port = await new Promise<number>((resolve) => {
      const rl = createInterface({ input: process.stdin })
      rl.once('line', (line) => resolve(Number(line.split(' ')[1])))
      // the runner went away: stop
      rl.once('close', () => process.exit(0))
    })
    if (!(Number.isInteger(spec.port) && spec.port > 0)) throw new Error('undici-load: expected "go <port>" on stdin')
  }
  const result = await runLoad(spec, warm)
  process.stdout.write(JSON.stringify({ result }) + '\n', () => process.exit(0))
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    console.error(err)
    process.exit(1)
  })
}
