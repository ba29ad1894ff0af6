// The admission decision: permits, outcome counters, window accounting, shedding episodes. No Fastify
// and no clock: the glue passes `now` and the sampled loop signals in.

import { CostModel, Pace, type RouteCost } from './costs.js'
import { AdaptiveLimit, clamp, finiteOr, VARIANCE_ALLOWANCE, type LimitSettings } from './limit.js'
import { ExpiringPermits } from './expiring-permits.js'
import { RetryAfterPolicy, type RetryAfterSettings } from './retry-after.js'
import type { LoopTurns } from './turns.js'

export type Mode = 'enforce' | 'observe'

/**
 * Why a request was refused: the adaptive limit, one of the ceilings @fastify/under-pressure watches, or
 * the server draining on close.
 */
export type RejectReason = 'limit' | 'inflight' | 'delay' | 'utilization' | 'heap' | 'rss' | 'health' | 'drain'

/** Outcome of one admission decision. `observed` = over the limit in observe mode: let through, counted. */
export type Outcome = 'admitted' | 'rejected' | 'observed'

/**
 * What the decision knows about a request. Only one class exists today; the class and tenant are part of
 * the decision's signature so that priority tiers and per-tenant fair share slot in without a rewrite.
 */
export interface RequestClass {
  readonly name: string
}

export const DEFAULT_CLASS: RequestClass = Object.freeze({ name: 'default' })

/** Loop signals of one sampling window, as measured by the sampler. */
export interface LoopWindow {
  durationMs: number
  elu: number
  delayP99Ms: number
}

export interface ControllerSettings extends LimitSettings {
  mode: Mode
  /** Startup grace: nothing is refused for this long after start (none by default). */
  graceMs: number
  retryAfter: RetryAfterSettings
  /** A shedding episode ends after this long without refusals. */
  quietMs: number
  /** Hard ceiling on requests in flight, enforced always; 0 = none. */
  maxInflight: number
  /** Every request is refused while the last window's loop delay (p99) exceeds this, ms; 0 = none. */
  maxDelayMs: number
  /** Every request is refused while the last window's loop utilisation exceeds this; 0 = none. */
  maxUtilization: number
}

/** Read-only view of the controller, as `fastify.admission` returns it. */
export interface AdmissionSnapshot {
  readonly mode: Mode
  /** Current adaptive concurrency limit. */
  readonly limit: number
  /** Requests admitted and not yet finished. */
  readonly inflight: number
  /** Event-loop utilisation over the last window, 0..1. */
  readonly eventLoopUtilization: number
  /** Event-loop delay (99th percentile over the last window, beyond the sampling resolution), seconds. */
  readonly eventLoopDelaySeconds: number
  /** Offered / sustainable throughput (~ ELU without overload; > 1 = capacity missing). */
  readonly saturation: number
  /** Estimated sustainable throughput, requests per second (0 while unknown). */
  readonly capacity: number
  /** Whether requests are being refused (or, in observe mode, would be). */
  readonly shedding: boolean
  /** The server is closing: new requests are refused, in-flight ones finish. */
  readonly draining: boolean
  /** Retry-After currently advertised (before per-response jitter), seconds. */
  readonly retryAfterSeconds: number
}

/** Totals since start, for the metrics module. */
export interface OutcomeTotals {
  admitted: number
  /** Refused, by reason. */
  rejected: Record<RejectReason, number>
  /** Would have been refused (observe mode), by reason. */
  observed: Record<RejectReason, number>
}

/** The labels of one series of the request counter. */
export type RequestLabels =
  | { readonly outcome: 'admitted' }
  | { readonly outcome: 'rejected' | 'would_reject', readonly reason: RejectReason }

/** One series of the request counter, as every exporter shows it. */
export interface RequestSeries {
  /** `outcome` or `outcome/reason`. */
  readonly key: string
  readonly labels: RequestLabels
  /** Shown at 0 before its first request: admitted, and the limit refusals of the controller's mode. */
  readonly always: boolean
  /** The total since start. */
  readonly read: () => number
}

