// Self-contained HTML report (inline SVG, inline CSS, no scripts).
import type { BenchResults } from './results.js'
import type { LoadResult, StepResult, SweepPoint } from './scenarios.js'
import { esc, lineChart, palette, type Band, type LineSeries } from './svg.js'
import type { TargetCheck } from './targets.js'

const fmtMs = (x: number | null | undefined): string =>
  x === null || x === undefined ? '–' : x >= 1000 ? `${(x / 1000).toFixed(2)} s` : `${x.toFixed(x < 10 ? 1 : 0)} ms`
const pct = (x: number): string => `${(x * 100).toFixed(0)} %`
const colorOf = (c: string): string => palette[c] ?? '#333'
const msAxis = (v: number): string => v >= 1000 ? `${v / 1000} s` : `${v} ms`

function table (head: string[], rows: string[][], cls = ''): string {
  return `<table class="${cls}"><thead><tr>${head.map(h => `<th>${h}</th>`).join('')}</tr></thead><tbody>${rows.map(r => `<tr>${r.map(c => `<td>${c}</td>`).join('')}</tr>`).join('')}</tbody></table>`
}

function targetsSection (targets: TargetCheck[]): string {
  const contenders = ['admission', 'under-pressure', 'static-cap', 'bare'].filter(c => targets.some(t => t.byContender[c] !== undefined))
  const rows = targets.filter(t => Object.keys(t.byContender).length > 0).map((t) => [
    `<b>${esc(t.label)}</b>`,
    esc(t.target),
    ...contenders.map((c) => {
      const v = t.byContender[c]
      if (v === undefined) return '<span class="na">not run</span>'
      const why = c === 'admission' && t.reason !== undefined ? `<br><i>measured reason: ${esc(t.reason)}</i>` : ''
      return `<span class="${v.pass ? 'pass' : 'fail'}">${v.pass ? 'PASS' : 'FAIL'}</span> ${esc(v.value)}${why}`
    })
  ])
  const a = targets.filter(t => t.byContender.admission !== undefined)
  const met = a.filter(t => t.byContender.admission?.pass === true).length
  return `<h2>Targets <small>fastify-admission meets ${met} of ${a.length}</small></h2>
<p>Each target is checked for every contender that ran the scenario; the verdict that counts is the <b>admission</b> column, the others are baselines for comparison.</p>
${table(['target', 'required', ...contenders.map(c => `<span style="color:${colorOf(c)}">${esc(c)}</span>`)], rows, 'targets')}`
}

/** The goodput-vs-offered-load chart of the sweep, a standalone SVG (the README shows it). */
export function goodputChart (r: BenchResults): string {
  const C = r.capacity.rps
  const entries = Object.entries(r.sweep.results)
  const mults = r.sweep.mults
  const goodSeries: LineSeries[] = entries.map(([c, pts]) => ({
    name: c,
    color: colorOf(c),
    markers: true,
    points: pts.map(p => [p.mult, (p.stats.goodPerSec / C) * 100])
  }))
  goodSeries.push({ name: 'ideal: min(offered, capacity)', color: '#999', dash: '4 4', width: 1.2, points: mults.map(m => [m, Math.min(m, 1) * 100]) })
  return lineChart({
    title: 'Goodput vs offered load',
    xLabel: 'offered load (multiple of measured capacity, log scale)',
    yLabel: 'goodput: 2xx within 1 s SLO (% of capacity)',
    xLog: true,
    xTicks: mults,
    xTickFormat: (x: number): string => `${x}x`,
    xMin: Math.min(...mults) * 0.9,
    xMax: Math.max(...mults) * 1.1,
    yMin: 0,
    yMax: Math.max(110, ...goodSeries.flatMap(s => s.points.map(p => (p[1] ?? 0) * 1.05))),
    yTickFormat: v => `${v} %`,
    series: goodSeries,
    targets: [{ x: 2, y: 95, label: 'target ≥95 %' }, { x: 4, y: 90, label: '≥90 %' }, { x: 10, y: 80, label: '≥80 %' }].filter(t => mults.includes(t.x))
  })
}

