// Loop turns: how long the event loop has been running the turn in progress, whether it has a standing
// queue, and whether connections are waiting to be accepted. No Fastify: the clock, the loop's idle
// time and the end-of-turn callback are injected, so the logic is a function of plain numbers.
//
// One turn of the loop runs every callback that is ready: expired timers, every readable socket, then
// the check phase (setImmediate). Its length is the delay every await, every refusal and every new
// connection waits: libuv accepts one connection per turn. What the plugin admits decides how long
// turns last, so it bounds them:
//   - late turns (CoDel's standing queue applied to the loop): every turn has run at least its budget
//     for an interval, and the loop never waited for I/O in between. A request read after the turn has
//     run its budget of new requests (from its first) is refused. The continuations a turn runs before
//     its first request are work already admitted, which the concurrency limit bounds: counting them
//     refused requests read after a clump of 20 ms awaits that expired together at 0.8x (once the
//     limit binds the controller counts them: ran(), see admission.ts). This holds
//     synchronous handlers, which never overlap and so never raise in-flight, and it needs nothing
//     learned: it works from a process's first request.
//   - accept backlog: many turns in a row, without an idle moment, each accepted a connection. Clients
//     that open connections on demand wait in the kernel until short turns let them in.
//   - surge: a shorter such run, which a process that has not learned its capacity refuses during
//     (admission.ts).
// A burst of random arrivals below capacity makes a few late turns and then idles; an overload does not.

export interface TurnSettings {
  /**
   * A turn this long or longer is late; while turns are late, what a turn may run before the requests
   * it reads are refused, ms.
   */
  budgetMs: number
  /** Late turns (or a busy loop) for this long without an idle moment = a standing queue, ms. */
  intervalMs: number
}

export interface TurnClock {
  /** Monotonic clock, milliseconds. */
  now: () => number
  /** Cumulative time the loop has waited for I/O, milliseconds (grows only while the loop is idle). */
  idle: () => number
  /** Run a callback at the end of the current turn (setImmediate). */
  atTurnEnd: (callback: () => void) => void
}

/** Idle time below this between two turns is the poll returning at once, not a loop waiting for work. */
export const IDLE_EPSILON_MS = 0.1
/** A turn longer than this many typical turns is late (when that is longer than the target). */
export const TYPICAL_FACTOR = 2
/** A standing queue's budget starts this many times the budget. */
export const RAMP_FACTOR = 4
/** Smoothing of the typical turn length, per turn. */
export const TYPICAL_SMOOTHING = 0.05
/** Busy turns in a row that each accepted a connection before connections count as waiting. */
export const ACCEPT_RUN = 16
/**
 * ... and the share of the interval they must span. A quarter, not half: an idle process hit by a 4x
 * burst of clients opening connections on demand admitted everything for its first 58 ms (one
 * connection accepted per 1.2-3 ms turn, then a 29 ms turn of continuations), and the 503s of its
 * first 0.1 s waited up to 76-81 ms, mostly in the kernel; with a quarter, 50-57 ms, and at 10x
 * 124-210 ms against 345-348.
 */
export const ACCEPT_RUN_SHARE = 0.25
/**
 * The loop ran other work without reading a request for this share of the interval: a stall (see
 * stallEnd), whose backlog the controller lets in. The whole interval until 2026-12-07: at 0.8x with
 * Poisson arrivals that day, the loop paused 25-47 ms between turns 5-21 times in a 10 s run, and the
 * requests held back met the limit or the late turns' budget (with the turn rule kept to a demand of
 * DEMAND_RATE times the loop's time, admission.ts, 0-19 refused in six runs; with a quarter, 0-8, five
 * of six runs at 2 or fewer). A pause inside a turn, after its first read, is not seen here: that turn
 * is late instead.
 */
export const STALL_SHARE = 0.25
/** While connections wait to be accepted, a turn reads requests for this long before refusing, ms. */
export const ACCEPT_BUDGET_MS = 0.5
/**
 * Busy turns in a row that each accepted a connection before a process that has not learned its
 * capacity treats them as a surge (see surge()). Traced on 2026-12-08 in 10x bursts of a fresh process
 * (bench/hard.ts burst-10x, three runs each, before the span below): with 6, the first refusal came
 * 11-13 ms into the burst and 5 requests were admitted in its first 100 ms; with 3, 4-6 ms, but one run
 * of three admitted 47 (the run breaks more often, and each break let requests in).
 */
