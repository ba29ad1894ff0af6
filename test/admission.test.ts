import t from 'tap'
import {
  AdmissionController, CHEAP_REQUEST_MS, COLD_ADMISSIONS, DEFAULT_CLASS, PACED_MIN_COST_MS, SATURATION_CONFIDENCE, SATURATION_SMOOTHING_MS, STALL_ALLOWANCE_MAX_MS, STALL_DRAIN_SHARE,
  type ControllerSettings, type WindowReport
} from '../lib/admission.js'
import { RUN_SMOOTHING, type RouteCost } from '../lib/costs.js'
import { ACCEPT_RUN, LoopTurns, SURGE_RUN } from '../lib/turns.js'
import { fakeLoop, type FakeLoop } from './helpers/loop.js'

const base: ControllerSettings = {
  mode: 'enforce',
  minLimit: 1,
  maxLimit: 1000,
  initialLimit: 2,
  headroom: 0.5,
  busyTarget: 0.98,
  graceMs: 0,
  retryAfter: { min: 1, max: 8 },
  quietMs: 1000,
  maxInflight: 0,
  maxDelayMs: 0,
  maxUtilization: 0
}
const busy = { durationMs: 100, elu: 1, delayP99Ms: 4 }
const idle = { durationMs: 100, elu: 0.1, delayP99Ms: 0 }

function controller (over: Partial<ControllerSettings> = {}): AdmissionController {
  return new AdmissionController({ ...base, ...over }, 0, { random: () => 0 })
}

/** A controller deciding with loop turns (budget 5 ms, interval 100 ms) on a scripted loop. */
function withTurns (over: Partial<ControllerSettings> = {}): { loop: FakeLoop, turns: LoopTurns, c: AdmissionController } {
  const loop = fakeLoop()
  const turns = new LoopTurns({ budgetMs: 5, intervalMs: 100 }, loop.clock)
  return { loop, turns, c: new AdmissionController({ ...base, ...over }, 0, { turns }) }
}

t.test('admits everything while the loop has headroom, whatever the limit', async t => {
  const c = controller()
  c.onWindow(idle, 100)
  for (let i = 0; i < 5; i++) t.equal(c.acquire(DEFAULT_CLASS), 'admitted')
  t.equal(c.inflight, 5)
  t.equal(c.limit, 2)
})

t.test('under pressure, refuses at the limit and admits again once a permit is back', async t => {
  const c = controller()
  c.onWindow(busy, 100)
  t.equal(c.acquire(DEFAULT_CLASS), 'admitted')
  t.equal(c.acquire(DEFAULT_CLASS, 'tenant-a'), 'admitted')
  t.equal(c.acquire(DEFAULT_CLASS), 'rejected')
  t.equal(c.inflight, 2, 'a refusal takes no permit')
  c.release(10, true)
  t.equal(c.acquire(DEFAULT_CLASS), 'admitted')
  t.same(c.totals.admitted, 3)
  t.same(c.totals.rejected.limit, 1)
})

t.test('startup grace: nothing refused before it ends', async t => {
  const c = new AdmissionController({ ...base, graceMs: 1000 }, 0)
  c.onWindow(busy, 500)
  for (let i = 0; i < 4; i++) t.equal(c.acquire(DEFAULT_CLASS), 'admitted')
  c.onWindow(busy, 1000)
  t.equal(c.acquire(DEFAULT_CLASS), 'rejected')
})

t.test('observe mode: over the limit is let through and counted as would-reject', async t => {
  const c = controller({ mode: 'observe' })
  c.onWindow(busy, 100)
  c.acquire(DEFAULT_CLASS)
  c.acquire(DEFAULT_CLASS)
  t.equal(c.acquire(DEFAULT_CLASS), 'observed')
  t.equal(c.inflight, 3, 'an observed request holds a permit like any other')
  t.equal(c.totals.observed.limit, 1)
  t.equal(c.totals.rejected.limit, 0)
  const event = c.onWindow(busy, 200)
  t.equal(event?.type, 'start', 'would-be shedding is reported too')
  t.equal(c.snapshot().mode, 'observe')
})

t.test('refusals decided elsewhere are counted by reason and take no permit', async t => {
  const c = controller()
  t.equal(c.acquire(DEFAULT_CLASS, undefined, 'heap'), 'rejected')
  c.acquire(DEFAULT_CLASS, undefined, 'health')
  c.acquire(DEFAULT_CLASS, undefined, 'health')
  t.equal(c.inflight, 0)
  t.equal(c.totals.rejected.heap, 1)
  t.equal(c.totals.rejected.health, 2)
  t.equal(c.onWindow(idle, 100)?.type, 'start')
})

t.test('only finished requests teach latency; aborts just give the permit back', async t => {
  const c = controller()
  for (let i = 0; i < 12; i++) c.acquire(DEFAULT_CLASS)
  for (let i = 0; i < 5; i++) c.release(20, true)
  for (let i = 0; i < 5; i++) c.release(5000, false)
  c.release(NaN, true)
  c.release(Infinity, true)
  t.equal(c.inflight, 0, 'each release returns exactly one permit')
  c.onWindow({ durationMs: 100, elu: 0.5, delayP99Ms: 1 }, 100)
  t.equal(c.limiter.baselineMs, 20)
  t.equal(c.limiter.capacity, 100, '5 completions in 0.1 s at ELU 0.5')
})

t.test('shedding episodes: start on the first refusal, stop after a quiet second', async t => {
  const c = controller()
  c.onWindow(busy, 100)
  c.acquire(DEFAULT_CLASS)
  c.acquire(DEFAULT_CLASS)
  c.acquire(DEFAULT_CLASS)
  c.acquire(DEFAULT_CLASS)
  const start = c.onWindow(busy, 200)
  t.same(start, { type: 'start', limit: 2, inflight: 2, saturation: c.saturation })
  t.equal(c.snapshot().shedding, true)
  c.acquire(DEFAULT_CLASS)
  t.equal(c.onWindow(busy, 300), undefined, 'still shedding: no new event')
  t.equal(c.onWindow(busy, 1200), undefined, 'quiet for 0.9 s: not over yet')
  const stop = c.onWindow(busy, 1300)
  t.same(stop, { type: 'stop', rejected: 3, durationMs: 100 })
  t.equal(c.snapshot().shedding, false)
  t.equal(c.onWindow(busy, 1400), undefined)
})

