// Shape of bench/results/<date>.json.
import type { CapacityResult, HelloResult, LoadResult, StepResult, SweepPoint } from './scenarios.js'

export interface BenchResults {
  date: string
  mode: 'full' | 'quick'
  /** git commit of lib/ at the start of the run */
  lib: string
  machine: { cpus: number, model: string, node: string, platform: string, pinned: boolean, wrk: boolean }
  sloMs: number
  timeoutMs: number
  drainMs: number
  elapsedSeconds: number
  capacity: CapacityResult
  sweep: { mults: number[], seconds: number, results: Record<string, SweepPoint[]> }
  step?: { seconds: [number, number, number], results: Record<string, StepResult> }
  slow?: { route: string, results: Record<string, LoadResult> }
  stall?: { everyMs: number, stallMs: number, results: Record<string, LoadResult> }
  bimodal?: { routes: Array<{ name: string, path: string, weight: number, cpuMs: number }>, mult: number, results: Record<string, LoadResult> }
  hello?: HelloResult
  notes: string[]
}