function sweepSection (r: BenchResults): string {
  const C = r.capacity.rps
  const entries = Object.entries(r.sweep.results)
  if (entries.length === 0) return ''
  const mults = r.sweep.mults
  const xTicks = mults
  const xFmt = (x: number): string => `${x}x`
  const goodChart = goodputChart(r)
  const unloaded = r.sweep.results.admission?.find(p => p.mult === 0.5)?.stats.okP99 ?? r.sweep.results.bare?.find(p => p.mult === 0.5)?.stats.okP99 ?? null
  const p99Chart = lineChart({
    title: 'Admitted (2xx) p99 latency vs offered load',
    xLabel: 'offered load (multiple of capacity, log scale)',
    yLabel: 'p99 of 2xx latency (log scale)',
    xLog: true,
    yLog: true,
    xTicks,
    xTickFormat: xFmt,
    xMin: Math.min(...mults) * 0.9,
    xMax: Math.max(...mults) * 1.1,
    yTickFormat: msAxis,
    series: entries.map(([c, pts]) => ({ name: c, color: colorOf(c), markers: true, points: pts.map(p => [p.mult, p.stats.okP99]) })),
    refs: [
      ...(unloaded !== null ? [{ y: 2 * unloaded, label: `target: 2 × unloaded p99 of admission = ${fmtMs(2 * unloaded)}`, color: '#1b7f3b' }] : []),
      { y: r.sloMs, label: 'SLO 1 s', color: '#c0392b' }
    ]
  })
  const rejChart = lineChart({
    title: 'Rejected (503) p99 latency vs offered load',
    xLabel: 'offered load (multiple of capacity, log scale)',
    yLabel: 'p99 of 503 latency (log scale)',
    xLog: true,
    yLog: true,
    xTicks,
    xTickFormat: xFmt,
    xMin: Math.min(...mults) * 0.9,
    xMax: Math.max(...mults) * 1.1,
    yTickFormat: msAxis,
    series: entries.filter(([, pts]) => pts.some(p => p.stats.rejected > 0)).map(([c, pts]) => ({
      name: c, color: colorOf(c), markers: true, points: pts.map(p => [p.mult, p.stats.rejected > 0 ? p.stats.rejP99 : null])
    })),
    refs: [{ y: 20, label: 'target at 4x: ≤ 20 ms', color: '#1b7f3b' }]
  })
  const shareChart = lineChart({
    title: 'What happened to the offered requests',
    xLabel: 'offered load (multiple of capacity, log scale)',
    yLabel: '% of offered requests',
    xLog: true,
    xTicks,
    xTickFormat: xFmt,
    xMin: Math.min(...mults) * 0.9,
    xMax: Math.max(...mults) * 1.1,
    yMin: 0,
    yMax: 100,
    yTickFormat: v => `${v} %`,
    series: entries.flatMap(([c, pts]) => [
      { name: `${c}: 503`, color: colorOf(c), markers: true, points: pts.map(p => [p.mult, p.stats.offered > 0 ? (100 * p.stats.rejected) / p.stats.offered : 0] as [number, number]) },
      { name: `${c}: late/failed`, color: colorOf(c), dash: '3 3', points: pts.map(p => [p.mult, p.stats.offered > 0 ? (100 * (p.stats.offered - p.stats.good - p.stats.rejected)) / p.stats.offered : 0] as [number, number]) }
    ])
  })
  const rows: string[][] = []
  for (const [c, pts] of entries) {
    for (const p of pts) rows.push(sweepRow(c, p, C))
  }
  return `<h2>1. Load sweep on <code>/work</code></h2>
<p>Open-loop load at fixed multiples of capacity (${C} req/s), ${r.sweep.seconds} s per point, a fresh server per point.
<b>Goodput</b> = responses that are 2xx <i>and</i> arrive within ${r.sloMs} ms of their scheduled send time. Latency is measured from the scheduled send time.</p>
<div class="grid">${goodChart}${p99Chart}${rejChart}${shareChart}</div>
${table(['contender', 'load', 'offered/s', 'goodput', '2xx', '503', 'timeouts + errors', '2xx p50 / p99', '503 p50 / p99', 'server in-flight max / ELU', 'generator lag p99 / interference'], rows, 'num')}`
}