t.test('window reports: what each window saw and decided, built only while someone subscribes', async t => {
  const reports: WindowReport[] = []
  const windows = { hasSubscribers: false, publish: (r: WindowReport) => { reports.push(r) } }
  const c = new AdmissionController(base, 0, { windows })
  c.onWindow(busy, 100)
  t.equal(reports.length, 0, 'no subscriber: nothing published')
  windows.hasSubscribers = true
  for (let i = 0; i < 4; i++) c.acquire(DEFAULT_CLASS)
  c.release(10, true)
  c.onWindow(busy, 200)
  t.same(reports, [{
    at: 200,
    durationMs: 100,
    arrivals: 4,
    refused: 2,
    completed: 1,
    inflight: 1,
    elu: 1,
    delayP99Ms: 4,
    capacity: 0,
    baselineMs: 0,
    limit: 2,
    enforcing: true,
    lateTurns: false,
    shedding: true
  }], 'two admitted at the limit of 2, two refused, one finished; nothing learned from one completion')
  c.onWindow(idle, 300)
  t.match(reports[1], { at: 300, arrivals: 0, refused: 0, completed: 0, inflight: 1, elu: 0.1, enforcing: false, shedding: true })
})

t.test('Retry-After follows the shedding state', async t => {
  const c = controller()
  c.onWindow(busy, 0)
  c.acquire(DEFAULT_CLASS)
  c.acquire(DEFAULT_CLASS)
  for (let now = 100; now <= 3100; now += 100) {
    c.acquire(DEFAULT_CLASS)
    c.onWindow(busy, now)
  }
  t.equal(c.snapshot().retryAfterSeconds, 4, 'doubled at 1.1 s and 3.1 s of shedding')
})

t.test('saturation: ≈ ELU below overload, offered ÷ capacity above it, smoothed over seconds; never NaN', async t => {
  const c = controller({ initialLimit: 1000, maxLimit: 10000 })
  t.equal(c.onWindow({ durationMs: NaN, elu: NaN, delayP99Ms: NaN }, 50), undefined)
  t.equal(c.saturation, 0)
  t.equal(c.elu, 0)
  t.equal(c.delayP99Ms, 0)
  const w = 100 / SATURATION_SMOOTHING_MS
  c.onWindow({ durationMs: 100, elu: 0.6, delayP99Ms: 2 }, 100)
  t.equal(c.saturation, w * 0.6, 'capacity unknown: moves towards ELU by a window\'s share of the time constant')
  // Teach capacity: 40 done in 100 ms at ELU 0.5 → 800/s.
  for (let i = 0; i < 40; i++) { c.acquire(DEFAULT_CLASS); c.release(10, true) }
  c.onWindow({ durationMs: 100, elu: 0.5, delayP99Ms: 2 }, 200)
  t.equal(c.limiter.capacity, 800)
  let expected = w * 0.6 + w * (0.5 - w * 0.6)
  t.equal(c.saturation, expected, 'capacity seen on 40 completions only: still ELU')
  // 10x the capacity offered in one window, before the estimate is trusted: at most ELU.
  for (let i = 0; i < 800; i++) c.acquire(DEFAULT_CLASS)
  c.onWindow({ durationMs: 100, elu: 1, delayP99Ms: 9 }, 300)
  expected += w * (1 - expected)
  t.equal(c.saturation, expected, 'a cold estimate never makes the signal overshoot')
  // Once the estimate has seen SATURATION_CONFIDENCE completions, 10x reads as 10x.
  for (let i = 0; i < SATURATION_CONFIDENCE; i++) { c.acquire(DEFAULT_CLASS); c.release(10, true) }
  c.onWindow({ durationMs: 100, elu: 1, delayP99Ms: 0 }, 400)
  const capacity = c.limiter.capacity
  t.ok(c.limiter.learned >= SATURATION_CONFIDENCE)
  for (let i = 0; i < capacity; i++) c.acquire(DEFAULT_CLASS)
  c.onWindow({ durationMs: 1000, elu: 1, delayP99Ms: 9 }, 1400)
  expected = c.saturation
  // A window as long as the smoothing constant (or longer) jumps all the way: 10 s at 10x capacity.
  for (let i = 0; i < capacity * 100; i++) c.acquire(DEFAULT_CLASS)
  c.onWindow({ durationMs: 10_000, elu: 1, delayP99Ms: 9 }, 11_400)
  t.ok(Math.abs(c.saturation - 10) < 0.01, `offered ÷ capacity: ten times (${c.saturation})`)
  t.ok(expected > 0.2 && expected < 1, 'a second at capacity moves a fifth of the way to 1')
  const snap = c.snapshot()
  t.equal(snap.eventLoopDelaySeconds, 0.009)
  t.equal(snap.eventLoopUtilization, 1)
  t.equal(snap.capacity, capacity)
  t.ok(Object.isFrozen(snap))
})

t.test('a sudden overload is met before the window closes: a loop busy for the interval enforces at once', async t => {
  const { loop, turns, c } = withTurns()
  c.onWindow(idle, 100)
  // Short turns, no idle: in-flight climbs past the limit (2) while the loop is not yet standing.
  for (let i = 0; i < 4; i++) {
    t.equal(c.acquire(DEFAULT_CLASS), 'admitted', `turn ${i}: not standing yet`)
    loop.work(20)
    loop.endTurn()
  }
  t.equal(turns.standing(), false, '80 ms')
  t.equal(c.acquire(DEFAULT_CLASS), 'admitted', 'at the limit but the loop has been busy only 80 ms')
  loop.work(30)
  loop.endTurn()
  t.equal(c.acquire(DEFAULT_CLASS), 'rejected', 'busy 110 ms without a break: the limit is enforced at once')
  loop.endTurn()
  for (let i = 0; i < 5; i++) c.release(10, true)
  loop.wait(5)
  t.equal(c.acquire(DEFAULT_CLASS), 'admitted', 'below the limit again')
  t.equal(c.acquire(DEFAULT_CLASS), 'admitted')
  t.equal(c.acquire(DEFAULT_CLASS), 'rejected', 'enforced until the window closes, idle or not')
  loop.endTurn()
  c.onWindow(idle, 200)
  t.equal(c.acquire(DEFAULT_CLASS), 'admitted', 'the window decides again')
  loop.endTurn()
})

/** Turns of three 10 ms synchronous requests: each admitted one finishes before the next is read. */
function syncTurns (loop: FakeLoop, c: AdmissionController, turns: number): number[] {
  const perTurn: number[] = []
  for (let i = 0; i < turns; i++) {
    let admitted = 0
    for (let r = 0; r < 3; r++) {
      if (c.acquire(DEFAULT_CLASS) === 'admitted') {
        admitted++
        loop.work(10)
        c.release(10, true)
      } else {
        loop.work(0.05)
      }
    }
    perTurn.push(admitted)
    loop.endTurn()
  }
  return perTurn
}

t.test('a synchronous overload is shed by the turn budget although in-flight stays at 0', async t => {
  const { loop, c } = withTurns({ initialLimit: 50 })
  const perTurn = syncTurns(loop, c, 12)
  t.same(perTurn.slice(0, 4), [3, 3, 3, 3], 'four turns of 30 ms: late for 120 ms')
  t.same(perTurn.slice(-3), [1, 1, 1], 'then one request per turn')
  t.equal(c.inflight, 0)
  t.equal(c.totals.rejected.limit, 36 - perTurn.reduce((a, b) => a + b, 0))
})