export const SURGE_RUN = 6
/**
 * ... over at least this share of the interval (10 ms of the default 100; the 6th turn of a 10x burst
 * closed 11-13 ms into it). Wall time: a long first turn (lazy initialisation, a GC) counts in it. A
 * pool opening a few dozen connections at once on a light route is let in within it: without a span,
 * 20 connections opened at once by this project's tests had their requests refused by a fresh app.
 */
export const SURGE_SHARE = 0.1

/**
 * Where a route's runs at admission are kept: the shortest of the current window, ms (Infinity while
 * none). The shortest, not a mean: whatever else runs between two reads in the poll phase (a database
 * driver's replies and the continuations they resume, other requests' work) is charged to the request
 * read first, so a run can only be longer than the request's own; the shortest of a window is its own.
 */
export interface RunAtAdmission {
  runMinMs: number
}

export class LoopTurns {
  readonly #settings: TurnSettings
  readonly #clock: TurnClock
  readonly #end: () => void
  #open = false
  /** When the current turn's busy span began (the previous turn's end if the loop did not idle). */
  #start = 0
  #lastEnd = 0
  #idleAtEnd = 0
  /** Start of the loop's current busy run (no idle since). */
  #busySince = 0
  /** Start of the current run of late turns, or -1; when it became a standing queue (late()), or -1. */
  #lateSince = -1
  #lateAt = -1
  /** Typical length of a turn that handled requests while the loop had no standing queue, ms. */
  typicalMs = 0
  /**
   * The last stall (STALL_SHARE): when it ended (the turn after it opened), on the clock, or -1; and how
   * long the loop ran other work without reading a request, ms. The controller lets its backlog in (see
   * admission.ts).
   */
  stallEnd = -1
  stallMs = 0
  /** When the current turn read its first request, or -1. */
  #firstRead = -1
  /**
   * Whether refusing a request makes its turn shorter. The accept backlog refuses so that turns are
   * short and let the waiting connections in; where a refusal costs a large share of what a request
   * does, refusing shortens turns little and loses the requests. The controller clears it while the
   * learned capacity says so (CHEAP_REQUEST_MS, admission.ts).
   */
  refusalsShorten = true
  /** When the last request was read (overBudget's clock reading), ms. */
  readAt = 0
  /**
   * The route of the request admitted last, read at `readAt`: its run at admission ends at the next read
   * or at the turn's end.
   */
  #pending: RunAtAdmission | undefined
  /** A connection was accepted in the current turn. */
  #accepted = false
  /** Busy turns in a row that each accepted a connection, and when the first of them began. */
  #acceptRun = 0
  #acceptSince = 0

  constructor (settings: TurnSettings, clock: TurnClock) {
    this.#settings = settings
    this.#clock = clock
    this.#end = () => { this.#close() }
    this.#lastEnd = clock.now()
    this.#busySince = this.#lastEnd
    this.#idleAtEnd = clock.idle()
  }

