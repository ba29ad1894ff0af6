// Shape of bench/results/<date>.json, and what every run records about itself.
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
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

/** Commit of lib/ and whether it had uncommitted changes when the run started. */
export function gitState (): string {
  const root = fileURLToPath(new URL('..', import.meta.url))
  const head = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' })
  if (head.status !== 0) return 'unknown'
  const dirty = spawnSync('git', ['status', '--porcelain', '--', 'lib'], { cwd: root, encoding: 'utf8' })
  return `${head.stdout.trim()}${dirty.stdout.trim().length > 0 ? ' + uncommitted changes' : ''}`
}

/** Local date as YYYY-MM-DD, for result file names. */
export function isoDate (): string {
  const d = new Date()
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`
}