t.test('connections waiting to be accepted: the limit is enforced at a quarter', async t => {
  // Learned first: a process that has not learned its capacity refuses everything in such a run (the
  // cold surge rule, below).
  const { loop, turns, c } = withTurns({ initialLimit: 8, maxLimit: 8 })
  learn400(loop, c, 100)
  t.equal(c.limit, 8)
  loop.wait(1)
  for (let i = 0; i < ACCEPT_RUN; i++) {
    turns.connection()
    loop.work(4)
    loop.endTurn()
  }
  turns.connection()
  t.equal(c.acquire(DEFAULT_CLASS), 'admitted')
  t.equal(c.acquire(DEFAULT_CLASS), 'admitted')
  t.equal(c.acquire(DEFAULT_CLASS), 'rejected', '2 of 8 in flight')
  loop.endTurn()
})

/** `n` busy turns of `ms`, each accepting a connection and reading one request; the verdicts. */
function surgeTurns (loop: FakeLoop, turns: LoopTurns, c: AdmissionController, n: number, ms: number): string[] {
  const verdicts: string[] = []
  for (let i = 0; i < n; i++) {
    turns.connection()
    verdicts.push(c.acquire(DEFAULT_CLASS))
    loop.work(ms)
    loop.endTurn()
  }
  return verdicts
}

t.test('regression: a fresh process admitted the first 100 ms of a 10x burst of clients opening connections', async t => {
  // Each turn accepts a connection and reads the request of the one before it: turns of 2 ms (1.5 ms of
  // a cold route, and the accept), 10 in the burst's first 20 ms as traced. Nothing is learned yet, and
  // the limit (50) is far away.
  const { loop, turns, c } = withTurns({ initialLimit: 50 })
  loop.wait(2000)
  const verdicts = surgeTurns(loop, turns, c, 20, 2)
  t.same(verdicts.slice(0, SURGE_RUN), Array(SURGE_RUN).fill('admitted'), 'the first turns of a run, as a pool opening at once')
  t.same(verdicts.slice(SURGE_RUN), Array(20 - SURGE_RUN).fill('rejected'), 'then every request while connections keep coming')
  t.equal(c.totals.rejected.limit, 20 - SURGE_RUN)
  t.equal(c.acquire(DEFAULT_CLASS), 'rejected', 'a turn without a new connection: still refused, the run ends when this turn closes')
  loop.work(1.5)
  loop.endTurn()
  t.equal(c.acquire(DEFAULT_CLASS), 'admitted', 'the run is over')
  loop.endTurn()
  loop.wait(1)
  surgeTurns(loop, turns, c, 20, 1.5)
  t.equal(turns.surge(), true)
  t.equal(c.limiter.capacity, 0)
  t.equal(c.acquire(DEFAULT_CLASS), 'rejected', 'a second surge, still cold')
  loop.endTurn()
})

t.test('regression: between the runs of a cold surge, a 4x burst of a fresh process was admitted blind', async t => {
  const { loop, turns, c } = withTurns({ initialLimit: 8 })
  loop.wait(2000)
  t.same(surgeTurns(loop, turns, c, SURGE_RUN + 2, 2), [...Array(SURGE_RUN).fill('admitted'), 'rejected', 'rejected'])
  t.equal(c.inflight, SURGE_RUN)
  loop.wait(1)
  t.equal(c.acquire(DEFAULT_CLASS), 'rejected', `${SURGE_RUN} in flight: over a quarter of the limit (2)`)
  t.equal(turns.surge(), false, 'the loop idled: the run is broken')
  for (let i = 0; i < SURGE_RUN - 1; i++) c.release(20, true)
  t.equal(c.acquire(DEFAULT_CLASS), 'admitted', '1 in flight')
  t.equal(c.acquire(DEFAULT_CLASS), 'rejected', '2 in flight')
  loop.endTurn()
  // Warm after COLD_ADMISSIONS admissions, capacity learned or not (a service of long-lived streams
  // learns none): the quarter ends with the rule.
  c.release(20, true)
  c.release(20, true)
  for (let i = c.totals.admitted; i < COLD_ADMISSIONS; i++) {
    loop.wait(1)
    t.equal(c.acquire(DEFAULT_CLASS), 'admitted')
    c.release(20, true)
    loop.endTurn()
  }
  loop.wait(1)
  t.equal(c.limiter.capacity, 0)
  t.equal(c.acquire(DEFAULT_CLASS), 'admitted')
  t.equal(c.acquire(DEFAULT_CLASS), 'admitted')
  t.equal(c.acquire(DEFAULT_CLASS), 'admitted', '2 in flight: the quarter (2) is over, the limit is 8')
  loop.endTurn()
})

t.test('a pool of 20 connections opened at once on a light route: a fresh process admits them all', async t => {
  const { loop, turns, c } = withTurns({ initialLimit: 50 })
  loop.wait(2000)
  t.same(surgeTurns(loop, turns, c, 20, 0.3), Array(20).fill('admitted'), '20 turns of 0.3 ms: under the 10 ms span')
})

t.test('the cold surge rule is off during the startup grace and in observe mode', async t => {
  // 12 turns of 2 ms: a surge, not yet an accept backlog (16 turns over 25 ms).
  const grace = withTurns({ initialLimit: 50, graceMs: 1000 })
  grace.loop.wait(2000)
  t.same(surgeTurns(grace.loop, grace.turns, grace.c, 12, 2), Array(12).fill('admitted'))
  t.equal(grace.turns.surge(), true)
  const observe = withTurns({ initialLimit: 50, mode: 'observe' })
  observe.loop.wait(2000)
  t.same(surgeTurns(observe.loop, observe.turns, observe.c, 12, 2), Array(12).fill('admitted'), 'not even a would-be refusal')
  t.equal(observe.turns.surge(), true)
  t.equal(observe.c.totals.observed.limit, 0)
})

t.test('the cold surge rule is off once the process has admitted COLD_ADMISSIONS requests, capacity learned or not', async t => {
  const { loop, turns, c } = withTurns({ initialLimit: 50 })
  for (let i = 0; i < COLD_ADMISSIONS; i++) {
    t.equal(c.acquire(DEFAULT_CLASS), 'admitted')
    c.release(20, true)
    loop.endTurn()
    loop.wait(1)
  }
  t.equal(c.limiter.capacity, 0, 'no window closed: nothing learned')
  t.same(surgeTurns(loop, turns, c, 12, 2), Array(12).fill('admitted'), 'a surge, not yet an accept backlog')
  t.equal(turns.surge(), true)
})

