// The admission decision: permits, outcome counters, window accounting, shedding episodes. No Fastify
// and no clock: the glue passes `now` and the sampled loop signals in.

import { AdaptiveLimit, clamp, finiteOr, PRESSURE_ELU, type LimitSettings } from './limit.js'
import { ExpiringPermits } from './expiring-permits.js'
import { RetryAfterPolicy, type RetryAfterSettings } from './retry-after.js'

export type Mode = 'enforce' | 'observe'

/**
 * Why a request was refused: the adaptive limit, one of the ceilings @fastify/under-pressure watches, or
 * the server draining on close.
 */
export type RejectReason = 'limit' | 'heap' | 'rss' | 'health' | 'drain'

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
  /** Startup grace: nothing is refused for this long after start, while the estimates are learned. */
  graceMs: number
  retryAfter: RetryAfterSettings
  /** A shedding episode ends after this long without refusals. */
  quietMs: number
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

/** What changed in a window that a person should hear about. */
export type SheddingEvent =
  | { type: 'start', limit: number, inflight: number, saturation: number }
  | { type: 'stop', rejected: number, durationMs: number }
  | undefined

export interface ControllerHooks {
  /** Source of randomness for Retry-After jitter. */
  random?: () => number
  /** Told when a shedding episode starts or stops. */
  onShedding?: (event: NonNullable<SheddingEvent>, nowMs: number) => void
  /**
   * Event-loop utilisation over the last few milliseconds. Asked only when a request finds the limit
   * reached while it is not enforced, so that a sudden overload is met within milliseconds rather
   * than at the end of the sampling window.
   */
  recentElu?: () => number
  /** Clock in milliseconds; observe mode needs it to age the permits enforce would have held. */
  now?: () => number
}

const REASONS: readonly RejectReason[] = ['limit', 'heap', 'rss', 'health', 'drain']

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
  readonly #recentElu: ControllerHooks['recentElu']
  /**
   * Observe mode: when each permit enforce would have held ends. A ring, oldest first; its length is
   * the in-flight count enforce would have.
   */
  readonly #virtual: ExpiringPermits | undefined
  #enforcing = false
  #graceOver = false
  // Window accumulators, reset by onWindow().
  #arrivals = 0
  /** Refusals of any reason (episodes, Retry-After). */
  #refused = 0
  /** Refusals by the limit only: the limit learns from its own refusals, not from the ceilings'. */
  #limitRefused = 0
  #completed = 0
  #latencySumMs = 0
  // Shedding episode.
  #episodeStart = 0
  #episodeRefused = 0
  #lastRefusalAt = 0

  constructor (settings: ControllerSettings, nowMs: number, hooks: ControllerHooks = {}) {
    this.#settings = settings
    this.mode = settings.mode
    // In observe mode the would-be refusals are not shed, so the loop stays as busy as the overload
    // makes it: feedback on that would drive the limit to its floor and would_reject would overstate
    // what enforce does. The model limit (gain 1) is the prediction.
    this.limiter = new AdaptiveLimit(settings, settings.mode === 'enforce')
    this.retryAfter = new RetryAfterPolicy(settings.retryAfter, hooks.random)
    this.#graceUntil = nowMs + settings.graceMs
    this.#onShedding = hooks.onShedding
    this.#recentElu = hooks.recentElu
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
   * The class and tenant are unused while there is a single class.
   */
  acquire (_klass: RequestClass, _tenant?: string, veto?: RejectReason): Outcome {
    this.#arrivals++
    if (veto === undefined && this.draining) veto = 'drain'
    if (veto === undefined) {
      if (this.#decisionInflight() < this.limiter.limit || (!this.#enforcing && !this.#busyNow())) {
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

  /** The loop is saturated right now (past the startup grace): enforce until the window closes. */
  #busyNow (): boolean {
    if (!this.#graceOver || this.#recentElu === undefined || !(this.#recentElu() >= PRESSURE_ELU)) return false
    this.#enforcing = true
    return true
  }

  /**
   * Give a permit back. `finished` = the response was sent in full (not a client abort); `observed` =
   * the permit came from an `observed` decision.
   */
  release (latencyMs: number, finished: boolean, observed = false): void {
    this.inflight--
    if (observed) this.observedInflight--
    if (finished && latencyMs >= 0 && latencyMs < Infinity) {
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
    this.elu = clamp(finiteOr(loop.elu, 0), 0, 1)
    this.delayP99Ms = Math.max(0, finiteOr(loop.delayP99Ms, 0))
    this.limiter.update({
      durationMs,
      elu: this.elu,
      completed: this.#completed,
      latencySumMs: this.#latencySumMs,
      rejected: limitRefused
    })
    this.#graceOver = nowMs >= this.#graceUntil
    this.#enforcing = this.limiter.pressure && this.#graceOver
    this.#arrivals = 0
    this.#refused = 0
    this.#limitRefused = 0
    this.#completed = 0
    this.#latencySumMs = 0

    if (durationMs > 0) {
      const capacity = this.limiter.capacity
      const sample = capacity > 0 ? (arrivals * 1000 / durationMs) / capacity : this.elu
      this.saturation += 0.5 * (sample - this.saturation)
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
    return event
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