/**
 * The request counter's series: admitted, then each reason as rejected and as would_reject. Exporters
 * show the `always` ones from the start and the others once their total is above 0 (totals only grow,
 * so a series never disappears).
 */
export function requestSeries (totals: OutcomeTotals, mode: Mode): RequestSeries[] {
  const refused = mode === 'observe' ? 'would_reject' : 'rejected'
  const series: RequestSeries[] = [{ key: 'admitted', labels: Object.freeze({ outcome: 'admitted' }), always: true, read: () => totals.admitted }]
  for (const reason of Object.keys(totals.rejected) as RejectReason[]) {
    for (const [outcome, counts] of [['rejected', totals.rejected], ['would_reject', totals.observed]] as const) {
      series.push({
        key: `${outcome}/${reason}`,
        labels: Object.freeze({ outcome, reason }),
        always: outcome === refused && reason === 'limit',
        read: () => counts[reason]
      })
    }
  }
  return series
}

/** What changed in a window that a person should hear about. */
export type SheddingEvent =
  | { type: 'start', limit: number, inflight: number, saturation: number }
  | { type: 'stop', rejected: number, durationMs: number }
  | undefined

/**
 * What one sampling window saw and what the controller decided at its end: the figures behind every
 * refusal, ten times a second, for a trace (the plugin publishes it on a diagnostics channel).
 */
export interface WindowReport {
  /** When the window closed, on the controller's clock, ms. */
  readonly at: number
  readonly durationMs: number
  /** Requests that reached the decision in the window, admitted or refused. */
  readonly arrivals: number
  /** Of them, refused for any reason (in observe mode: would have been). */
  readonly refused: number
  /** Requests that finished normally in the window. */
  readonly completed: number
  /** Requests in flight at the window's end. */
  readonly inflight: number
  /** Event-loop utilisation of the window, 0..1, and its loop delay (p99), ms. */
  readonly elu: number
  readonly delayP99Ms: number
  /** The estimates and the limit after learning from the window (capacity 0: not known yet). */
  readonly capacity: number
  readonly baselineMs: number
  readonly limit: number
  /** Whether the limit is enforced until the next window. */
  readonly enforcing: boolean
  /** Every loop turn has run its budget for the congestion interval (the turn budget refuses). */
  readonly lateTurns: boolean
  readonly shedding: boolean
}

export interface ControllerHooks {
  /** Source of randomness for Retry-After jitter. */
  random?: () => number
  /** Told when a shedding episode starts or stops. */
  onShedding?: (event: NonNullable<SheddingEvent>, nowMs: number) => void
  /**
   * The loop's turns: the decision refuses what arrives after a congested turn's budget, and enforces
   * the concurrency limit only while the loop has a standing queue. Without it (pure tests of the
   * limit), the limit is enforced while the sampled windows show pressure.
   */
  turns?: LoopTurns
  /** Clock in milliseconds; observe mode needs it to age the permits enforce would have held. */
  now?: () => number
  /**
   * Told at the end of every window what it saw and decided, while it has subscribers (a
   * `node:diagnostics_channel` Channel fits).
   */
  windows?: { readonly hasSubscribers: boolean, publish: (report: WindowReport) => void }
}

/**
 * While connections wait to be accepted, the concurrency limit is enforced at this share: fewer
 * requests in flight leave the loop idle moments, and every turn lets one more connection in.
 */
export const ACCEPT_SHARE = 0.25

/**
 * A learned limit is enforced once in-flight reaches it on a loop busy without an idle moment for this
 * share of the interval (5 ms of the default 100), not the whole interval: the limit already leaves room
 * for random arrivals (4 standard deviations), so in-flight at it on a busy loop is an overload. At a
 * step from 0.3x to 2x the interval let in-flight climb to 34-46 against a limit of 17-20, and the 503s
 * of the step's first quarter-second waited 62-124 ms at p99 (six runs alone), 32-58 ms in four with a
 * quarter of the interval. A quarter still let a 4x step admit all it read for 25 ms, about 100 ms of
 * work, and the step's first second read 503 p99 of 28-148 ms (eleven runs of the easy sweep's 2x and
 * 4x points, 2026-11-25); with 5 ms, 19-49 ms over five, 0 refusals in three runs of 0.8x random
 * arrivals. The busy loop is still required: a slow downstream raises in-flight on an idle loop.
 */