t.test('a surge is left to the other rules once the capacity is learned', async t => {
  const { loop, turns, c } = withTurns({ initialLimit: 50 })
  learn400(loop, c, 100)
  t.ok(c.limiter.capacity > 0, `learned ${Math.round(c.limiter.capacity)}/s`)
  loop.wait(1)
  const verdicts = surgeTurns(loop, turns, c, SURGE_RUN + 2, 1.5)
  t.equal(turns.surge(), true)
  t.same(verdicts, Array(SURGE_RUN + 2).fill('admitted'))
})

/** Opens `connections` connections at once on a busy loop: one accepted per turn of `ms`. */
function openAtOnce (loop: FakeLoop, turns: LoopTurns, connections: number, ms: number): void {
  for (let i = 0; i < connections; i++) {
    turns.connection()
    loop.work(ms)
    loop.endTurn()
  }
}

t.test('connections opened at once on a cheap route are not refused by the accept backlog', async t => {
  const { loop, turns, c } = withTurns({ initialLimit: 8 })
  // 8000 hello-world requests in a busy window: 12.5 µs of loop each, less than CHEAP_REQUEST_MS.
  for (let i = 0; i < 8000; i++) {
    c.acquire(DEFAULT_CLASS)
    c.release(0.1, true)
  }
  c.onWindow({ durationMs: 100, elu: 1, delayP99Ms: 0 }, 100)
  t.ok(1000 / c.limiter.capacity < CHEAP_REQUEST_MS, `learned ${Math.round(c.limiter.capacity)}/s`)
  t.equal(turns.refusalsShorten, false)
  // 200 connections, as a client pool reconnecting: turns of 2 ms, each accepting one.
  openAtOnce(loop, turns, 200, 2)
  t.equal(turns.acceptBacklog(), false)
  turns.connection()
  let served = 0
  for (let i = 0; i < 200; i++) {
    // Each response is out before the next request is read, as a hello-world route's are.
    if (c.acquire(DEFAULT_CLASS) === 'admitted') served++
    loop.work(0.0125)
    c.release(0.1, true)
  }
  loop.endTurn()
  t.equal(served, 200, 'a turn of 200 requests of 12.5 µs each: all served')
  t.equal(c.totals.rejected.limit, 0)

  // The same connections on an expensive route: refusing shortens the turns, the backlog is shed.
  const expensive = withTurns({ initialLimit: 8 })
  learn400(expensive.loop, expensive.c, 100)
  t.equal(expensive.turns.refusalsShorten, true, `learned ${Math.round(expensive.c.limiter.capacity)}/s`)
  openAtOnce(expensive.loop, expensive.turns, 200, 2)
  t.equal(expensive.turns.acceptBacklog(), true)
  expensive.turns.connection()
  t.ok(readTurn(expensive.loop, expensive.c, 200, 0.0125) < 200, 'refused past the accept budget')
})

/** One window of `completed` requests of `ms` each, on a loop busy `elu` of 100 ms; `refused` more refused (a heap ceiling). */
function cheapWindow (c: AdmissionController, nowMs: number, completed: number, elu: number, refused = 0): void {
  for (let i = 0; i < completed; i++) {
    c.acquire(DEFAULT_CLASS)
    c.release(0.1, true)
  }
  for (let i = 0; i < refused; i++) c.acquire(DEFAULT_CLASS, undefined, 'heap')
  c.onWindow({ durationMs: 100, elu, delayP99Ms: 0 }, nowMs)
}

t.test('the cheap-process switch of the accept backlog: from quiet windows once learned, held while refusing', async t => {
  const { turns, c } = withTurns({ initialLimit: 8 })
  cheapWindow(c, 100, 100, 0.0125)
  t.ok(c.limiter.capacity > 10_000, `${Math.round(c.limiter.capacity)}/s`)
  t.equal(turns.refusalsShorten, true, `learned from ${c.limiter.learned} completions only`)
  cheapWindow(c, 200, SATURATION_CONFIDENCE, 0.0375)
  t.equal(turns.refusalsShorten, false, `cheap: ${Math.round(c.limiter.capacity)}/s`)
  // A shed closed loop: refusals take the loop, the estimate falls below 10 000/s, the switch holds.
  for (let i = 0; i < 8; i++) cheapWindow(c, 300 + 100 * i, 40, 1, 1)
  t.ok(c.limiter.capacity * CHEAP_REQUEST_MS < 1000, `${Math.round(c.limiter.capacity)}/s while refusing`)
  t.equal(turns.refusalsShorten, false, 'held while refusing')
  cheapWindow(c, 1200, 40, 1)
  t.equal(turns.refusalsShorten, true, `a quiet window at ${Math.round(c.limiter.capacity)}/s`)
})

/**
 * Teaches the controller 400 requests/s at 20 ms (limit 12 + 4 x sqrt(12) = 26 with headroom 0.5):
 * one window of 28 requests at ELU 0.7, the loop idle between them.
 */
function learn400 (loop: FakeLoop, c: AdmissionController, nowMs: number): void {
  for (let i = 0; i < 28; i++) {
    c.acquire(DEFAULT_CLASS)
    loop.endTurn()
    loop.wait(1)
  }
  for (let i = 0; i < 28; i++) c.release(20, true)
  c.onWindow({ durationMs: 100, elu: 0.7, delayP99Ms: 0 }, nowMs)
}

/** One turn reading `n` requests, each taking `ms` of the loop; how many were admitted. */
function readTurn (loop: FakeLoop, c: AdmissionController, n: number, ms: number): number {
  let admitted = 0
  for (let i = 0; i < n; i++) {
    if (c.acquire(DEFAULT_CLASS) === 'admitted') admitted++
    loop.work(ms)
  }
  loop.endTurn()
  return admitted
}

/** Turns of one request and 1 ms of work each, the loop never idle; how many were admitted. */
function busyTurns (loop: FakeLoop, c: AdmissionController, n: number): number {
  let admitted = 0
  for (let i = 0; i < n; i++) {
    if (c.acquire(DEFAULT_CLASS) === 'admitted') admitted++
    loop.work(1)
    loop.endTurn()
  }
  return admitted
}

/**
 * `n` requests read and gone at once (their clients left), over `ms` of busy loop: the window's
 * arrivals, with nothing held. At 400/s a window of 100 ms finishes 40; 80 is an overload of 2x.
 */
function arrive (loop: FakeLoop, c: AdmissionController, n: number, ms = 0): void {
  for (let i = 0; i < n; i++) {
    if (c.acquire(DEFAULT_CLASS) !== 'rejected') c.release(0, false)
    loop.work(ms / n)
  }
  loop.endTurn()
}