function sweepRow (c: string, p: SweepPoint, C: number): string[] {
  const s = p.stats
  return [
    `<span style="color:${colorOf(c)}">${esc(c)}</span>`,
    `${p.mult}x`,
    String(Math.round(s.offeredPerSec)),
    `${Math.round(s.goodPerSec)}/s (${pct(s.goodPerSec / C)})`,
    String(s.ok),
    `${s.rejected} (${pct(s.offered > 0 ? s.rejected / s.offered : 0)})`,
    `${s.timeouts + s.errors + s.unfinished + s.other}`,
    `${fmtMs(s.okP50)} / ${fmtMs(s.okP99)}`,
    s.rejected > 0 ? `${fmtMs(s.rejP50)} / ${fmtMs(s.rejP99)}` : '–',
    `${p.server.maxInflight} / ${p.server.meanElu.toFixed(2)}`,
    `${fmtMs(p.gen.lagP99)}${p.gen.behind ? ' <span class="fail">behind</span>' : ''}${p.gen.connQueued > 0 ? ` (${p.gen.connQueued} waited for a connection)` : ''}${foreign(p.gen)}`
  ]
}

function foreign (g: { foreignCpu0: number | null, foreignCpu1: number | null }): string {
  const a = g.foreignCpu0 ?? 0
  const b = g.foreignCpu1 ?? 0
  return a > 0.05 || b > 0.05 ? ` <span class="fail" title="CPU used by other processes during this run">noisy: CPU0 ${pct(a)}, CPU1 ${pct(b)}</span>` : ''
}

function stepCharts (c: string, s: StepResult, C: number): string {
  const bands: Band[] = [{ x0: s.stepUpAt, x1: s.stepDownAt, label: '3x load' }]
  const xMax = s.phases.reduce((a, p) => a + p.seconds, 0)
  const perSec = (n: number): number => n * 10
  const traffic = lineChart({
    title: `${c}: offered, goodput and 503s (per 100 ms, as req/s)`,
    xLabel: 'time (s)',
    yLabel: 'requests/s',
    xMin: 0,
    xMax,
    bands,
    series: [
      { name: 'offered', color: '#888', points: s.buckets.map(b => [b.t, perSec(b.offered)]) },
      { name: 'goodput (2xx ≤ 1 s)', color: '#1b7f3b', points: s.buckets.map(b => [b.t, perSec(b.good)]) },
      { name: '503', color: '#d9730d', points: s.buckets.map(b => [b.t, perSec(b.rejected)]) },
      { name: 'late 2xx / failed', color: '#c0392b', dash: '3 2', points: s.buckets.map(b => [b.t, perSec(b.ok - b.good + b.failed)]) }
    ],
    refs: [{ y: C, label: `capacity ${C}/s`, color: '#555' }, { y: 0.9 * C, label: 'target: 90 % of capacity', color: '#1b7f3b', below: true }]
  })
  const hasLimit = s.series.some(p => typeof p.limit === 'number')
  const conc = lineChart({
    title: `${c}: in-flight${hasLimit ? ' and concurrency limit' : ''}`,
    xLabel: 'time (s)',
    yLabel: 'requests',
    xMin: 0,
    xMax,
    bands,
    series: [
      { name: 'in-flight, max per 100 ms', color: '#2c7fb8', points: s.series.map(p => [p.t, p.inflightMax ?? p.inflight]) },
      { name: 'in-flight, sampled', color: '#9ecae1', width: 1, points: s.series.map(p => [p.t, p.inflight]) },
      ...(hasLimit ? [{ name: 'limit', color: '#1b7f3b', dash: '5 3', points: s.series.map(p => [p.t, p.limit ?? null] as [number, number | null]) }] : [])
    ]
  })
  const elu = lineChart({
    title: `${c}: event-loop utilization and loop delay`,
    xLabel: 'time (s)',
    yLabel: 'ELU (0–1)',
    yRightLabel: 'loop delay p99 (ms)',
    xMin: 0,
    xMax,
    yMin: 0,
    yMax: 1.05,
    bands,
    series: [
      { name: 'ELU (100 ms intervals)', color: '#756bb1', points: s.series.map(p => [p.t, p.elu]) },
      { name: 'loop delay p99', color: '#e6550d', right: true, points: s.series.map(p => [p.t, p.delayP99]) }
    ]
  })
  const lat = lineChart({
    title: `${c}: admitted p99 latency per 100 ms`,
    xLabel: 'time (s)',
    yLabel: '2xx p99 (log scale)',
    yLog: true,
    xMin: 0,
    xMax,
    bands,
    yTickFormat: msAxis,
    series: [{ name: '2xx p99 (by scheduled time)', color: colorOf(c), points: s.buckets.map(b => [b.t, b.okP99]) }],
    refs: [{ y: 1000, label: 'SLO 1 s', color: '#c0392b' }]
  })
  return `<h3 style="color:${colorOf(c)}">${esc(c)}</h3><div class="grid">${traffic}${conc}${elu}${lat}</div>`
}

