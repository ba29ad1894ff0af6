// Retry-After policy: how long refused clients are told to wait. Grows while shedding persists, falls
// quickly once it stops, and is jittered per response so that clients do not come back together, at
// the cap as well. Pure: time is passed in, randomness is injected.

export interface RetryAfterSettings {
  /** Smallest advertised value, whole seconds (>= 1). */
  min: number
  /** Largest advertised value, whole seconds. */
  max: number
}

/** Without shedding, the base halves after every this long. */
export const QUIET_STEP_MS = 1000

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
   * to max). Once it stops, the base halves every QUIET_STEP_MS (down to min): from the cap of 30 s a
   * refusal 5 s after the episode is told 1 s again, not the value of a storm that is over.
   */
  update (shedding: boolean, nowMs: number): void {
    if (shedding !== this.#shedding) {
      this.#shedding = shedding
      this.#nextStepAt = nowMs + (shedding ? this.base * 1000 : QUIET_STEP_MS)
      return
    }
    if (nowMs < this.#nextStepAt) return
    const { min, max } = this.#settings
    if (shedding) {
      this.base = Math.min(max, this.base * 2)
      this.#nextStepAt = nowMs + this.base * 1000
    } else {
      this.base = Math.max(min, Math.floor(this.base / 2))
      this.#nextStepAt = nowMs + QUIET_STEP_MS
    }
  }

  /**
   * The value for one response: uniform over a band about half the base wide, starting at the base, or
   * ending at max when there is no room above the base. At the cap the values still spread (15-30 s for
   * a cap of 30), so the clients refused together do not return together.
   */
  value (): number {
    const { min, max } = this.#settings
    const spread = Math.ceil(this.base / 2)
    const lo = Math.max(min, Math.min(this.base, max - spread))
    const hi = Math.min(max, lo + spread)
    return Math.min(hi, lo + Math.floor(this.#random() * (hi - lo + 1)))
  }
}