t.test('regression: a step to 2x let in-flight climb far past the learned limit before the loop had been busy for the interval', async t => {
  const { loop, turns, c } = withTurns()
  learn400(loop, c, 100)
  t.equal(c.limit, 26)
  t.equal(busyTurns(loop, c, 40), 26, 'the learned limit, enforced once the loop has been busy 5 ms')
  t.equal(turns.standing(), false, 'long before the interval')
  t.equal(c.totals.rejected.limit, 14)
})

t.test('in-flight at the learned limit on a loop busy for less than 5 ms is admitted', async t => {
  const { loop, c } = withTurns()
  learn400(loop, c, 100)
  loop.wait(1)
  for (let i = 0; i < 26; i++) c.acquire(DEFAULT_CLASS)
  loop.work(1)
  loop.endTurn()
  t.equal(busyTurns(loop, c, 4), 4, 'busy 1-4 ms: random arrivals may bunch up that long')
  t.equal(busyTurns(loop, c, 1), 0, 'busy 5 ms at the end of the last turn: enforced')
})

t.test('regression: a step to 4x admitted all it read for the first 25 ms of busy loop (the learned limit waited for a quarter of the interval)', async t => {
  const { loop, c } = withTurns()
  learn400(loop, c, 100)
  loop.wait(1)
  t.equal(readTurn(loop, c, 30, 0.2), 30, 'one turn reading the step\'s first 30 requests')
  t.equal(readTurn(loop, c, 1, 1), 0, 'in-flight 30 over the limit of 26 on a loop busy 6 ms: refused')
  t.equal(c.totals.rejected.limit, 1)
})

t.test('regression: while the limit bound, a turn of continuations admitted as many requests as they freed (20 ms awaits came back in clumps)', async t => {
  const { loop, c } = withTurns()
  learn400(loop, c, 100)
  arrive(loop, c, 80)
  c.onWindow(busy, 200)
  t.equal(readTurn(loop, c, 30, 0.05), 26, 'at the limit: the limit binds')
  loop.work(10) // the next turn's timers: ten awaits that expired together finish
  for (let i = 0; i < 10; i++) c.release(22, true)
  t.equal(readTurn(loop, c, 10, 0.05), 0, 'ten permits free, but the turn has run its 5 ms budget')
  t.equal(readTurn(loop, c, 10, 0.05), 10, 'the next turn takes them')
  arrive(loop, c, 30) // 80 arrivals in the window: twice capacity
  c.onWindow(busy, 300)
  for (let i = 0; i < 10; i++) c.release(22, true)
  loop.work(6)
  t.equal(readTurn(loop, c, 10, 0.05), 0, 'the window after a binding one still spreads them')
})

/**
 * Requests of `route` read one per turn after 0.2 ms idle, each running `runMs` when admitted and the
 * rest of 1 ms after the turn (a continuation); the outcomes.
 */
function spacedReads (loop: FakeLoop, c: AdmissionController, route: RouteCost, n: number, runMs = 1): string {
  let outcomes = ''
  for (let i = 0; i < n; i++) {
    loop.wait(0.2)
    outcomes += c.acquire(DEFAULT_CLASS, undefined, undefined, route) === 'admitted' ? 'a' : '.'
    loop.work(runMs)
    loop.endTurn()
    loop.work(1 - runMs)
  }
  return outcomes
}

/**
 * Learned 400/s (a request costs 2.5 ms of loop), 80 arrivals in the last window (2x), the limit of 26
 * bound in this window, 20 permits free again.
 */
function bound (loop: FakeLoop, c: AdmissionController): void {
  learn400(loop, c, 100)
  arrive(loop, c, 80)
  c.onWindow(busy, 200)
  readTurn(loop, c, 30, 0.05)
  for (let i = 0; i < 20; i++) c.release(22, true)
}

t.test('regression: while the limit bound, the permits freed went to arrivals read one after another at twice capacity, and came back as trains', async t => {
  const { loop, c } = withTurns()
  bound(loop, c)
  t.equal(c.costs.meanMs, 2.5)
  t.equal(c.totals.rejected.limit, 4, 'the limit bound')
  const work = c.costs.register()
  work.prefixMs = 2 // half its cost runs when admitted (1 ms, an await, 1 ms)
  // 20 arrivals 1.2 ms apart: 24 ms hold 1.3 x 24 = 31 ms of loop, plus the burst of 5.
  const paced = spacedReads(loop, c, work, 20)
  t.equal(paced, 'aaaaaa.a.aa.aa.a.aa.', 'the burst, then spaced by the cost at 1.3 times the pace of the loop')
  t.equal(c.totals.rejected.limit, 4 + 6, 'refused as the limit refuses')
  t.equal(work.runMinMs, 1, 'its run at admission, measured for each of the 14 admitted: the shortest')
  c.onWindow(busy, 300)
  t.equal(work.prefixMs, 2 + RUN_SMOOTHING * (1 - 2), 'the window\'s shortest, smoothed into the figure the pace reads')
  t.equal(work.runMinMs, Infinity, 'a new window')
})

t.test('a route that awaits before it works is not paced: its run at admission is measured', async t => {
  for (const prefixMs of [-1, 1]) {
    const { loop, c } = withTurns()
    bound(loop, c)
    const route = c.costs.register()
    route.prefixMs = prefixMs
    let outcomes = ''
    for (let chunk = 0; chunk < 3; chunk++) {
      const reads = spacedReads(loop, c, route, 20, 0)
      for (let i = 0; i < reads.split('a').length - 1; i++) c.release(22, true)
      outcomes += reads
      // The end of a window, for the cost model alone: the limit stays as it is.
      c.costs.learn(0, 0, c.costs.meanMs)
    }
    t.equal(outcomes.slice(-20), 'a'.repeat(20), `from ${prefixMs} ms: ${outcomes}`)
    t.ok(route.prefixMs < 0.625, `measured ${route.prefixMs} ms`)
  }
})