function stepSection (r: BenchResults): string {
  if (r.step === undefined) return ''
  const C = r.capacity.rps
  const entries = Object.entries(r.step.results)
  const rows = entries.map(([c, s]) => [
    `<span style="color:${colorOf(c)}">${esc(c)}</span>`,
    s.firstRejectAfter === null ? 'none' : `${s.firstRejectAfter} s`,
    s.recoveryTime === null ? 'never' : `${s.recoveryTime} s`,
    pct(s.goodputAfter1s),
    `${fmtMs(s.phaseStats[1]?.okP99)} / ${fmtMs(s.phaseStats[1]?.rejP99)}`,
    s.lastRejectAfterDown === 0 ? 'none' : `+${s.lastRejectAfterDown} s`,
    `${pct((s.phaseStats[2]?.goodPerSec ?? 0) / C)} (offered 50 %)`,
    `${s.server.maxInflight}${s.server.maxLimit !== undefined ? ` / limit ${s.server.minLimit}–${s.server.maxLimit}` : ''}`
  ])
  const [a, b, c] = r.step.seconds
  return `<h2>2. Step 0.5x → 3x → 0.5x</h2>
<p>${a} s at 0.5x, ${b} s at 3x (shaded), ${c} s at 0.5x. Buckets are by scheduled send time: a bucket shows what became of the requests offered in it.</p>
${table(['contender', 'first 503 after step', 'goodput ≥ 90 % after', 'goodput from +1 s to step-down', '3x phase: 2xx p99 / 503 p99', 'last 503 after step-down', 'goodput after step-down', 'in-flight max'], rows, 'num')}
${entries.map(([c, s]) => stepCharts(c, s, C)).join('')}`
}

function loadTable (results: Record<string, LoadResult>, C: number, extra: (c: string, v: LoadResult) => string[], extraHead: string[]): string {
  const rows = Object.entries(results).map(([c, v]) => [
    `<span style="color:${colorOf(c)}">${esc(c)}</span>`,
    `${v.rate}/s (${v.mult}x)`,
    `${Math.round(v.stats.goodPerSec)}/s (${pct(v.stats.goodPerSec / C)})`,
    String(v.stats.rejected),
    String(v.stats.timeouts + v.stats.errors + v.stats.unfinished + v.stats.other),
    `${fmtMs(v.stats.okP50)} / ${fmtMs(v.stats.okP99)}`,
    ...extra(c, v)
  ])
  return table(['contender', 'offered', 'goodput', '503', 'timeouts + errors', '2xx p50 / p99', ...extraHead], rows, 'num')
}

