// What a request of each route costs the event loop, and the pace that spaces admissions by it. No
// Fastify, no clock: the counts, the busy time and the time of a decision arrive as plain numbers.
//
// Why a pace: while the limit binds, every permit a request frees is taken by the next arrival, at the
// arrival rate (twice the capacity at 2x). Requests admitted close together await together and come back
// together: their continuations, 1 ms each and due 1.1 ms apart, run back to back, a "train" of 8-23 ms
// that every request read after it waits for. Spacing admissions at a little more than the loop can
// run keeps the continuations apart. The space is counted in loop time, not in requests: a mixed app's
// requests differ a thousandfold in cost (a 12 µs hello-world route, a 10 ms synchronous one), and a
// pace in requests per second served such an app 67 % of its capacity against 84 % without it. Only
// routes that run a good share of their cost when admitted, and cost a millisecond or more, are paced
// (admission.ts: PACED_SHARE, PACED_MIN_COST_MS); the turns measure that share (turns.ts: runMinMs,
// smoothed here into prefixMs).
//
// How a route's cost is learned: a window's busy loop time is the sum of what the requests finished in
// it cost, plus what its refusals cost. Recursive least squares fits those costs, one per route, over
// the windows (with forgetting, so a route whose cost changes is followed). The refusals' cost is not
// fitted but taken as REFUSAL_MS: under a steady overload refusals and completions move together, and
// a fitted refusal cost drifted to 0.4 ms while the route's fell from 2.2 to 1.8 ms. Requests of a route finish
// in varying numbers from one window to the next, which is what tells the routes apart; until a
// route's figure rests on data, it stays near the mean cost the capacity gives.

/** A route's slot in the cost model; the plugin keeps one per route and counts its completions here. */
export interface RouteCost {
  /** Index in the model (0 = the shared slot: routes beyond MAX_ROUTES, and exempt routes). */
  readonly index: number
  /** Requests of this route finished normally in the current window. */
  completed: number
  /** Requests of this route finished since start: how much its figure rests on. */
  seen: number
  /**
   * Loop time a request of this route runs when admitted, before the loop reads on, ms: each window's
   * shortest run (runMinMs), smoothed over windows; -1 while none was measured.
   */
  prefixMs: number
  /** The shortest run at admission of the current window, ms (Infinity while none; turns.ts). */
  runMinMs: number
}

/** Routes that get a cost of their own; later ones share one slot. */
export const MAX_ROUTES = 32
/** Completions of a route before its own figure is used (the mean cost before). */
export const MIN_SEEN = 50
/** Forgetting per window: about the last 50 windows (5 s at the default interval) count. */
export const FORGETTING = 0.98
/**
 * Weight of the prior (the mean cost, for a new route) against one window's squared error, ms²: weak,
 * so that a few windows of data outweigh it, while a route that barely varies stays near it.
 */
export const PRIOR_VARIANCE = 1
/**
 * A route's uncertainty never exceeds its prior's: forgetting grows the uncertainty of a route that no
 * longer finishes requests by 2 % a window, without bound otherwise.
 */
export const MAX_VARIANCE = PRIOR_VARIANCE
/** A route's cost is never taken below this, ms (a fit can go to 0 or below). */
export const COST_FLOOR_MS = 0.005
/** Smoothing of a route's run at admission, per window that measured one. */
export const RUN_SMOOTHING = 0.3
/** What a refusal costs the loop, ms (measured 15-60 µs on this project's machine). */
export const REFUSAL_MS = 0.03

/** Slot 0: routes beyond MAX_ROUTES; then the routes. */
const DIMENSIONS = MAX_ROUTES + 1

export class CostModel {
  readonly #slots: RouteCost[] = []
  readonly #theta = new Float64Array(DIMENSIONS)
  /** Uncertainty of the estimates (the inverse of the information gathered), row-major. */
  readonly #p = new Float64Array(DIMENSIONS * DIMENSIONS)
  readonly #x = new Float64Array(DIMENSIONS)
  readonly #px = new Float64Array(DIMENSIONS)
  /** The slot of routes beyond MAX_ROUTES. */
  readonly shared: RouteCost
  /** The mean cost of a request (1000 / capacity), ms; 0 while unknown. */
  meanMs = 0

  constructor () {
    // A route's uncertainty starts at its first completions (#start); until then it takes no part.
    this.shared = { index: 0, completed: 0, seen: 0, prefixMs: -1, runMinMs: Infinity }
    this.#slots.push(this.shared)
  }

