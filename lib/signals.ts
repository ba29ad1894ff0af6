// Event-loop signals for one sampling window: utilisation from eventLoopUtilization() deltas (never the
// cumulative figure since start) and delay from monitorEventLoopDelay() (a high percentile, not the mean).

import { monitorEventLoopDelay, performance, type EventLoopUtilization, type IntervalHistogram } from 'node:perf_hooks'
import type { LoopWindow } from './admission.js'

/**
 * monitorEventLoopDelay() records the whole interval between two ticks of its timer, resolution
 * included; the delay is what exceeds the resolution. Values in nanoseconds, result in milliseconds.
 */
export function excessDelayMs (recordedNs: number, resolutionMs: number): number {
  const ms = recordedNs / 1e6 - resolutionMs
  return ms > 0 && Number.isFinite(ms) ? ms : 0
}

export class LoopMonitor {
  readonly #resolutionMs: number
  readonly #histogram: IntervalHistogram
  #elu: EventLoopUtilization
  #lastMs: number

  constructor (resolutionMs: number) {
    this.#resolutionMs = resolutionMs
    this.#histogram = monitorEventLoopDelay({ resolution: resolutionMs })
    this.#histogram.enable()
    this.#elu = performance.eventLoopUtilization()
    this.#lastMs = performance.now()
  }

  /** Signals since the previous read (or since construction). */
  read (): LoopWindow {
    const now = performance.now()
    const elu = performance.eventLoopUtilization()
    const delta = performance.eventLoopUtilization(elu, this.#elu)
    const h = this.#histogram
    // A window in which the delay timer never fired was one long stall: its length is the delay.
    const durationMs = now - this.#lastMs
    const delayP99Ms = h.count > 0
      ? excessDelayMs(h.percentile(99), this.#resolutionMs)
      : Math.max(0, durationMs - this.#resolutionMs)
    h.reset()
    this.#elu = elu
    this.#lastMs = now
    return { durationMs, elu: delta.utilization, delayP99Ms }
  }

  stop (): void {
    this.#histogram.disable()
  }
}
