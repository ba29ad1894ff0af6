// The targets fastify-admission must meet, checked against a results file.
// Every target is evaluated for every contender that ran the scenario, so the
// report can show the baselines' figures next to the plugin's; PASS/FAIL of the
// benchmark as a whole is the admission contender's.
import type { BenchResults } from './results.js'
import { ms, pct100, serverInfo, type HelloResult } from './scenarios.js'

export interface TargetCheck {
  id: string
  label: string
  target: string
  byContender: Record<string, { value: string, pass: boolean }>
  /**
   * For a target admission missed: what was measured in the same run that puts it out of reach, or where
   * in the run the miss lies (per second of a point, per half-second after a step).
   */
  reason?: string
}

export function checkTargets (r: BenchResults): TargetCheck[] {
  const out: TargetCheck[] = []
  const C = r.capacity.rps
  const sweepAt = (c: string, mult: number): BenchResults['sweep']['results'][string][number] | undefined =>
    r.sweep.results[c]?.find(p => p.mult === mult)

  const goodputTargets: Array<[number, number]> = [[2, 0.95], [4, 0.9], [10, 0.8]]
  for (const [mult, min] of goodputTargets) {
    const t: TargetCheck = { id: `goodput-${mult}x`, label: `goodput at ${mult}x`, target: `≥ ${min * 100} % of capacity`, byContender: {} }
    for (const c of Object.keys(r.sweep.results)) {
      const p = sweepAt(c, mult)
      if (p === undefined) continue
      // From the count: goodPerSec is stored rounded to 0.1/s (374.4 of 374.4/s read as 0.8999…).
      const share = p.stats.good / p.seconds / C
      const pass = share >= min
      // A miss that rounds to the target itself is shown to a tenth ("94.7 %", not "95 %").
      t.byContender[c] = { value: !pass && pct100(share) === pct100(min) ? `${(share * 100).toFixed(1)} %` : pct100(share), pass }
    }
    // When in the point the goodput was short: its first seconds follow the step up from the warm-up.
    const seconds = sweepAt('admission', mult)?.perSecond ?? []
    if (t.byContender.admission?.pass === false && seconds.length > 0) {
      t.reason = `per second of the point, % of capacity: ${seconds.map(w => Math.round(w.good / C * 100)).join(', ')}` + busyReading(seconds, C)
    }
    out.push(t)
  }

  for (const mult of [2, 4]) {
    const t: TargetCheck = { id: `p99-${mult}x`, label: `admitted p99 at ${mult}x`, target: '≤ 2 × unloaded p99 (own 0.5x)', byContender: {} }
    for (const c of Object.keys(r.sweep.results)) {
      const p = sweepAt(c, mult)
      const base = sweepAt(c, 0.5)?.stats.okP99 ?? sweepAt('bare', 0.5)?.stats.okP99 ?? r.capacity.unloadedP99
      if (p === undefined || base === null || base === undefined) continue
      const v = p.stats.okP99
      t.byContender[c] = { value: `${ms(v)} (limit ${ms(2 * base)})`, pass: v !== null && v <= 2 * base }
    }
    out.push(t)
  }

  // The learned, pre-opened-pool baseline must refuse within 20 ms at 2x and at 4x.
  for (const mult of [2, 4]) {
    const t: TargetCheck = { id: `rej-p99-${mult}x`, label: `503 p99 at ${mult}x`, target: '≤ 20 ms', byContender: {} }
    for (const c of Object.keys(r.sweep.results)) {
      const p = sweepAt(c, mult)
      if (p === undefined || p.stats.rejected === 0) continue
      t.byContender[c] = { value: ms(p.stats.rejP99), pass: p.stats.rejP99 !== null && p.stats.rejP99 <= 20 }
    }
    // Where in the point the slow 503s were: its first second is the step up from the warm-up's 0.3x.
    const seconds = sweepAt('admission', mult)?.perSecond ?? []
    const rest = seconds.slice(1).map(w => w.rejP99).filter((v): v is number => v !== null)
    if (t.byContender.admission?.pass === false && rest.length > 0) {
      t.reason = `per second of the point: ${ms(seconds[0]?.rejP99 ?? null)} in the first (the step up from the warm-up's 0.3x), then ${ms(Math.min(...rest))} to ${ms(Math.max(...rest))}`
    }
    out.push(t)
  }

  {
    const t: TargetCheck = { id: 'no-rej-0.5x', label: 'rejections at 0.5x', target: '= 0', byContender: {} }
    for (const c of Object.keys(r.sweep.results)) {
      const p = sweepAt(c, 0.5)
      if (p === undefined) continue
      t.byContender[c] = { value: String(p.stats.rejected), pass: p.stats.rejected === 0 }
    }
    out.push(t)
  }

  if (r.slow !== undefined) {
    const t: TargetCheck = { id: 'no-rej-slow', label: 'rejections, slow downstream (io 300 ms, 0.7x)', target: '= 0', byContender: {} }
    for (const [c, v] of Object.entries(r.slow.results)) t.byContender[c] = { value: String(v.stats.rejected), pass: v.stats.rejected === 0 }
    out.push(t)
  }

  if (r.stall !== undefined) {
    const t: TargetCheck = { id: 'no-rej-stall', label: 'rejections outside the stall windows (0.7x)', target: '= 0', byContender: {} }
    for (const [c, v] of Object.entries(r.stall.results)) {
      const n = v.rejectedOutsideStalls ?? 0
      t.byContender[c] = { value: `${n} (total 503s ${v.stats.rejected})`, pass: n === 0 }
    }
    out.push(t)
  }

  if (r.step !== undefined) {
    const up: TargetCheck = { id: 'step-up', label: 'step to 3x: goodput back to ≥ 90 % of capacity', target: 'within 1 s, and held', byContender: {} }
    const down: TargetCheck = { id: 'step-down', label: 'step back to 0.5x: last rejection', target: '≤ 2 s after the step', byContender: {} }
    for (const [c, v] of Object.entries(r.step.results)) {
      up.byContender[c] = {
        value: `${v.recoveryTime === null ? 'never' : `${v.recoveryTime} s`}, then ${pct100(v.goodputAfter1s)}`,
        pass: v.recoveryTime !== null && v.recoveryTime <= 1 && v.goodputAfter1s >= 0.9
      }
      down.byContender[c] = {
        value: v.lastRejectAfterDown === 0 && v.rejectionsAfterDown2s === 0 ? 'none' : `+${v.lastRejectAfterDown} s (${v.rejectionsAfterDown2s} after 2 s)`,
        pass: v.rejectionsAfterDown2s === 0
      }
    }
    const admission = r.step.results.admission
    if (admission !== undefined && up.byContender.admission?.pass === false) {
      // Where the recovery was slow: the goodput of each half-second from the step up.
      const halves: number[] = []
      for (let k = Math.round(admission.stepUpAt * 10); k + 5 <= Math.round(admission.stepDownAt * 10); k += 5) {
        halves.push(admission.buckets.slice(k, k + 5).reduce((a, b) => a + b.good, 0) / 0.5 / C)
      }
      if (halves.length > 0) {
        const run = { series: admission.series, died: false }
        const elus = halves.map((_, i) => serverInfo(run, admission.stepUpAt + i * 0.5, admission.stepUpAt + (i + 1) * 0.5).meanElu)
        up.reason = `goodput per half-second from the step, % of capacity: ${halves.map(x => Math.round(x * 100)).join(', ')}` +
          (admission.series.length > 0 ? `; the server's loop utilisation: ${elus.map(x => x.toFixed(2)).join(', ')}` : '')
      }
    }
    out.push(up, down)
  }

  if (r.hello !== undefined && r.hello.mean.admission !== undefined) {
    out.push({
      id: 'hello-ratio',
      label: 'hello-world req/s vs bare',
      target: '≥ 0.98',
      byContender: { admission: { value: `${r.hello.ratio.toFixed(3)} (medians of ${r.hello.rounds.length} fresh processes each, ${r.hello.median.admission ?? 0} vs ${r.hello.median.bare ?? 0}/s; CPU/req ${r.hello.cpuPerRequestUs.admission ?? '–'} vs ${r.hello.cpuPerRequestUs.bare ?? '–'} µs; not 2xx in the rounds ${r.hello.roundsOther?.admission ?? '–'} vs ${r.hello.roundsOther?.bare ?? '–'}, in the ${r.hello.warmupSeconds ?? '–'} s warm-ups ${r.hello.warmupOther?.admission ?? '–'} vs ${r.hello.warmupOther?.bare ?? '–'}${r.hello.unwarmedRatio !== undefined ? `; ${r.hello.unwarmedRatio.toFixed(3)} of bare processes that did not warm process.nextTick` : ''}${r.hello.many !== undefined ? `; with ${r.hello.many.connections} connections ${r.hello.many.ratio.toFixed(3)}, not 2xx ${r.hello.many.other.admission ?? '–'} vs ${r.hello.many.other.bare ?? '–'}` : ''})`, pass: r.hello.ratio >= 0.98 } },
      // An onRequest hook that does nothing is the least a plugin deciding per request adds; the floor,
      // the least one that also bounds in-flight requests and times them.
      ...(r.hello.ratio < 0.98 && (r.hello.hook !== undefined || r.hello.clock !== undefined || r.hello.floor !== undefined)
        ? { reason: helloReason(r.hello) }
        : {})
    })
  }
  return out
}