function otherSections (r: BenchResults): string {
  const C = r.capacity.rps
  const parts: string[] = []
  if (r.slow !== undefined) {
    parts.push(`<h2>3. Slow downstream</h2>
<p><code>${esc(r.slow.route)}</code> (1 ms CPU, 300 ms await, 1 ms CPU) at 0.7x: many requests in flight while the CPU is mostly idle. Any 503 here is a false rejection.</p>
${loadTable(r.slow.results, C, (_c, v) => [`${v.server.maxInflight} / ${v.server.meanInflight}`, v.server.meanElu.toFixed(2), v.server.maxLimit !== undefined ? `${v.server.minLimit}–${v.server.maxLimit}` : '–'], ['in-flight max / mean', 'mean ELU', 'limit range'])}`)
  }
  if (r.stall !== undefined) {
    parts.push(`<h2>4. Synchronous stall</h2>
<p>A ${r.stall.stallMs} ms synchronous stall every ${r.stall.everyMs / 1000} s (GC-like) with <code>/work</code> at 0.7x. Target: no 503 for requests scheduled outside a stall's own window.</p>
${loadTable(r.stall.results, C, (_c, v) => [
  (v.stalls ?? []).map(s => `${s.t.toFixed(1)} s`).join(', '),
  String(v.rejectedOutsideStalls ?? 0),
  String(v.rejectedNearStalls ?? 0),
  fmtMs(v.server.maxDelayP99)
], ['stalls at', '503 outside stalls', '…of which ≤ 0.5 s after one', 'max loop delay p99'])}`)
  }
  if (r.bimodal !== undefined) {
    const routes = r.bimodal.routes
    const rows: string[][] = []
    for (const [c, v] of Object.entries(r.bimodal.results)) {
      for (const br of v.byRoute ?? []) {
        rows.push([
          `<span style="color:${colorOf(c)}">${esc(c)}</span>`,
          `${esc(br.name)} (${br.cpuMs} ms CPU)`,
          String(br.stats.offered),
          `${br.stats.good} (${pct(br.stats.offered > 0 ? br.stats.good / br.stats.offered : 0)})`,
          `${br.stats.rejected} (${pct(br.stats.offered > 0 ? br.stats.rejected / br.stats.offered : 0)})`,
          String(br.stats.timeouts + br.stats.errors + br.stats.unfinished + br.stats.other),
          `${fmtMs(br.stats.okP50)} / ${fmtMs(br.stats.okP99)}`,
          pct(v.usefulCpuShare ?? 0)
        ])
      }
    }
    parts.push(`<h2>5. Two routes of very different cost</h2>
<p>${routes.map(x => `${x.weight * 10} % <code>${esc(x.path)}</code> (${esc(x.name)}, ${x.cpuMs} ms CPU)`).join(' and ')}, interleaved evenly, at ${r.bimodal.mult}x of the <code>/work</code> capacity (${Math.round(C * r.bimodal.mult)} req/s; the mix costs ≈ 1.2 ms CPU per request, so this is ≈ 1.7x of what the mix can sustain).
<b>Useful CPU</b> = CPU time of the requests answered 2xx within the SLO, as a share of one core: the higher, the better the server spent its core.</p>
${table(['contender', 'route', 'offered', 'good (2xx ≤ 1 s)', '503', 'timeouts + errors', '2xx p50 / p99', 'useful CPU (all routes)'], rows, 'num')}`)
  }
  if (r.hello !== undefined) {
    const h = r.hello
    const cs = Object.keys(h.mean)
    parts.push(`<h2>6. Hello-world overhead</h2>
<p>Closed loop on <code>GET /hello</code> with ${esc(h.tool)}, ${h.roundSeconds} s rounds, a fresh process per contender and round (the order reversed every round). Ratio admission / bare = <b>${h.ratio.toFixed(3)}</b> (medians ${h.median.admission ?? 0} and ${h.median.bare ?? 0}/s; per-round ratios ${h.roundRatios.map(x => x.toFixed(3)).join(', ')}; ratio of the means ${h.meanRatio.toFixed(3)}; target ≥ 0.98). Only 2xx responses count.
${h.hook !== undefined ? `The reference <code>empty-hook</code> is bare Fastify with one onRequest hook that does nothing, registered as the plugin is (a fastify-plugin, awaited): it reads <b>${h.hook.ratio.toFixed(3)}</b> of bare, and the plugin <b>${h.hook.admissionRatio.toFixed(3)}</b> of it. ` : ''}${h.floor !== undefined ? `The floor <code>permit-floor</code> does the least a controller that bounds the requests in flight and learns from their latency does per request, registered the same way: its hook counts the request in and reads the clock, the response's <code>close</code> counts it out and reads the clock again. It reads <b>${h.floor.ratio.toFixed(3)}</b> of bare, and the plugin <b>${h.floor.admissionRatio.toFixed(3)}</b> of it. ` : ''}${h.clock !== undefined ? `<code>clock-hook</code> is the empty hook with one clock read (<code>performance.now()</code>): it reads <b>${h.clock.ratio.toFixed(3)}</b> of bare. ` : ''}Every process warms process.nextTick at start, as the plugin does for its own (a process otherwise runs it at one of two speeds for its whole life); <code>bare-unwarmed</code> is bare Fastify without that warm-up, what an application without the plugin runs at${h.unwarmedRatio !== undefined ? `: the plugin reads <b>${h.unwarmedRatio.toFixed(3)}</b> of it` : ''}. ${h.warmupOther !== undefined ? `Every process first ran the same closed loop for ${h.warmupSeconds ?? '–'} s (a cold process runs its first thousands of requests before the JIT compiled them); answers other than 2xx in those warm-ups: ${Object.entries(h.warmupOther).map(([c, v]) => `${esc(c)} ${v}`).join(', ')}; in the rounds: ${Object.entries(h.roundsOther ?? {}).map(([c, v]) => `${esc(c)} ${v}`).join(', ')}. ` : ''}Server main-thread CPU per 2xx response (median of rounds): ${Object.entries(h.cpuPerRequestUs).map(([c, v]) => `${esc(c)} ${v.toFixed(1)} µs`).join(', ')}.${h.note !== undefined ? ` <i>${esc(h.note)}</i>` : ''}</p>
${table(['round', ...cs, 'ratio'], [...h.rounds.map((row, i) => [String(i + 1), ...cs.map(c => `${row[c] ?? '–'}/s`), (h.roundRatios[i] ?? 0).toFixed(3)]), ['<b>median</b>', ...cs.map(c => `<b>${h.median[c] ?? '–'}/s</b>`), h.ratio.toFixed(3)], ['mean', ...cs.map(c => `${h.mean[c]}/s`), h.meanRatio.toFixed(3)]], 'num')}${h.many !== undefined
      ? `
<p>The same processes with ${h.many.connections} connections after their round (no target: turns then read more requests than the turn budget holds, and wrk sends again at once after a 503). 2xx per second by round; ratio of the medians admission / bare <b>${h.many.ratio.toFixed(3)}</b>; answers other than 2xx: ${Object.entries(h.many.other).map(([c, v]) => `${esc(c)} ${v}`).join(', ')}.</p>
${table(['round', ...cs], h.many.rounds.map((row, i) => [String(i + 1), ...cs.map(c => `${row[c] ?? '–'}/s`)]), 'num')}`
      : ''}`)
  }
  return parts.join('\n')
}

export function renderHtml (r: BenchResults, targets: TargetCheck[]): string {
  const cap = r.capacity
  const capRamp = lineChart({
    title: 'Capacity search: ramp on bare Fastify',
    xLabel: 'offered rate (req/s)',
    yLabel: '2xx p90 latency per ramp step',
    width: 460,
    height: 260,
    yTickFormat: msAxis,
    series: [{ name: 'p90 latency', color: '#c0392b', markers: true, points: cap.ramp.map(s => [s.rate, s.okP90]) }],
    refs: [{ x: cap.rps, label: `capacity ${cap.rps}/s`, color: '#1b7f3b' }]
  })
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fastify-admission benchmark ${esc(r.date)} (${r.mode})</title>
<style>
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1180px;color:#222;line-height:1.45;padding:0 12px}
h1{margin-bottom:4px}h2{margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}h2 small{font-weight:400;color:#555;font-size:14px;margin-left:8px}
.meta{color:#555}.grid{display:flex;flex-wrap:wrap;gap:12px}.grid svg{border:1px solid #eee;background:#fff}
table{border-collapse:collapse;margin:10px 0;font-size:13px}th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f6f6}table.num td{white-space:nowrap}.pass{color:#fff;background:#1b7f3b;padding:0 4px;border-radius:3px;font-weight:600}
.fail{color:#fff;background:#c0392b;padding:0 4px;border-radius:3px;font-weight:600}.na{color:#999}code{background:#f4f4f4;padding:0 3px}
</style></head><body>
<h1>fastify-admission benchmark</h1>
<p class="meta">${esc(r.date)} · ${r.mode} run · ${r.elapsedSeconds} s · lib/ at ${esc(r.lib)} · ${r.machine.cpus} × ${esc(r.machine.model)} · Node ${esc(r.machine.node)} · ${esc(r.machine.platform)} ·
${r.machine.pinned ? 'server pinned to CPU 0, load generator to CPU 1' : 'not pinned'} · SLO ${r.sloMs} ms · client timeout ${r.timeoutMs / 1000} s${r.drainMs < r.timeoutMs ? ` · answers awaited ${r.drainMs / 1000} s after the last send (quick mode: later ones count as unfinished)` : ''}</p>
<p><b>Contenders</b> (each in its own fresh process, one core): <span style="color:${colorOf('bare')}">bare</span> Fastify;
<span style="color:${colorOf('under-pressure')}">under-pressure</span> = @fastify/under-pressure with interval ELU &gt; 0.98, loop delay &gt; 200 ms, 100 ms sampling;
<span style="color:${colorOf('static-cap')}">static-cap</span> = 503 above 100 requests in flight;
<span style="color:${colorOf('admission')}">admission</span> = fastify-admission with default options.
Workload <code>/work</code>: 1 ms CPU, 20 ms await (a simulated database), 1 ms CPU.</p>
<p><b>Capacity ${cap.rps} req/s</b>: the highest rate at which bare Fastify meets the SLO on <code>/work</code> (${esc(cap.method)}). Every load below is a multiple of it.</p>
${r.notes.length > 0 ? `<p class="fail">${r.notes.map(esc).join('<br>')}</p>` : ''}
${targetsSection(targets)}
${sweepSection(r)}
${stepSection(r)}
${otherSections(r)}
<h2>Method</h2>
<ul>
<li>Open-loop generator (bench/open-loop.ts): arrivals evenly spaced at the target rate whatever the server does; latency from the <i>scheduled</i> send time (no coordinated omission); a pool of keep-alive connections opened before the load (requests that find them all busy wait in the client, still timed from their scheduled send time); 10 s client timeout. Its own send lag is reported per point.</li>
<li>Every server is started pinned to CPU 0, polled until it answers, warmed up (~1 s at 0.3x), measured, then killed. The runner and generator are pinned to CPU 1.</li>
<li>Server time series every 100 ms: in-flight (requests received by Node and not yet answered), event-loop utilization over the interval, loop-delay p99 over the interval, and the plugin's limit.</li>
</ul>
<details><summary>Capacity search details</summary><div class="grid">${capRamp}</div>
${table(['probe rate', 'seconds', 'result', 'good share', '2xx p99'], cap.probes.map(p => [`${p.rate}/s`, String(p.seconds), p.pass ? '<span class="pass">pass</span>' : `<span class="fail">fail</span> ${esc(p.why)}`, pct(p.goodShare), fmtMs(p.okP99)]), 'num')}</details>
</body></html>
`
}