t.test('nothing is paced while the limit does not bind, before a cost is known, on a cheap route, or in observe mode', async t => {
  const { loop, c } = withTurns()
  learn400(loop, c, 100)
  const route = c.costs.register()
  route.prefixMs = 1
  t.equal(spacedReads(loop, c, route, 20), 'a'.repeat(20), 'no refusal in this window or the last')

  const cold = withTurns({ initialLimit: 50 })
  cold.c.onWindow(busy, 100)
  t.equal(cold.c.costs.meanMs, 0)
  t.equal(readTurn(cold.loop, cold.c, 60, 0.05), 50, 'the initial limit binds')
  for (let i = 0; i < 20; i++) cold.c.release(22, true)
  const unknown = cold.c.costs.register()
  unknown.prefixMs = 1
  t.equal(spacedReads(cold.loop, cold.c, unknown, 20), 'a'.repeat(20), 'no cost known')

  const cheap = withTurns()
  bound(cheap.loop, cheap.c)
  const light = cheap.c.costs.register()
  for (let w = 0; w < 20; w++) {
    light.completed = 100 + w % 7
    cheap.c.costs.learn(0.9 * light.completed, 0, 2.5)
  }
  t.ok(Math.abs(cheap.c.costs.costOf(light) - 0.9) < 0.01 && PACED_MIN_COST_MS > 0.9, `${cheap.c.costs.costOf(light)} ms`)
  light.prefixMs = 0.24
  // 20 read in one turn, 0.24 ms each: 18 ms of cost against a burst of 5, within the turn's budget.
  let outcomes = ''
  for (let i = 0; i < 20; i++) {
    outcomes += cheap.c.acquire(DEFAULT_CLASS, undefined, undefined, light) === 'admitted' ? 'a' : '.'
    cheap.loop.work(0.24)
  }
  cheap.loop.endTurn()
  t.equal(outcomes, 'a'.repeat(20), 'a route under PACED_MIN_COST_MS')

  const observe = withTurns({ mode: 'observe' })
  bound(observe.loop, observe.c)
  t.equal(observe.c.totals.observed.limit, 4, 'the limit bound')
  const watched = observe.c.costs.register()
  watched.prefixMs = 1
  t.equal(spacedReads(observe.loop, observe.c, watched, 20), 'a'.repeat(20), 'observe mode')
})

/** Ends a turn that read nothing, so that what the loop runs next counts towards the next turn. */
function emptyTurn (loop: FakeLoop, turns: LoopTurns): void {
  turns.connection()
  loop.endTurn()
}

t.test('a long turn admits up to the limit while in-flight has not met it', async t => {
  const { loop, turns, c } = withTurns()
  learn400(loop, c, 100)
  c.onWindow(busy, 200)
  emptyTurn(loop, turns)
  loop.work(10)
  t.equal(c.acquire(DEFAULT_CLASS), 'admitted')
  t.ok(turns.ran() > turns.budget(), 'the turn has run its budget')
  t.equal(readTurn(loop, c, 19, 0.05), 19, 'under pressure, no refusal at the limit: the turn budget alone (not late) refuses nothing')
})

t.test('the turn rule stays on while its own refusals go on, and a window without refusals ends it', async t => {
  const { loop, turns, c } = withTurns()
  learn400(loop, c, 100)
  arrive(loop, c, 80)
  c.onWindow(busy, 200)
  t.equal(readTurn(loop, c, 30, 0.05), 26, 'in-flight meets the limit')
  for (let i = 0; i < 26; i++) c.release(22, true)
  emptyTurn(loop, turns)
  loop.work(10)
  t.equal(readTurn(loop, c, 10, 0.05), 0, 'a long turn in the same window: refused by the turn rule')
  arrive(loop, c, 40) // 80 in the window
  c.onWindow(busy, 300)
  emptyTurn(loop, turns)
  loop.work(10)
  t.equal(readTurn(loop, c, 10, 0.05), 0, 'the window after: still on (it met the limit)')
  arrive(loop, c, 70)
  c.onWindow(busy, 400)
  emptyTurn(loop, turns)
  loop.work(10)
  t.equal(readTurn(loop, c, 10, 0.05), 0, 'a window whose refusals were its own: still on (a synchronous route never meets the limit)')
  c.onWindow(busy, 500)
  c.onWindow(busy, 600)
  emptyTurn(loop, turns)
  loop.work(10)
  t.equal(readTurn(loop, c, 10, 0.05), 10, 'after a window without refusals: off')
})

t.test('regression: at 0.8x, one refusal switched the turn rule on, and it refused what the window\'s long turns read', async t => {
  const { loop, turns, c } = withTurns()
  learn400(loop, c, 100)
  for (let i = 0; i < 24; i++) c.acquire(DEFAULT_CLASS) // held: their downstream is slow today
  arrive(loop, c, 8, 40) // 32 arrivals in the window: 0.8x
  c.onWindow(busy, 200)
  loop.wait(40)
  t.equal(readTurn(loop, c, 3, 0.05), 2, 'in-flight meets the limit of 26: one refusal')
  for (let i = 0; i < 20; i++) c.release(22, true)
  emptyTurn(loop, turns)
  loop.work(10)
  t.equal(readTurn(loop, c, 10, 0.05), 10, '13 arrivals in 52 ms and 32 in the window before: no excess demand, the turn rule stays off')
  t.equal(c.totals.rejected.limit, 1)
})

t.test('regression: at 0.8x, the requests a 45 ms pause held back met the limit (a stall was a whole interval)', async t => {
  const { loop, c } = withTurns()
  learn400(loop, c, 100)
  for (let i = 0; i < 20; i++) c.acquire(DEFAULT_CLASS)
  loop.endTurn()
  c.onWindow(busy, 200)
  loop.wait(1)
  loop.work(45) // a collection between two turns: 14 requests arrive meanwhile (0.8 x 400/s)
  t.equal(readTurn(loop, c, 14, 0.1), 14, 'over the limit of 26 by what the loop would have finished in the pause (18)')
  t.equal(c.totals.rejected.limit, 0)
})

t.test('a demand beyond the loop seen in this window alone switches the turn rule on once a quarter of a window has passed', async t => {
  // The last window had no arrival at all: pooled with it, this one's arrivals ask for less than the loop has.
  for (const [ms, arrivals, after] of [[5, 5, 10], [20, 20, 0]] as const) {
    const { loop, turns, c } = withTurns()
    learn400(loop, c, 100)
    c.onWindow(idle, 200)
    arrive(loop, c, arrivals, ms)
    t.equal(readTurn(loop, c, 30, 0.05), 26, 'the limit binds')
    for (let i = 0; i < 10; i++) c.release(22, true)
    emptyTurn(loop, turns)
    loop.work(10)
    t.equal(readTurn(loop, c, 10, 0.05), after, `${arrivals + 30} arrivals ${ms + 11.5} ms into the window, ${0.4 * (ms + 11.5)} at capacity`)
  }
})

t.test('observe mode: the turn rule does not count long turns as refusals', async t => {
  const loop = fakeLoop()
  const turns = new LoopTurns({ budgetMs: 5, intervalMs: 100 }, loop.clock)
  const c = new AdmissionController({ ...base, mode: 'observe' }, 0, { turns, now: () => loop.now })
  learn400(loop, c, 100)
  c.onWindow(busy, 200)
  for (let i = 0; i < 30; i++) c.acquire(DEFAULT_CLASS)
  t.equal(c.totals.observed.limit, 4, 'in-flight meets the limit of 26')
  emptyTurn(loop, turns)
  loop.work(70) // a long turn: the permits enforce would have held have expired (26 / 400/s = 65 ms)
  for (let i = 0; i < 30; i++) c.release(22, true)
  t.equal(readTurn(loop, c, 10, 0.05), 10, 'admitted, not counted as would-be refusals')
  t.equal(c.totals.observed.limit, 4)
})

