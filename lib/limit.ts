// Adaptive concurrency limit: the control core's limit algorithm. No Fastify, no clock: every input
// arrives as a WindowStats value, so the algorithm is a plain function of the samples it is fed.
//
// The model (see README "How the limit is learned"):
//   capacity  = requests finished per second of busy event loop   (completions / (ELU * window))
//   baseline  = mean latency of requests while the loop had headroom (no queueing for the CPU)
//   limit     = capacity * baseline * (1 + headroom)
// This is Little's law at full utilisation: capacity * baseline requests keep the CPU exactly busy;
// the headroom admits a small standing queue (mean queueing ~ headroom * baseline) so the loop never
// idles while requests wait. A slow downstream raises the baseline (measured while the CPU is idle) and
// so the limit; it never lowers the capacity. The limit is *enforced* only while the loop is under
// pressure (see `pressure`), so in-flight that is high only because a downstream is slow is never shed.

/** One sampling window of signals, as the sampler and the admission counters saw it. */
export interface WindowStats {
  /** Wall time the window covered, in milliseconds. */
  durationMs: number
  /** Event-loop utilisation over the window, 0..1. */
  elu: number
  /** Requests that finished normally in the window. */
  completed: number
  /** Sum of those requests' latencies, in milliseconds. */
  latencySumMs: number
  /** Requests refused by the limit (or, in observe mode, that would have been) in the window; ceilings not included. */
  rejected: number
  /** Requests that arrived in the window, admitted or refused. */
  arrivals: number
}

export interface LimitSettings {
  minLimit: number
  maxLimit: number
  initialLimit: number
  /** Standing-queue allowance as a fraction of the baseline latency. */
  headroom: number
  /** While the limit binds, the loop should be this busy: idler means the limit is too low. */
  busyTarget: number
}

/** ELU at or above which the loop is under pressure and the limit is enforced. */
export const PRESSURE_ELU = 0.9
/**
 * While shedding, pressure holds until ELU falls below this (hysteresis against on/off flapping), unless
 * arrivals exceed the capacity.
 */
export const RELEASE_ELU = 0.75
/** Windows with fewer completions than this carry too little information to learn from. */
export const MIN_SAMPLES = 5
/** Windows pooled for want of completions are dropped after this many windows. */
export const MAX_POOL_WINDOWS = 20
/** Smoothing of the capacity and baseline estimates (per window, scaled by ELU for capacity). */
export const SMOOTHING = 0.3
/** Standard deviations of random (Poisson) in-flight the limit allows above the model. */
export const VARIANCE_ALLOWANCE = 4
/**
 * Windows in a row with refusals under pressure after which the limit is the model alone (at once when
 * one of them was flooded: see FLOOD_FACTOR).
 */
export const SUSTAINED_WINDOWS = 5
/** Bounds of the feedback gain on the model limit. */
export const MIN_GAIN = 0.5
export const MAX_GAIN = 3
/**
 * A binding window whose arrivals reached this many times the capacity counts as sustained at once.
 * Random arrivals below capacity do not double in a window: at 0.8x of 409/s, 100 ms holds 33 on
 * average (standard deviation 6) against 82 at twice the capacity, or 50 at a cold process's low
 * estimate of 250/s. So this is an overload, and the room left for random arrivals would only queue
 * more work into the first half second of a burst (limit 17-20 against a model of 8 in a cold 4x
 * burst, loop delay up to 43 ms).
 */
export const FLOOD_FACTOR = 2

export class AdaptiveLimit {
  /** Current concurrency limit (a whole number within [minLimit, maxLimit]). */
  limit: number
  /** Estimated sustainable throughput at a fully busy loop, requests/s; 0 while unknown. */
  capacity = 0
  /** Mean latency of requests when the loop had headroom, ms; 0 while unknown. */
  baselineMs = 0
  /** Whether the limit is enforced now. */
  pressure = false
  /** Completions learned from since start: how much the capacity estimate has seen. */
  learned = 0
  /**
   * Feedback on the model: while the limit binds (refusals under pressure) the gain integrates towards
   * an ELU of the busy target: an idle CPU while work is refused raises it, a saturated loop lowers it
   * (so it cannot creep up). Without pressure it relaxes towards 1.
   */
  gain = 1

  readonly #settings: LimitSettings
  readonly #feedback: boolean
  #pool = emptyPool()
  /** Windows in a row in which the limit bound (refusals under pressure). */
  #binding = 0

  /** `feedback` = false keeps the gain at 1 (observe mode: the refusals it counts are not shed). */
  constructor (settings: LimitSettings, feedback = true) {
    this.#settings = settings
    this.#feedback = feedback
    this.limit = settings.initialLimit
  }

