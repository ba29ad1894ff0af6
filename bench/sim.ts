// A deterministic simulation of the admission decision on a virtual event loop: Poisson arrivals of a
// route with CPU before and after an await, refusals at a fixed cost, and the plugin's own controller
// and loop turns with default options, all on a virtual clock. A run takes well under a second and
// gives the same figures every time: for trying a change to the controller on a shape the benchmark
// measures only through the machine's noise (bench/hard.ts), before measuring it there. Not a
// substitute for the benchmark: no connections (a pool opened beforehand), no cold code, no GC.
//
//   npx tsx bench/sim.ts [--rate 1736] [--pre 0] [--io 20] [--post 2] [--read 0.05] [--refusal 0.06]
//                        [--seconds 8] [--seed 1] [--windows]
//
// The loop, per iteration: the timers phase runs the sampling window when due and every continuation
// whose await is over (`post` ms of CPU, then the permit comes back); the poll phase reads every request
// that has arrived (`read` ms each, plus `pre` ms if admitted, or `refusal` ms if refused), waiting for
// the next arrival or timer when there is nothing to do; the check phase ends the turn. Defaults: the
// await-first shape of `bench/hard.ts --only await-first-4x` (4x of 434/s).
import { parseArgs } from 'node:util'
import { AdmissionController, DEFAULT_CLASS, type WindowReport } from '../lib/admission.js'
import { controllerSettingsOf, resolveOptions, turnSettingsOf } from '../lib/options.js'
import { LoopTurns } from '../lib/turns.js'

export interface SimSpec {
  /** Arrivals per second (Poisson). */
  rate: number
  /** CPU before the await, after the await, to read a request, to refuse one, ms. */
  preMs: number
  ioMs: number
  postMs: number
  readMs: number
  refusalMs: number
  seconds: number
  seed: number
}

export interface SimResult {
  offered: number
  admitted: number
  refused: number
  /** Answered 2xx within 1 s, per second of arrivals (the requests admitted last finish after them). */
  goodputPerSecond: number
  okP50Ms: number
  okP99Ms: number
  refusedP99Ms: number
  /** Loop turns that read requests: their length's p99 and maximum, ms. */
  turnP99Ms: number
  turnMaxMs: number
  windows: WindowReport[]
}

/** A small seeded generator (mulberry32): the same arrivals for every variant. */
function random (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6D2B79F5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

function percentile (sorted: number[], p: number): number {
  return sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] as number
}

interface Awaiting { arrived: number, due: number }

/** When the next continuation comes due (Infinity: none awaits). */
function dueAt (awaiting: Awaiting[]): number {
  return awaiting.length > 0 ? (awaiting[0] as Awaiting).due : Infinity
}

/** When the i-th request arrives (Infinity: no more arrive). */
function arrivalAt (arrivals: number[], i: number): number {
  return i < arrivals.length ? arrivals[i] as number : Infinity
}