export const EARLY_SHARE = 0.05

/**
 * A stall's allowance shrinks as a backlog drains at this share of capacity: at loads up to
 * 1 - STALL_DRAIN_SHARE of capacity the backlog is served before the allowance runs out.
 */
export const STALL_DRAIN_SHARE = 0.2
/**
 * A stall's allowance covers at most this much of it, ms: a longer stall's backlog has waited long
 * enough, and letting in more would queue more than half a second of work behind it.
 */
export const STALL_ALLOWANCE_MAX_MS = 500

/**
 * A process whose requests cost less busy loop than this on average, ms (learned capacity above 10 000
 * a second), gains little from the accept backlog's refusals: a refusal costs 15-60 µs as measured on
 * this project's machine on different days, a large share of such a request, so refusing shortens the
 * turns little while the requests are lost. A closed loop of 200 connections opened at once on a warm
 * hello-world process had 12 797 requests refused in 0.4 s by the accept backlog, while serving them
 * took the turns no longer (2 ms per accepted connection). The average is the process's: a mixed app
 * of mostly cheap requests has the rule off too, and keeps the turn budget and the limit.
 */
export const CHEAP_REQUEST_MS = 0.1

/**
 * While the limit binds, admissions are spaced by their cost (see costs.ts): the loop time they take
 * may come at this many times the time that passes (1.2-1.4 read alike on the easy sweep's 2x and 4x
 * points, two runs each) ...
 */
export const PACE_RATE = 1.3
/** ... with a burst of this many mean requests' cost. */
export const PACE_BURST = 2
/**
 * A route that costs less than this, ms, is not paced. Its trains are as much shorter as it is cheaper
 * (a 0.5 ms route's would be a quarter of the 2.2 ms route's 8-23 ms), and its cost, learned as the
 * process warms up, runs behind the truth: a fresh hello-world process under a closed loop of 50
 * connections (its requests costing 0.3-0.36 ms by the estimate in its first second, a tenth of that
 * once warm) had 2186-2455 requests refused in its first second when they were paced, 962-1026 without
 * the pace (four and six runs). Paced with a burst of 2 hello-world requests (23 µs), its seven 3 s
 * warm-ups in the hello-world benchmark had 407 540 refused, and its 2 s rounds 7430, against 5227-6076
 * and none before the pace.
 */
export const PACED_MIN_COST_MS = 1
/**
 * Only a route that runs at least this share of its cost when admitted is paced. One whose work comes
 * after an await (a query first) has its continuations spaced as its admissions are, but at a pace above
 * capacity they still overlap into trains, during which the loop reads nothing and the pace's burst
 * caps what it may catch up: an idle process hit by a 4x burst of such a route served 62-64 % of
 * capacity paced (four runs), 88-92 % with this gate (four), against 92-95 % before pacing.
 */
export const PACED_SHARE = 0.25

/**
 * The rules that act while the limit binds (the turn budget counted from the turn's start, and the
 * pace) act only while the loop time that arrivals ask for (each its route's cost, costs.ts) is this
 * many times the time that passes: over the last window and this one so far, or over this one alone
 * once it is DEMAND_WINDOW_SHARE of a window long (then with VARIANCE_ALLOWANCE standard deviations of
 * random arrivals on top). A single refusal otherwise switched them on for the window: at 0.8x with
 * Poisson arrivals on 2026-12-07, on a machine whose loop paused 25-47 ms at times, one refusal at the
 * limit or at the late turns' budget was followed by 10-62 more from the turn rule in the window's
 * long turns (in 4 of 5 runs, 20-74 refused in each), its own refusals keeping it on for a window or two
 * more; with this gate, no turn-rule refusal in twelve runs. Arrivals are counted when read: the
 * requests a pause held back land in the next window, which alone then read 1.2-1.4 times capacity;
 * pooled with the window of the pause they do not. Loop time, not a count: the mixed app at 3x (half
 * its requests 0.2 ms) read 89-95 % counted, 101-109 % (as without the gate) weighted by cost. The
 * turn rule and the pace are for trains of continuations at 2x and more and for synchronous routes at
 * 3x; a milder overload still meets the limit and the late turns' budget.
 */