  /** Feed one window; updates the estimates, the pressure verdict and the limit. */
  update (w: WindowStats): void {
    const seconds = w.durationMs / 1000
    if (!(seconds > 0) || !Number.isFinite(seconds)) return
    const elu = clamp(finiteOr(w.elu, 0), 0, 1)

    if (this.pressure) {
      // While shedding, an idle moment releases pressure, unless more arrived than a fully busy loop
      // finishes: then the limit is too low (the gain raises it), not the overload over. Released, it
      // would admit everything until a loop busy for an interval enforces it again (55 requests in 143 ms
      // in a traced 4x burst): a stall that makes on-demand clients open hundreds of connections.
      this.pressure = elu >= PRESSURE_ELU || (w.rejected > 0 && (elu >= RELEASE_ELU || this.#beyondCapacity(w.arrivals, seconds)))
    } else {
      this.pressure = elu >= PRESSURE_ELU
    }

    // Windows are pooled until they hold MIN_SAMPLES completions: a service of slow requests (25/s)
    // finishes fewer than that in one window and would otherwise never learn.
    // Windows without a completion are left out: their busy time belongs to requests still running.
    const pool = this.#pool
    pool.windows++
    if (this.pressure && elu >= RELEASE_ELU) pool.queued = true
    if (w.completed > 0 && Number.isFinite(w.latencySumMs)) {
      pool.ms += w.durationMs
      pool.busyMs += elu * w.durationMs
      pool.completed += w.completed
      pool.latencySumMs += w.latencySumMs
    }
    if (pool.completed >= MIN_SAMPLES) {
      this.#learn(pool.completed, pool.latencySumMs, pool.ms / 1000, pool.busyMs / pool.ms, pool.queued)
      this.#pool = emptyPool()
    } else if (pool.windows >= MAX_POOL_WINDOWS) {
      this.#pool = emptyPool()
    }

    const binding = this.pressure && w.rejected > 0
    const flooded = binding && this.#flooded(w.arrivals, seconds)
    this.#binding = !binding ? 0 : flooded ? Math.max(this.#binding + 1, SUSTAINED_WINDOWS) : this.#binding + 1
    if (binding) {
      if (this.#feedback) this.gain = clamp(this.gain * (1 + this.#settings.busyTarget - elu), MIN_GAIN, MAX_GAIN)
    } else if (!this.pressure) {
      this.gain += SMOOTHING * (1 - this.gain)
    }

    if (this.capacity > 0 && this.baselineMs > 0) {
      const s = this.#settings
      const model = this.capacity * (this.baselineMs / 1000) * (1 + s.headroom) * this.gain
      // Once the limit has bound for SUSTAINED_WINDOWS windows in a row (or once, with arrivals at
      // FLOOD_FACTOR times capacity), arrivals exceed what the loop finishes: the room limitOf() leaves
      // for random arrivals would only be a standing queue (longer turns, later refusals). Not sooner:
      // random arrivals near capacity bind it for a window or two, and taking the room away then
      // refused more of them.
      this.limit = clamp(this.#binding >= SUSTAINED_WINDOWS ? Math.ceil(model) : limitOf(model), s.minLimit, s.maxLimit)
    }
  }

  /** The last window had refusals under pressure (the limit bound). */
  get binding (): boolean {
    return this.#binding > 0
  }

  /** At least as many arrived in the window as a fully busy loop finishes, by the capacity learned so far. */
  #beyondCapacity (arrivals: number, seconds: number): boolean {
    return this.capacity > 0 && arrivals / seconds >= this.capacity
  }

  /**
   * FLOOD_FACTOR times what a fully busy loop finishes arrived in the window, and more than random
   * arrivals at capacity bring (VARIANCE_ALLOWANCE standard deviations): that second bound matters only
   * where a window expects fewer than 16 arrivals at capacity (a 10 ms `sampleInterval`, or a route
   * under 160/s: the 10 ms sync route's 3x still floods).
   */
  #flooded (arrivals: number, seconds: number): boolean {
    const expected = this.capacity * seconds
    return expected > 0 && arrivals >= Math.max(FLOOD_FACTOR * expected, expected + VARIANCE_ALLOWANCE * Math.sqrt(expected))
  }

  /** `queued`: a window of the pool was under pressure at RELEASE_ELU or busier (its latencies queued for the CPU). */
  #learn (completed: number, latencySumMs: number, seconds: number, elu: number, queued: boolean): void {
    this.learned += completed
    if (elu > 0) {
      const sample = completed / seconds / elu
      this.capacity = this.capacity === 0 ? sample : this.capacity + SMOOTHING * elu * (sample - this.capacity)
    }
    const meanMs = latencySumMs / completed
    if (this.baselineMs === 0) {
      this.baselineMs = meanMs
    } else if (!this.pressure || !queued) {
      // Pressure held only by refusals while more than the capacity arrives, on a loop below RELEASE_ELU
      // in every pooled window: the limit holds the CPU back and little queues for it, so latency is
      // near the baseline again. (Otherwise a mixed app whose window of mostly cheap completions lowered
      // the baseline could never raise it: its limit stuck at 2 at ELU 0.5.)
      this.baselineMs += SMOOTHING * (meanMs - this.baselineMs)
    } else if (meanMs < this.baselineMs) {
      // Under pressure latency carries queueing: it may only teach us that requests got cheaper.
      this.baselineMs = meanMs
    }
  }
}

/**
 * The limit for a model in-flight (capacity x baseline x headroom x gain). Random arrivals below
 * capacity make in-flight fluctuate around its mean by about its square root: the limit allows
 * VARIANCE_ALLOWANCE of those above the model, so that a burst the loop absorbs is not refused.
 * (Once the limit has bound for SUSTAINED_WINDOWS in a row, or in one flooded window, update() uses
 * the model alone.)
 */
export function limitOf (model: number): number {
  return Math.ceil(model + VARIANCE_ALLOWANCE * Math.sqrt(model))
}

interface Pool { windows: number, ms: number, busyMs: number, completed: number, latencySumMs: number, queued: boolean }

function emptyPool (): Pool {
  return { windows: 0, ms: 0, busyMs: 0, completed: 0, latencySumMs: 0, queued: false }
}

export function clamp (x: number, lo: number, hi: number): number {
  return x < lo ? lo : x > hi ? hi : x
}

export function finiteOr (x: number, fallback: number): number {
  return Number.isFinite(x) ? x : fallback
}