  /**
   * Called once per request, before the decision: opens the turn if this is its first request, and
   * tells whether the turn has used what it may run since its first request (while turns are late or
   * connections wait).
   */
  overBudget (): boolean {
    const now = this.#clock.now()
    if (this.#pending !== undefined) this.#measure(now)
    this.readAt = now
    if (!this.#open) this.#openTurn(now)
    if (this.#firstRead < 0) this.#firstRead = now
    const elapsed = now - this.#firstRead
    return (this.late() && elapsed > this.budget() * this.#ramp()) || (elapsed > ACCEPT_BUDGET_MS && this.acceptBacklog())
  }

  /**
   * What a turn may run while turns are late, and how long a late turn is: the configured budget, or
   * twice the app's typical turn when its handlers run longer (a 15 ms handler makes every turn that
   * reads two requests 30 ms long; refusing the second request of such a turn at 0.7x saves nothing).
   */
  budget (): number {
    return Math.max(this.#settings.budgetMs, TYPICAL_FACTOR * this.typicalMs)
  }

  /**
   * How long the current turn has run, ms (0 if none is open): from the end of the previous turn when
   * the loop did not wait for I/O in between, so the timers and continuations before its first request
   * count.
   */
  ran (): number {
    return this.#open ? this.#clock.now() - this.#start : 0
  }

  /** The clock, ms. */
  now (): number {
    return this.#clock.now()
  }

  /** Called for each accepted connection. */
  connection (): void {
    if (!this.#open) this.#openTurn(this.#clock.now())
    this.#accepted = true
  }

  /** Every turn has been late for at least the interval, with no idle moment. */
  late (): boolean {
    return this.#lateAt >= 0
  }

  /** The loop has been busy without waiting for I/O for at least the interval (or `share` of it). */
  standing (share = 1): boolean {
    return this.#lastEnd - this.#busySince >= share * this.#settings.intervalMs
  }

  /**
   * Connections are waiting to be accepted: the last ACCEPT_RUN turns or more each accepted one, over
   * at least ACCEPT_RUN_SHARE of the interval, the loop never idling. (A client pool opening a few
   * dozen connections at once on a quiet process is let in within a few turns and is not a backlog.)
   * Never while `refusalsShorten` is false.
   */
  acceptBacklog (): boolean {
    return this.refusalsShorten && this.#acceptedFor(ACCEPT_RUN, ACCEPT_RUN_SHARE)
  }

  /**
   * Connections keep arriving: the last SURGE_RUN turns or more each accepted one, over at least
   * SURGE_SHARE of the interval, the loop never idling in between. No refusalsShorten: the controller
   * asks only while the process has not learned what a request costs (admission.ts, the cold surge rule).
   */
  surge (): boolean {
    return this.#acceptedFor(SURGE_RUN, SURGE_SHARE)
  }

  /** The last `turns` turns or more each accepted a connection, over at least `share` of the interval. */
  #acceptedFor (turns: number, share: number): boolean {
    return this.#acceptRun >= turns && this.#lastEnd - this.#acceptSince >= share * this.#settings.intervalMs
  }

  /**
   * A standing queue that has just formed may still drain by itself (random arrivals bunch up): the
   * budget starts at RAMP_FACTOR times itself and comes down to itself over one more interval.
   */
  #ramp (): number {
    const over = (this.#lastEnd - this.#lateAt) / this.#settings.intervalMs
    return over >= 1 ? 1 : 1 + (RAMP_FACTOR - 1) * (1 - over)
  }

  #openTurn (now: number): void {
    this.#open = true
    this.#clock.atTurnEnd(this.#end)
    const idled = this.#clock.idle() - this.#idleAtEnd
    const waited = idled > IDLE_EPSILON_MS
    const gap = now - this.#lastEnd
    // A stall: the loop ran something else for STALL_SHARE of the interval or more (a synchronous task,
    // a long GC) without reading a request, whether or not it idled before. The controller lets its
    // backlog in.
    if (gap - idled >= STALL_SHARE * this.#settings.intervalMs) {
      this.stallEnd = now
      this.stallMs = gap - idled
    }
    // The loop waited for work since the last turn ended (whatever queue there was has drained), or it
    // ran something else for a whole interval and the requests it held back are read now: their wait
    // is over, whether a queue stands is for the next turns.
    if (waited || gap >= this.#settings.intervalMs) {
      this.#start = now
      this.#busySince = now
      this.#lateSince = -1
      this.#lateAt = -1
      if (waited) this.#acceptRun = 0
    } else {
      this.#start = this.#lastEnd
    }
  }

  /**
   * The request just read was admitted: how long it runs before the loop reads on (or the turn ends)
   * is measured into its route's `runMinMs`.
   */
  admitted (route: RunAtAdmission): void {
    this.#pending = route
  }

  #measure (now: number): void {
    const route = this.#pending as RunAtAdmission
    const ms = now - this.readAt
    if (ms < route.runMinMs) route.runMinMs = ms
    this.#pending = undefined
  }

  #close (): void {
    const now = this.#clock.now()
    if (this.#pending !== undefined) this.#measure(now)
    const length = now - this.#start
    this.#open = false
    this.#firstRead = -1
    if (!this.#accepted) this.#acceptRun = 0
    else if (this.#acceptRun++ === 0) this.#acceptSince = this.#start
    this.#accepted = false
    const target = this.budget()
    if (this.#lateSince < 0) {
      this.typicalMs += TYPICAL_SMOOTHING * (length - this.typicalMs)
      if (length >= target) this.#lateSince = this.#start
    } else if (length < target / 2) {
      // Hysteresis: while the budget holds turns near it, they stay late; a clearly short turn ends it.
      this.#lateSince = -1
      this.#lateAt = -1
    }
    // The ramp counts from when the run became a standing queue: a single long turn (a 200 ms stall)
    // is one already, and the backlog it left should not meet the budget at its floor.
    if (this.#lateSince >= 0 && this.#lateAt < 0 && now - this.#lateSince >= this.#settings.intervalMs) this.#lateAt = now
    this.#lastEnd = now
    this.#idleAtEnd = this.#clock.idle()
  }
}