export function simulate (spec: SimSpec): SimResult {
  const opts = resolveOptions({})
  let now = 0
  let idle = 0
  let atEnd: Array<() => void> = []
  const turns = new LoopTurns(turnSettingsOf(opts), { now: () => now, idle: () => idle, atTurnEnd: callback => { atEnd.push(callback) } })
  const windows: WindowReport[] = []
  const controller = new AdmissionController(controllerSettingsOf(opts), now, {
    turns, windows: { hasSubscribers: true, publish: report => { windows.push(report) } }
  })
  const end = spec.seconds * 1000
  const next = random(spec.seed)
  const arrivals: number[] = []
  for (let t = 0; ;) {
    t += -Math.log(1 - next()) * 1000 / spec.rate
    if (t >= end) break
    arrivals.push(t)
  }
  // Awaits are all `ioMs` long: continuations come due in the order their requests were admitted.
  const awaiting: Awaiting[] = []
  let nextRead = 0
  let nextWindow = opts.sampleInterval
  let windowStart = 0
  let windowIdle = 0
  const ok: number[] = []
  const refusedLatency: number[] = []
  const turnLengths: number[] = []
  // After the last arrival the loop runs on until every admitted request has finished.
  while (now < end || awaiting.length > 0) {
    const turnStart = now
    // Timers phase.
    if (now >= nextWindow) {
      // The loop delay: how late the sampling timer itself ran.
      const duration = now - windowStart
      controller.onWindow({ durationMs: duration, elu: 1 - (idle - windowIdle) / duration, delayP99Ms: now - nextWindow }, now)
      windowStart = now
      windowIdle = idle
      nextWindow = now + opts.sampleInterval
    }
    while (dueAt(awaiting) <= turnStart) {
      const request = awaiting.shift() as Awaiting
      now += spec.postMs
      ok.push(now - request.arrived)
      controller.release(now - request.arrived, true)
    }
    // Poll phase: wait for work if there is none.
    if (arrivalAt(arrivals, nextRead) > now) {
      const wake = Math.min(arrivalAt(arrivals, nextRead), dueAt(awaiting), nextWindow, now < end ? end : Infinity)
      if (wake > now) {
        idle += wake - now
        now = wake
      }
    }
    let read = 0
    const readable = now
    while (arrivalAt(arrivals, nextRead) <= readable) {
      const arrived = arrivals[nextRead++] as number
      read++
      now += spec.readMs
      if (controller.acquire(DEFAULT_CLASS) === 'admitted') {
        now += spec.preMs
        awaiting.push({ arrived, due: now + spec.ioMs })
      } else {
        now += spec.refusalMs
        refusedLatency.push(now - arrived)
      }
    }
    // Check phase.
    const callbacks = atEnd
    atEnd = []
    for (const callback of callbacks) callback()
    if (read > 0) turnLengths.push(now - turnStart)
  }
  ok.sort((a, b) => a - b)
  refusedLatency.sort((a, b) => a - b)
  turnLengths.sort((a, b) => a - b)
  return {
    offered: arrivals.length,
    admitted: controller.totals.admitted,
    refused: controller.totals.rejected.limit,
    goodputPerSecond: ok.filter(ms => ms <= 1000).length / spec.seconds,
    okP50Ms: percentile(ok, 0.5),
    okP99Ms: percentile(ok, 0.99),
    refusedP99Ms: percentile(refusedLatency, 0.99),
    turnP99Ms: percentile(turnLengths, 0.99),
    turnMaxMs: percentile(turnLengths, 1),
    windows
  }
}

/* c8 ignore start -- the command line: not part of the test suite */
if (import.meta.url === `file://${process.argv[1] ?? ''}`) {
  const { values } = parseArgs({
    options: {
      rate: { type: 'string', default: '1736' },
      pre: { type: 'string', default: '0' },
      io: { type: 'string', default: '20' },
      post: { type: 'string', default: '2' },
      read: { type: 'string', default: '0.05' },
      refusal: { type: 'string', default: '0.06' },
      seconds: { type: 'string', default: '8' },
      seed: { type: 'string', default: '1' },
      windows: { type: 'boolean', default: false }
    }
  })
  const spec: SimSpec = {
    rate: Number(values.rate),
    preMs: Number(values.pre),
    ioMs: Number(values.io),
    postMs: Number(values.post),
    readMs: Number(values.read),
    refusalMs: Number(values.refusal),
    seconds: Number(values.seconds),
    seed: Number(values.seed)
  }
  const r = simulate(spec)
  const capacity = 1000 / (spec.preMs + spec.postMs + spec.readMs)
  if (values.windows) {
    for (const w of r.windows) {
      console.log(`${w.at.toFixed(0).padStart(6)} ms  arrivals ${w.arrivals}  refused ${w.refused}  done ${w.completed}  in-flight ${w.inflight}  limit ${w.limit}  ELU ${w.elu.toFixed(2)}  delay ${w.delayP99Ms.toFixed(1)} ms  capacity ${w.capacity.toFixed(0)}/s`)
    }
  }
  console.log(`offered ${r.offered} (${spec.rate}/s, ${(spec.rate / capacity).toFixed(1)}x of ${capacity.toFixed(0)}/s), admitted ${r.admitted}, refused ${r.refused}`)
  console.log(`goodput ${(100 * r.goodputPerSecond / capacity).toFixed(0)} % of capacity; 2xx p50 ${r.okP50Ms.toFixed(0)} ms, p99 ${r.okP99Ms.toFixed(0)} ms; 503 p99 ${r.refusedP99Ms.toFixed(1)} ms; turns p99 ${r.turnP99Ms.toFixed(1)} ms, max ${r.turnMaxMs.toFixed(1)} ms`)
}
/* c8 ignore stop */