export const DEMAND_RATE = 1.5
/** ... past this share of the last window's length, this window's arrivals alone can show it. */
export const DEMAND_WINDOW_SHARE = 0.25

/**
 * The cold surge rule applies while the process has admitted fewer requests than this: it is for a
 * process whose code has not run yet. One that learns no capacity for another reason (fewer than a
 * handful of completions every 2 s, or only long-lived streams) is warm after this many.
 */
export const COLD_ADMISSIONS = 100

/** Completions the capacity estimate must have seen before saturation is offered ÷ capacity. */
export const SATURATION_CONFIDENCE = 300
/** Time constant of the saturation's smoothing, ms: a scrape every few seconds sees a stable figure. */
export const SATURATION_SMOOTHING_MS = 5000

const REASONS: readonly RejectReason[] = ['limit', 'inflight', 'delay', 'utilization', 'heap', 'rss', 'health', 'drain']

function zeroByReason (): Record<RejectReason, number> {
  const r = {} as Record<RejectReason, number>
  for (const reason of REASONS) r[reason] = 0
  return r
}

export class AdmissionController {
  readonly mode: Mode
  readonly limiter: AdaptiveLimit
  readonly retryAfter: RetryAfterPolicy
  readonly totals: OutcomeTotals = { admitted: 0, rejected: zeroByReason(), observed: zeroByReason() }
  /** What a request of each route costs the loop, learned from the windows. */
  readonly costs = new CostModel()

  inflight = 0
  /**
   * Of `inflight`, the requests observe mode let through over the limit. The decision compares only
   * the others with the limit, as enforce would have held only those: otherwise the queue observe lets
   * build would count against every later arrival and would_reject would overstate enforce.
   */
  observedInflight = 0
  elu = 0
  delayP99Ms = 0
  saturation = 0
  shedding = false
  /** Set when the server starts closing: every new request is refused with reason 'drain'. */
  draining = false

  readonly #settings: ControllerSettings
  readonly #graceUntil: number
  readonly #onShedding: ControllerHooks['onShedding']
  readonly #windows: ControllerHooks['windows']
  readonly #turns: LoopTurns | undefined
  /**
   * Observe mode: when each permit enforce would have held ends. A ring, oldest first; its length is
   * the in-flight count enforce would have.
   */
  readonly #virtual: ExpiringPermits | undefined
  #enforcing = false
  /**
   * After a stall (the loop ran other work for an interval without reading a request: a synchronous
   * task, a long GC), the requests it held back: the requests the loop would have finished in the
   * stall are let in over the limit and the turn budget. See #refusesForLoad.
   */
  #stallAllowance = 0
  #stallSeen = -1
  readonly #pace = new Pace()
  /** A hard loop ceiling exceeded in the last window: every request is refused until the next. */
  #ceiling: RejectReason | undefined
  #graceOver: boolean
  // Window accumulators, reset by onWindow().
  #arrivals = 0
  /** Refusals of any reason (episodes, Retry-After). */
  #refused = 0
  /** Refusals by the limit only: the limit learns from its own refusals, not from the ceilings'. */
  #limitRefused = 0
  #completed = 0
  #latencySumMs = 0
  /**
   * The loop time this window's arrivals ask for (each one its route's cost, see costs.ts), ms; the
   * last window's, and its length; when the current window began (the turns' clock).
   */
  #offeredMs = 0
  #lastOfferedMs = 0
  #lastDurationMs = 0
  #windowStart = 0
  // Shedding episode.
  #episodeStart = 0
  #episodeRefused = 0
  #lastRefusalAt = 0
  /** The cold surge rule has refused (it keeps the limit at a quarter while the process is cold). */
  #surged = false