t.test('regression: the backlog of a 200 ms stall at 0.7x was refused, and so were the arrivals behind it', async t => {
  const { loop, c } = withTurns({ initialLimit: 50 })
  learn400(loop, c, 100)
  t.equal(c.limiter.capacity, 400)
  t.equal(c.limit, 26)
  loop.work(200) // a synchronous task: 56 requests arrive meanwhile (0.7 x 400/s)
  c.onWindow(busy, 200) // its window was busy: pressure, the limit is enforced
  t.equal(readTurn(loop, c, 56, 0.1), 56, 'the backlog is read and admitted: the loop would have finished 80 in the stall')
  loop.work(56) // their continuations
  loop.endTurn()
  const behind = [readTurn(loop, c, 17, 1), readTurn(loop, c, 12, 1)]
  t.same(behind, [17, 12], 'the arrivals behind it are admitted while it drains')
  t.equal(c.totals.rejected.limit, 0)
  t.equal(c.inflight, 85, 'over the limit of 26 by the backlog')
})

t.test('an overload that began in a stall is shed again: the stall allowance ends at the first request over the raised limit', async t => {
  const { loop, c } = withTurns({ initialLimit: 50 })
  learn400(loop, c, 100)
  loop.work(200) // 4x: 320 requests arrive in the stall
  c.onWindow(busy, 200)
  t.equal(readTurn(loop, c, 320, 0.05), 26 + 80, 'the limit and what the stall would have served')
  for (let i = 0; i < 80; i++) c.release(0, false)
  t.equal(c.inflight, 26)
  t.equal(readTurn(loop, c, 10, 0.05), 0, 'the allowance is spent: the limit alone')
})

t.test('a long stall\'s allowance covers half a second of it', async t => {
  const { loop, c } = withTurns({ initialLimit: 50 })
  learn400(loop, c, 100)
  loop.work(2000) // a 2 s synchronous task at 0.3x: 240 requests held back
  c.onWindow(busy, 2100)
  t.equal(STALL_ALLOWANCE_MAX_MS, 500)
  t.equal(readTurn(loop, c, 240, 0.05), 26 + 200, 'the limit and 500 ms of the loop\'s work')
})

t.test('a stall while shedding is a pause in the overload: its backlog gets no allowance', async t => {
  const { loop, c } = withTurns({ initialLimit: 50 })
  learn400(loop, c, 100)
  c.onWindow(busy, 200)
  t.equal(readTurn(loop, c, 40, 0.05), 26, 'a 4x overload shed at the limit')
  c.onWindow(busy, 300)
  t.equal(c.shedding, true)
  loop.work(200)
  for (let i = 0; i < 26; i++) c.release(0, false)
  t.equal(readTurn(loop, c, 320, 0.05), 26, 'the limit alone')
})

t.test('a stall allowance shrinks as a backlog below capacity drains', async t => {
  const { loop, c } = withTurns({ initialLimit: 50 })
  learn400(loop, c, 100)
  loop.work(200)
  c.onWindow(busy, 200)
  t.equal(readTurn(loop, c, 26, 0.1), 26)
  let now = 200
  for (let i = 0; i < 5; i++) c.onWindow(busy, now += 100)
  const left = 80 - 5 * STALL_DRAIN_SHARE * 400 * 0.1
  t.equal(readTurn(loop, c, 60, 0.1), left, `${left} left after 0.5 s`)
  for (let i = 0; i < 26 + left; i++) c.release(0, false)
  c.onWindow(busy, now += 100)
  t.equal(readTurn(loop, c, 60, 0.1), 26, 'the limit alone once spent')
})

/**
 * A synchronous 10 ms route learned at 100/s, then 30 turns of three ready requests (an admitted one
 * runs before the next is read) after 200 ms of the loop idle or busy elsewhere; admitted per turn.
 */
function syncAfter (gap: 'idle' | 'stall'): { perTurn: number[], c: AdmissionController } {
  const { loop, c } = withTurns({ initialLimit: 50 })
  for (let i = 0; i < 10; i++) {
    c.acquire(DEFAULT_CLASS)
    loop.work(10)
    c.release(10, true)
    loop.endTurn()
    loop.wait(1)
  }
  c.onWindow({ durationMs: 100, elu: 1, delayP99Ms: 0 }, 100)
  if (gap === 'idle') loop.wait(200)
  else loop.work(200)
  return { perTurn: syncTurns(loop, c, 30), c }
}

t.test('a request over the turn budget uses the stall allowance: a synchronous route after a stall', async t => {
  const calm = syncAfter('idle')
  const stalled = syncAfter('stall')
  t.equal(stalled.c.limiter.capacity, 100, '100/s: 200 ms of stall held back 20 requests\' work')
  const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0)
  t.ok(calm.c.totals.rejected.limit > 20, `without a stall the budget refused ${calm.c.totals.rejected.limit}`)
  t.equal(sum(stalled.perTurn), sum(calm.perTurn) + 20, 'after the stall, 20 more are let in over the budget')
  t.equal(stalled.c.totals.rejected.limit, calm.c.totals.rejected.limit - 20)
  t.same(stalled.perTurn.slice(-3), calm.perTurn.slice(-3), 'then the budget as before')
})

t.test('a startup grace holds even the turn budget', async t => {
  const { loop, turns, c } = withTurns({ graceMs: 1000 })
  for (let i = 0; i < 20; i++) {
    t.equal(c.acquire(DEFAULT_CLASS), 'admitted')
    loop.work(20)
    loop.endTurn()
  }
  t.equal(turns.late(), true)
})

t.test('hard ceilings: in-flight always; loop delay and utilisation from the last window', async t => {
  const c = controller({ maxInflight: 3, maxDelayMs: 50, maxUtilization: 0.95, initialLimit: 100 })
  c.onWindow(idle, 100)
  for (let i = 0; i < 3; i++) t.equal(c.acquire(DEFAULT_CLASS), 'admitted')
  t.equal(c.acquire(DEFAULT_CLASS), 'rejected', 'in-flight ceiling, with an idle loop')
  t.equal(c.totals.rejected.inflight, 1)
  for (let i = 0; i < 3; i++) c.release(1, true)
  c.onWindow({ durationMs: 100, elu: 0.5, delayP99Ms: 60 }, 200)
  t.equal(c.acquire(DEFAULT_CLASS), 'rejected', 'loop delay over its ceiling')
  t.equal(c.totals.rejected.delay, 1)
  c.onWindow({ durationMs: 100, elu: 0.97, delayP99Ms: 10 }, 300)
  t.equal(c.acquire(DEFAULT_CLASS), 'rejected', 'utilisation over its ceiling')
  t.equal(c.totals.rejected.utilization, 1)
  c.onWindow({ durationMs: 100, elu: 0.5, delayP99Ms: 10 }, 400)
  t.equal(c.acquire(DEFAULT_CLASS), 'admitted', 'both back under')
  const observe = controller({ mode: 'observe', maxInflight: 1 })
  observe.acquire(DEFAULT_CLASS)
  t.equal(observe.acquire(DEFAULT_CLASS), 'observed', 'observe refuses nothing')
  t.equal(observe.totals.observed.inflight, 1)
  t.equal(observe.acquire(DEFAULT_CLASS), 'observed', 'and counts only what enforce would have admitted')
})

