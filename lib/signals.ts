// Event-loop signals for one sampling window: utilisation from eventLoopUtilization() deltas (never the
// cumulative figure since start) and the loop's delay: how late a timer of `resolutionMs` fires, which is
// how long an await that became ready waits to resume. Each delay sample is also handed to `onDelay`
// (the histograms); the window keeps a high percentile of them, not the mean.

import { performance, type EventLoopUtilization } from 'node:perf_hooks'
import type { LoopWindow } from './admission.js'

/**
 * How often the loop's delay is sampled, ms. The timer wakes an idle process: at 10 ms it cost 19 ms of
 * CPU per idle second here, against 9 ms for monitorEventLoopDelay at 10 ms; at 20 ms it costs about
 * what that did. A busy loop's turns last longer than this anyway, and a stall is one sample as long.
 */
export const DELAY_RESOLUTION_MS = 20

/** A window keeps at most this many delay samples (a long window at a fine resolution). */
const MAX_SAMPLES = 10_000

/**
 * How late a timer that should fire every `resolutionMs` fired, in milliseconds, from the interval
 * between two of its callbacks: what exceeds the resolution, never negative or NaN.
 */
export function excessDelayMs (intervalMs: number, resolutionMs: number): number {
  const ms = intervalMs - resolutionMs
  return ms > 0 && Number.isFinite(ms) ? ms : 0
}

/** The 99th percentile of some samples (nearest rank); 0 for none. Sorts its argument. */
export function p99 (samples: number[]): number {
  if (samples.length === 0) return 0
  samples.sort((a, b) => a - b)
  return samples[Math.ceil(samples.length * 0.99) - 1] as number
}

export class LoopMonitor {
  readonly #resolutionMs: number
  readonly #timer: NodeJS.Timeout
  readonly #onDelay: ((seconds: number) => void) | undefined
  #samples: number[] = []
  #lastTick: number
  #elu: EventLoopUtilization
  #lastMs: number

  constructor (resolutionMs: number, onDelay?: (seconds: number) => void) {
    this.#resolutionMs = resolutionMs
    this.#onDelay = onDelay
    this.#elu = performance.eventLoopUtilization()
    this.#lastMs = this.#lastTick = performance.now()
    this.#timer = setInterval(() => { this.#tick() }, resolutionMs)
    this.#timer.unref()
  }

  #tick (): void {
    const now = performance.now()
    const delayMs = excessDelayMs(now - this.#lastTick, this.#resolutionMs)
    this.#lastTick = now
    if (this.#samples.length < MAX_SAMPLES) this.#samples.push(delayMs)
    this.#onDelay?.(delayMs / 1000)
  }

  /** Signals since the previous read (or since construction). */
  read (): LoopWindow {
    const now = performance.now()
    const elu = performance.eventLoopUtilization()
    const delta = performance.eventLoopUtilization(elu, this.#elu)
    // A window in which the delay timer never fired was one long stall: its length is the delay.
    const durationMs = now - this.#lastMs
    const delayP99Ms = this.#samples.length > 0 ? p99(this.#samples) : excessDelayMs(durationMs, this.#resolutionMs)
    this.#samples = []
    this.#elu = elu
    this.#lastMs = now
    return { durationMs, elu: delta.utilization, delayP99Ms }
  }

  stop (): void {
    clearInterval(this.#timer)
  }
}