  constructor (settings: ControllerSettings, nowMs: number, hooks: ControllerHooks = {}) {
    this.#settings = settings
    this.mode = settings.mode
    // In observe mode the would-be refusals are not shed, so the loop stays as busy as the overload
    // makes it: feedback on that would drive the limit to its floor and would_reject would overstate
    // what enforce does. The model limit (gain 1) is the prediction.
    this.limiter = new AdaptiveLimit(settings, settings.mode === 'enforce')
    this.retryAfter = new RetryAfterPolicy(settings.retryAfter, hooks.random)
    this.#graceUntil = nowMs + settings.graceMs
    this.#graceOver = settings.graceMs <= 0
    this.#onShedding = hooks.onShedding
    this.#windows = hooks.windows
    this.#turns = hooks.turns
    this.#windowStart = hooks.turns?.now() ?? nowMs
    this.#virtual = settings.mode === 'observe' && hooks.now !== undefined
      ? new ExpiringPermits(settings.maxLimit + 1, hooks.now)
      : undefined
  }

  get limit (): number {
    return this.limiter.limit
  }

  /**
   * Decide for one request. On `admitted` and `observed` the caller holds a permit and must call
   * release() exactly once. `veto` is a refusal already decided by a ceiling (heap, RSS, health check)
   * or by the drain: it is counted here like the limit's own, so observe mode refuses nothing at all.
   * The class and tenant are unused while there is a single class. `route` is the request's route's
   * slot in the cost model (the mean cost is used without one).
   */
  acquire (_klass: RequestClass, _tenant?: string, veto?: RejectReason, route?: RouteCost): Outcome {
    this.#arrivals++
    this.#offeredMs += this.costs.costOf(route)
    if (veto === undefined) veto = this.draining ? 'drain' : this.#ceiling ?? this.#inflightCeiling()
    if (veto === undefined) {
      if (!this.#refusesForLoad(route)) {
        if (route !== undefined) this.#turns?.admitted(route)
        this.inflight++
        this.totals.admitted++
        this.#timedVirtual()?.add(Math.max(this.limiter.baselineMs, 1000 * this.limiter.limit / this.limiter.capacity))
        return 'admitted'
      }
      veto = 'limit'
      this.#limitRefused++
    }
    this.#refused++
    if (this.mode === 'observe') {
      this.inflight++
      this.observedInflight++
      this.totals.observed[veto]++
      return 'observed'
    }
    this.totals.rejected[veto]++
    return 'rejected'
  }

