// A count of permits that each end at a time set when taken, not when the request finishes: observe
// mode's record of the permits enforce would hold. A ring of end times, oldest first. Pure: the clock
// is injected.

export class ExpiringPermits {
  readonly #ends: Float64Array
  readonly #now: () => number
  #head = 0
  #count = 0

  /** At most `size` permits are recorded; beyond that, new ones are not. */
  constructor (size: number, now: () => number) {
    this.#ends = new Float64Array(size)
    this.#now = now
  }

  /** Permits not yet ended. */
  count (): number {
    const ends = this.#ends
    const now = this.#now()
    while (this.#count > 0 && !((ends[this.#head] as number) > now)) {
      this.#head = (this.#head + 1) % ends.length
      this.#count--
    }
    return this.#count
  }

  /** Record a permit that ends `holdMs` from now. */
  add (holdMs: number): void {
    const ends = this.#ends
    if (this.#count === ends.length) return
    ends[(this.#head + this.#count) % ends.length] = this.#now() + holdMs
    this.#count++
  }
}
