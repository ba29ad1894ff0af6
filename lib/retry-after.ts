// Retry-After policy: how long rejected clients are told to wait. Grows while shedding persists,
// falls once it stops, and is jittered per response so that clients do not come back together.
// Pure: time is passed in, randomness is injected.

export interface RetryAfterSettings {
  /** Smallest advertised value, whole seconds (>= 1). */
  min: number
  /** Largest advertised value, whole seconds. */
  max: number
}

export class RetryAfterPolicy {
  /** The value currently advertised before jitter, whole seconds. */
  base: number

  readonly #settings: RetryAfterSettings
  readonly #random: () => number
  #shedding = false
  #nextStepAt = 0

  constructor (settings: RetryAfterSettings, random: () => number = Math.random) {
    this.#settings = settings
    this.#random = random
    this.base = settings.min
  }

  /**
   * Called once per sampling window. While shedding lasts a full `base` seconds the base doubles (up
   * to max); while it stays off for `base` seconds the base halves (down to min).
   */
  update (shedding: boolean, nowMs: number): void {
    if (shedding !== this.#shedding) {
      this.#shedding = shedding
      this.#nextStepAt = nowMs + this.base * 1000
      return
    }
    if (nowMs < this.#nextStepAt) return
    const { min, max } = this.#settings
    if (shedding) {
      this.base = Math.min(max, this.base * 2)
    } else {
      this.base = Math.max(min, Math.floor(this.base / 2))
    }
    this.#nextStepAt = nowMs + this.base * 1000
  }

  /** The value for one response: base plus up to about half of it again, at random, at most max. */
  value (): number {
    const base = this.base
    return Math.min(this.#settings.max, base + Math.floor(this.#random() * (Math.ceil(base / 2) + 1)))
  }
}