/** A window in which `n` requests of 10 ms finished, with the given ELU. */
function learn (c: AdmissionController, elu: number, at: number, n = 20): void {
  for (let i = 0; i < n; i++) c.acquire(DEFAULT_CLASS)
  for (let i = 0; i < n; i++) c.release(10, true)
  c.onWindow({ durationMs: 100, elu, delayP99Ms: 0 }, at)
}

t.test('regression: heap/RSS/health refusals kept pressure on and pushed the gain to its maximum', async t => {
  const c = controller()
  learn(c, 0.5, 100)
  const limitBefore = c.limit
  // A failing health check refuses everything for 3 s while the CPU idles.
  for (let w = 1; w <= 30; w++) {
    for (let i = 0; i < 50; i++) c.acquire(DEFAULT_CLASS, undefined, 'health')
    c.onWindow({ durationMs: 100, elu: w === 1 ? 0.95 : 0.8, delayP99Ms: 0 }, 100 + w * 100)
  }
  t.equal(c.limiter.gain, 1, 'the gain did not move')
  t.equal(c.limiter.pressure, false, 'ceiling refusals do not hold pressure')
  t.equal(c.limit, limitBefore)
  t.equal(c.totals.rejected.health, 1500)
  t.equal(c.totals.rejected.limit, 0)
  t.equal(c.shedding, true, 'still an episode: clients are being refused')
})

t.test('regression: in observe mode the gain collapsed to its floor and would_reject overstated enforce', async t => {
  const c = controller({ mode: 'observe' })
  learn(c, 0.5, 100)
  const model = c.limit
  for (let w = 1; w <= 30; w++) {
    // Overload that observe lets through: the loop stays pinned at 1.
    for (let i = 0; i < model + 10; i++) c.acquire(DEFAULT_CLASS)
    for (let i = 0; i < model + 10; i++) c.release(10, true)
    c.onWindow({ durationMs: 100, elu: 1, delayP99Ms: 50 }, 100 + w * 100)
  }
  t.equal(c.limiter.gain, 1, 'observe predicts with the model limit')
  t.ok(c.totals.observed.limit > 0)
  const enforce = controller()
  learn(enforce, 0.5, 100)
  for (let w = 1; w <= 30; w++) {
    for (let i = 0; i < enforce.limit + 10; i++) enforce.acquire(DEFAULT_CLASS)
    enforce.onWindow({ durationMs: 100, elu: 1, delayP99Ms: 50 }, 100 + w * 100)
    while (enforce.inflight > 0) enforce.release(10, true)
  }
  t.ok(enforce.limiter.gain < 1, 'enforce does apply feedback')
})

t.test('draining: every request refused with reason drain; observe mode counts it and lets it through', async t => {
  const c = controller()
  c.draining = true
  t.equal(c.acquire(DEFAULT_CLASS), 'rejected')
  t.equal(c.totals.rejected.drain, 1)
  t.equal(c.snapshot().draining, true)
  const o = controller({ mode: 'observe' })
  o.draining = true
  t.equal(o.acquire(DEFAULT_CLASS), 'observed')
  t.equal(o.totals.observed.drain, 1)
  t.equal(o.inflight, 1)
  t.equal(o.acquire(DEFAULT_CLASS, undefined, 'heap'), 'observed', 'a veto given explicitly wins')
  t.equal(o.totals.observed.heap, 1)
})

t.test('regression: observe mode counted the queue it let build, so would_reject doubled what enforce refuses', async t => {
  // One server finishing 100 requests/s (10 ms each, FIFO), 200 arrivals/s for 10 s, limit 10, loop
  // saturated. Under observe every request is served, so the admitted ones queue behind the others.
  const run = (mode: 'enforce' | 'observe'): number => {
    let now = 0
    const c = new AdmissionController({ ...base, mode, minLimit: 10, maxLimit: 10, initialLimit: 10 }, 0,
      { random: () => 0, now: () => now })
    learn(c, 0.5, 100, 5) // capacity 100/s, baseline 10 ms
    c.onWindow(busy, 200)
    const queue: boolean[] = []
    let refused = 0
    for (now = 1000; now < 11_000; now += 5) {
      const outcome = c.acquire(DEFAULT_CLASS)
      if (outcome !== 'admitted') refused++
      if (outcome !== 'rejected') queue.push(outcome === 'observed')
      if (now % 10 === 5 && queue.length > 0) c.release(10, true, queue.shift())
    }
    return refused / 2000
  }
  const enforce = run('enforce')
  const observe = run('observe')
  t.ok(enforce > 0.45 && enforce < 0.55, `enforce refuses about half: ${enforce}`)
  t.ok(Math.abs(observe - enforce) < 0.1, `observe predicts it: ${observe} vs ${enforce}`)
})

t.test('observe mode without a baseline yet counts the would-be-admitted requests in flight', async t => {
  const c = controller({ mode: 'observe', minLimit: 2, maxLimit: 2, initialLimit: 2 })
  c.onWindow(busy, 100)
  t.equal(c.acquire(DEFAULT_CLASS), 'admitted')
  t.equal(c.acquire(DEFAULT_CLASS), 'admitted')
  t.equal(c.acquire(DEFAULT_CLASS), 'observed')
  c.release(5, false, true)
  t.equal(c.acquire(DEFAULT_CLASS), 'observed', 'the observed one leaving frees nothing enforce held')
  c.release(5, false)
  t.equal(c.acquire(DEFAULT_CLASS), 'admitted')
})

t.test('observe mode without pressure admits everything; the record of would-be permits stays bounded', async t => {
  let now = 0
  const c = new AdmissionController({ ...base, mode: 'observe', minLimit: 2, maxLimit: 2, initialLimit: 2 }, 0,
    { random: () => 0, now: () => now })
  learn(c, 0.5, 100, 5)
  for (let i = 0; i < 10; i++) t.equal(c.acquire(DEFAULT_CLASS), 'admitted', `request ${i}`)
  c.onWindow(busy, 200) // now the limit binds: the record says 3 (its size) are in flight
  now = 1
  t.equal(c.acquire(DEFAULT_CLASS), 'observed')
  now = 10_000
  t.equal(c.acquire(DEFAULT_CLASS), 'admitted', 'the would-be permits have ended')
})