/** Why the hello-world ratio misses: what the references, registered as the plugin is, read. */
function helloReason (h: HelloResult): string {
  const parts: string[] = []
  if (h.hook !== undefined) parts.push(`an onRequest hook that does nothing, registered the same way, reads ${h.hook.ratio.toFixed(3)} of bare (median ${h.median['empty-hook'] ?? 0}/s); the plugin reads ${h.hook.admissionRatio.toFixed(3)} of that hook`)
  if (h.clock !== undefined) parts.push(`one clock read per request in that hook (clock-hook) reads ${h.clock.ratio.toFixed(3)} of bare (median ${h.median['clock-hook'] ?? 0}/s)`)
  if (h.floor !== undefined) parts.push(`the floor of any controller that bounds in-flight requests and times them (a count, a clock read at each end, a 'close' listener: permit-floor) reads ${h.floor.ratio.toFixed(3)} of bare (median ${h.median['permit-floor'] ?? 0}/s); the plugin reads ${h.floor.admissionRatio.toFixed(3)} of that floor`)
  // In CPU per request: what each reference adds to bare, against what the target allows.
  const cpu = h.cpuPerRequestUs
  const bare = cpu.bare
  const added = (['empty-hook', 'clock-hook', 'permit-floor', 'admission'] as const)
    .filter(c => cpu[c] !== undefined)
    .map(c => `${c} ${((cpu[c] as number) - (bare as number) >= 0 ? '+' : '')}${((cpu[c] as number) - (bare as number)).toFixed(2)}`)
  if (bare !== undefined && bare > 0 && added.length > 1) {
    parts.push(`server CPU per request beyond bare's ${bare.toFixed(2)} µs: ${added.join(', ')} µs, where 0.98 of bare allows about +${(bare * (1 / 0.98 - 1)).toFixed(2)}`)
  }
  return parts.join('; ')
}

/**
 * For a goodput miss: the server's loop utilisation per second and its busy time per 2xx (refusals'
 * share included), beside what a request costs at capacity. A loop busy throughout whose cost per 2xx
 * falls over the point is a process still warming up, not one left idle. Empty for results without
 * the utilisation.
 */
function busyReading (seconds: ReadonlyArray<{ good: number, elu?: number }>, capacity: number): string {
  if (!seconds.every(w => w.elu !== undefined && w.good > 0)) return ''
  const elus = seconds.map(w => (w.elu as number).toFixed(2)).join(', ')
  const perGood = seconds.map(w => ((w.elu as number) * 1000 / w.good).toFixed(2)).join(', ')
  return `; the server's loop utilisation: ${elus}; busy loop per 2xx, refusals included: ${perGood} ms (a request at capacity: ${(1000 / capacity).toFixed(2)} ms)`
}