  /** The slots handed out, the shared one first. */
  get slots (): readonly RouteCost[] {
    return this.#slots
  }

  /** A slot for a new route (the shared one once MAX_ROUTES have theirs). */
  register (): RouteCost {
    const index = this.#slots.length
    if (index >= DIMENSIONS) return this.shared
    const slot: RouteCost = { index, completed: 0, seen: 0, prefixMs: -1, runMinMs: Infinity }
    this.#slots.push(slot)
    return slot
  }

  /**
   * What a request of this route costs the loop, ms: its own figure once it rests on MIN_SEEN
   * completions, the mean cost before (0 while that is unknown too).
   */
  costOf (slot: RouteCost | undefined): number {
    if (slot === undefined || slot.seen < MIN_SEEN) return this.meanMs
    return Math.max(COST_FLOOR_MS, this.#theta[slot.index] as number)
  }

  /**
   * Learn from one window: `busyMs` of busy loop, `refused` refusals, and each route's completions
   * and shortest run at admission (read from the slots and reset). `meanMs` is the mean cost the capacity gives, the prior of a route
   * still unknown to the model.
   */
  learn (busyMs: number, refused: number, meanMs: number): void {
    this.meanMs = meanMs > 0 && Number.isFinite(meanMs) ? meanMs : 0
    const d = DIMENSIONS
    const x = this.#x
    const theta = this.#theta
    const p = this.#p
    x.fill(0)
    let any = false
    for (const slot of this.#slots) {
      const run = slot.runMinMs
      if (run < Infinity) {
        slot.prefixMs = slot.prefixMs < 0 ? run : slot.prefixMs + RUN_SMOOTHING * (run - slot.prefixMs)
        slot.runMinMs = Infinity
      }
      const n = slot.completed
      if (n === 0) continue
      if (slot.seen === 0) this.#start(slot.index)
      slot.seen += n
      slot.completed = 0
      x[slot.index] = n
      any = true
    }
    const work = busyMs - REFUSAL_MS * refused
    if (!any || !(work >= 0) || !Number.isFinite(work)) return
    const px = this.#px
    let xpx = 0
    let predicted = 0
    for (let i = 0; i < d; i++) {
      let s = 0
      for (let j = 0; j < d; j++) s += (p[i * d + j] as number) * (x[j] as number)
      px[i] = s
      xpx += (x[i] as number) * s
      predicted += (theta[i] as number) * (x[i] as number)
    }
    const denom = FORGETTING + xpx
    const error = work - predicted
    for (let i = 0; i < d; i++) theta[i] = (theta[i] as number) + (px[i] as number) * error / denom
    for (let i = 0; i < d; i++) {
      const pi = px[i] as number
      for (let j = 0; j < d; j++) p[i * d + j] = ((p[i * d + j] as number) - pi * (px[j] as number) / denom) / FORGETTING
    }
    // Bounded: a route's row and column are scaled down together, which keeps the matrix a covariance.
    for (let i = 0; i < d; i++) {
      const v = p[i * d + i] as number
      if (!(v > MAX_VARIANCE)) continue
      const scale = Math.sqrt(MAX_VARIANCE / v)
      for (let j = 0; j < d; j++) {
        p[i * d + j] = (p[i * d + j] as number) * scale
        p[j * d + i] = (p[j * d + i] as number) * scale
      }
    }
  }

  /** A route's first completions: its estimate starts at the mean cost, with the prior's uncertainty. */
  #start (index: number): void {
    const d = DIMENSIONS
    const p = this.#p
    for (let j = 0; j < d; j++) {
      p[index * d + j] = 0
      p[j * d + index] = 0
    }
    p[index * d + index] = PRIOR_VARIANCE
    this.#theta[index] = this.meanMs
  }
}

/**
 * Spaces admissions by their cost: a bucket of loop time that fills at `rate` ms per ms of wall time, up
 * to `burstMs`. A request is admitted while the bucket is not empty and takes its cost from it (which
 * may leave it in debt: a 10 ms request is admitted on a bucket of 4 ms, and the next waits).
 */
export class Pace {
  #tokens = 0
  #at = 0

  admit (nowMs: number, costMs: number, rate: number, burstMs: number): boolean {
    const tokens = Math.min(burstMs, this.#tokens + rate * (nowMs - this.#at))
    this.#at = nowMs
    if (tokens <= 0) {
      this.#tokens = tokens
      return false
    }
    this.#tokens = tokens - costMs
    return true
  }
}