  /**
   * In-flight has reached a learned limit on a loop busy for EARLY_SHARE of the interval. While the
   * limit is not enforced it has its room for random arrivals (the limit binds no more, so it is not the
   * model alone), unless `maxLimit` holds it lower: a ceiling the user chose.
   */
  #enforcesEarly (turns: LoopTurns): boolean {
    return this.limiter.capacity > 0 && this.#decisionInflight() >= this.limiter.limit && turns.standing(EARLY_SHARE)
  }

  /** The hard in-flight ceiling, when set and reached. */
  #inflightCeiling (): RejectReason | undefined {
    const max = this.#settings.maxInflight
    return max > 0 && this.inflight - this.observedInflight >= max ? 'inflight' : undefined
  }

  /**
   * In-flight as enforce would see it. In observe mode the requests let through over the limit queue
   * for the CPU with the others, so every permit lasts longer than under enforce: counting real
   * completions would make would_reject overstate enforce. Each would-be permit ends after the time
   * a request takes under enforce instead: Little's law at the limit (limit / capacity), at least the
   * baseline latency. Until both are known, the real count of would-be-admitted requests is used.
   */
  #decisionInflight (): number {
    return this.#timedVirtual()?.count() ?? this.inflight - this.observedInflight
  }

  /** Observe mode's would-be permits, once capacity and baseline are known to time them. */
  #timedVirtual (): ExpiringPermits | undefined {
    return this.limiter.baselineMs > 0 && this.limiter.capacity > 0 ? this.#virtual : undefined
  }

  /**
   * Whether this request is refused for load: it is read after a late turn's budget (or after the short
   * budget of a turn while connections wait to be accepted), or the limit is enforced and reached. The
   * limit is enforced from a window under pressure, a loop busy for the interval (for EARLY_SHARE of it
   * once in-flight reaches a learned limit), or an accept backlog, until a window without pressure; a
   * stall's backlog is let in over it. While the limit binds (in this window or the last one), a turn
   * admits only until it has run its budget, counted from the turn's start, and admissions are paced
   * by their cost (#paced), while arrivals ask for more than the loop has (#demandExceeds). Nothing is
   * refused during the startup grace.
   */
  #refusesForLoad (route: RouteCost | undefined): boolean {
    const turns = this.#turns
    if (turns === undefined) return this.#enforcing && this.#decisionInflight() >= this.limiter.limit
    const overBudget = turns.overBudget()
    if (turns.stallEnd !== this.#stallSeen) {
      this.#stallSeen = turns.stallEnd
      // While shedding, the stall is a pause in an overload: its backlog is more of the same. A stall
      // before the last one's allowance has drained (the backlog's own continuations can run long enough
      // to be one) keeps the larger allowance.
      this.#stallAllowance = this.shedding || this.#refused > 0
        ? 0
        : Math.max(this.#stallAllowance, Math.ceil(this.limiter.capacity * Math.min(turns.stallMs, STALL_ALLOWANCE_MAX_MS) / 1000))
    }
    if (!this.#graceOver) return false
    // The cold surge rule (README, "Loop turns"): a process that has not learned its capacity, early in
    // its life, refuses what it reads while connections arrive in every busy turn (turns.surge()). It
    // does not know what a request costs, its code is not compiled yet, and what it admits makes the
    // turns long while libuv accepts one connection a turn: clients that open connections on demand
    // open hundreds, and the 503s wait in the kernel until the code is warm. The run ends at the
    // first turn without a new connection or with an idle moment, and what is admitted then teaches
    // the capacity that ends the rule. Counted as the limit's refusals. Not in observe mode: nothing
    // is shed there, the turns stay long and the run lasts longer than under enforce.
    const cold = this.limiter.capacity === 0 && this.totals.admitted < COLD_ADMISSIONS
    if (cold && this.mode === 'enforce' && turns.surge()) {
      this.#surged = true
      return true
    }
    // Between the runs of a surge, while the process is still cold, the limit is enforced as while
    // connections wait: at a quarter. Without this, each break of the run admitted up to the initial
    // limit blind, and in 4x bursts of a fresh process their continuations came back as trains (503
    // p99 131 and 261 ms in two runs of four, 20-36 ms before the rule and in the other two).
    const backlog = turns.acceptBacklog() || (cold && this.#surged)
    if (!this.#enforcing) {
      if (!backlog && !turns.standing() && !this.#enforcesEarly(turns)) return false
      this.#enforcing = true
    }
    // A stall leaves a backlog that looks like an overload: the window that held it was busy, the
    // backlog raises in-flight and makes the next turns late. Below capacity it drains by itself, so
    // what the loop would have finished during the stall is let in: the limit is raised by the
    // allowance, and a request over the turn budget uses one of it. A request still over the raised
    // limit means more arrive than the drain can take (an overload that began in the stall): the
    // allowance ends.
    if (this.#decisionInflight() >= (backlog ? this.limiter.limit * ACCEPT_SHARE : this.limiter.limit) + this.#stallAllowance) {
      this.#stallAllowance = 0
      return true
    }
    // While the limit binds (refusals for load in this window, or in the last one under pressure), a
    // turn that has run its budget, timers included, admits nothing more: the permits it frees go to the
    // next turn. Requests admitted in one turn await together and come back together, so a turn of ten
    // continuations that admitted ten more made the same clump 20 ms later. Its own refusals keep it on
    // while turns keep running over the budget with requests to refuse: at 3x, a synchronous route
    // (which never meets the limit) answered at 2xx p99 45-48 ms so, 146-293 ms when only refusals at
    // the limit or a late turn's budget kept it on. A window without refusals ends it, and so do arrivals
    // that ask for less than DEMAND_RATE times the loop's time (#demandExceeds). Not in observe
    // mode: its turns carry the overload it lets through, which enforce would not have. (No stall
    // allowance is left here: the refusal at the limit ended it.)
    if (!overBudget) {
      if (this.mode !== 'enforce' || (this.#limitRefused === 0 && !this.limiter.binding) || !this.#demandExceeds(turns.readAt)) return false
      return turns.ran() > turns.budget() || !this.#paced(route, turns.readAt)
    }
    if (this.#stallAllowance < 1) return true
    this.#stallAllowance--
    return false
  }

  /**
   * The loop time arrivals ask for is DEMAND_RATE times the time that passes (see there): over the last
   * window and this one so far, or this one alone past DEMAND_WINDOW_SHARE of the last window. While
   * capacity is unknown, assumed.
   */
  #demandExceeds (nowMs: number): boolean {
    const meanMs = this.costs.meanMs
    if (!(meanMs > 0)) return true
    const elapsed = Math.max(0, nowMs - this.#windowStart)
    if (this.#lastOfferedMs + this.#offeredMs >= DEMAND_RATE * (this.#lastDurationMs + elapsed)) return true
    // Random arrivals of the mean cost: their count's standard deviation is the square root of its mean.
    return elapsed >= DEMAND_WINDOW_SHARE * this.#lastDurationMs &&
      this.#offeredMs >= DEMAND_RATE * elapsed + VARIANCE_ALLOWANCE * Math.sqrt(elapsed * meanMs)
  }

  /**
   * While the limit binds, whether the pace admits a request of this route now (see costs.ts). The
   * permits a train of continuations frees would otherwise go to as many arrivals read one after
   * another, whose continuations come back as the next train: at 2x, trains of 8-23 ms every 40-56 ms,
   * and 503s that waited for them. A route not known to work when admitted (PACED_SHARE; -1 while not
   * measured; a request without a route) is not paced, nor one under PACED_MIN_COST_MS. Its refusals
   * keep the limit binding, as the turn rule's do.
   */
  #paced (route: RouteCost | undefined, nowMs: number): boolean {
    if (route === undefined) return true
    // Nothing is paced before a cost is known.
    const cost = this.costs.costOf(route)
    if (!(cost >= PACED_MIN_COST_MS) || route.prefixMs < PACED_SHARE * cost) return true
    return this.#pace.admit(nowMs, cost, PACE_RATE, PACE_BURST * this.costs.meanMs)
  }

  /**
   * Give a permit back. `finished` = the response was sent in full (not a client abort); `observed` =
   * the permit came from an `observed` decision.
   */
  release (latencyMs: number, finished: boolean, observed = false, route?: RouteCost): void {
    this.inflight--
    if (observed) this.observedInflight--
    if (finished && latencyMs >= 0 && latencyMs < Infinity) {
      if (route !== undefined) route.completed++
      this.#completed++
      this.#latencySumMs += latencyMs
    }
  }

  /** Close one sampling window: learn, decide whether to enforce, step Retry-After, report episodes. */
  onWindow (loop: LoopWindow, nowMs: number): SheddingEvent {
    const durationMs = finiteOr(loop.durationMs, 0)
    const refused = this.#refused
    const limitRefused = this.#limitRefused
    const arrivals = this.#arrivals
    const completed = this.#completed
    this.elu = clamp(finiteOr(loop.elu, 0), 0, 1)
    this.delayP99Ms = Math.max(0, finiteOr(loop.delayP99Ms, 0))
    const { maxDelayMs, maxUtilization } = this.#settings
    this.#ceiling = maxDelayMs > 0 && this.delayP99Ms > maxDelayMs
      ? 'delay'
      : maxUtilization > 0 && this.elu > maxUtilization ? 'utilization' : undefined
    this.limiter.update({
      durationMs,
      elu: this.elu,
      completed: this.#completed,
      latencySumMs: this.#latencySumMs,
      rejected: limitRefused,
      arrivals
    })
    this.#graceOver = nowMs >= this.#graceUntil
    // Observe mode's would-be refusals were served: their cost is in their routes' completions.
    this.costs.learn(this.elu * durationMs, this.mode === 'enforce' ? refused : 0, this.limiter.capacity > 0 ? 1000 / this.limiter.capacity : 0)
    // Only from a window without refusals, once the estimate has seen enough completions: refusals take
    // loop time that the capacity estimate counts (it falls from 10-14k to 0.7-3k/s under a closed loop
    // that is shed), which would switch the rule back on and refuse more. A process that has learned
    // nothing yet keeps it.
    if (this.#turns !== undefined && refused === 0 && this.limiter.learned >= SATURATION_CONFIDENCE) {
      this.#turns.refusalsShorten = !(this.limiter.capacity * CHEAP_REQUEST_MS > 1000)
    }
    this.#stallAllowance = Math.max(0, this.#stallAllowance - STALL_DRAIN_SHARE * this.limiter.capacity * durationMs / 1000)
    this.#enforcing = this.#graceOver && (this.limiter.pressure || (this.#turns?.standing() ?? false))
    this.#lastOfferedMs = this.#offeredMs
    this.#offeredMs = 0
    this.#lastDurationMs = durationMs
    this.#windowStart = this.#turns?.now() ?? nowMs
    this.#arrivals = 0
    this.#refused = 0
    this.#limitRefused = 0
    this.#completed = 0
    this.#latencySumMs = 0

    if (durationMs > 0) {
      // A cold process runs its first requests slowly (the JIT has not compiled them yet): capacity
      // learned from them is low, and offered ÷ capacity would tell an autoscaler to add several times
      // the replicas missing. Until the estimate has seen SATURATION_CONFIDENCE completions, the loop's
      // utilisation (at most 1) stands for it: a cold start under-reads for a moment, never over.
      const capacity = this.limiter.capacity
      const sample = capacity > 0 && this.limiter.learned >= SATURATION_CONFIDENCE
        ? (arrivals * 1000 / durationMs) / capacity
        : this.elu
      this.saturation += Math.min(1, durationMs / SATURATION_SMOOTHING_MS) * (sample - this.saturation)
    }

    let event: SheddingEvent
    if (refused > 0) {
      this.#lastRefusalAt = nowMs
      this.#episodeRefused += refused
      if (!this.shedding) {
        this.shedding = true
        this.#episodeStart = nowMs
        event = { type: 'start', limit: this.limit, inflight: this.inflight, saturation: this.saturation }
      }
    } else if (this.shedding && nowMs - this.#lastRefusalAt >= this.#settings.quietMs) {
      this.shedding = false
      event = { type: 'stop', rejected: this.#episodeRefused, durationMs: this.#lastRefusalAt - this.#episodeStart }
      this.#episodeRefused = 0
    }
    this.retryAfter.update(this.shedding, nowMs)
    if (event !== undefined) this.#onShedding?.(event, nowMs)
    if (this.#windows?.hasSubscribers === true) this.#report(this.#windows, nowMs, durationMs, arrivals, refused, completed)
    return event
  }

  #report (windows: NonNullable<ControllerHooks['windows']>, nowMs: number, durationMs: number, arrivals: number, refused: number, completed: number): void {
    windows.publish({
      at: nowMs,
      durationMs,
      arrivals,
      refused,
      completed,
      inflight: this.inflight,
      elu: this.elu,
      delayP99Ms: this.delayP99Ms,
      capacity: this.limiter.capacity,
      baselineMs: this.limiter.baselineMs,
      limit: this.limit,
      enforcing: this.#enforcing,
      lateTurns: this.#turns?.late() ?? false,
      shedding: this.shedding
    })
  }

  snapshot (): AdmissionSnapshot {
    return Object.freeze({
      mode: this.mode,
      limit: this.limit,
      inflight: this.inflight,
      eventLoopUtilization: this.elu,
      eventLoopDelaySeconds: this.delayP99Ms / 1000,
      saturation: this.saturation,
      capacity: this.limiter.capacity,
      shedding: this.shedding,
      draining: this.draining,
      retryAfterSeconds: this.retryAfter.base
    })
  }
}
