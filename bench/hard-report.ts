// The hard cases' targets, and their report: a text summary on stdout and bench/results/hard-<date>.md.
// Every target is evaluated for every contender that ran the scenario; met/missed of the benchmark is
// the admission contender's, the baselines' figures stand next to it.
import type { Capacities, HardResults, HardRun, HardScenarioResult } from './hard.js'
import type { TargetCheck } from './targets.js'

interface Limits {
  /** goodput (2xx within the SLO per second), share of the scenario's capacity: at least */
  goodput?: number
  /** admitted (2xx) p99, ms: at most */
  okP99?: number
  /** 503 p99, ms: at most (met when there is no 503) */
  rejP99?: number
  /** 503s, share of the offered requests: at most */
  refusals?: number
  noTimeouts?: boolean
  /** some 503: the overload is refused, not queued */
  sheds?: boolean
}

export const hardTargets: Record<string, Limits> = {
  'burst-4x': { goodput: 0.85, okP99: 100, rejP99: 50 },
  'burst-10x': { goodput: 0.75, okP99: 200, rejP99: 100 },
  'flood-4x': { goodput: 0.8, rejP99: 100 },
  'sync-3x': { goodput: 0.85, noTimeouts: true, okP99: 300, sheds: true },
  'random-0.8x': { refusals: 0.001 },
  'slow-0.7x': { refusals: 0.001 },
  // the load of burst-4x, so its targets: logging must not cost the protection
  'logger-4x': { goodput: 0.85, okP99: 100, rejP99: 50 }
}

export const fmtMs = (x: number | null | undefined): string =>
  x === null || x === undefined ? '-' : x >= 1000 ? `${(x / 1000).toFixed(2)} s` : `${x.toFixed(x < 10 ? 1 : 0)} ms`
const pct = (x: number, d = 0): string => `${(x * 100).toFixed(d)} %`

const goodShare = (s: HardScenarioResult, r: HardRun): number => r.gen.stats.goodPerSec / s.capacity

/**
 * The most a loop can serve, as a share of capacity, when every request it does not serve is refused at
 * `refusalMs` of CPU and a served one costs 1 / capacity: served × (1 / capacity) + (rate − served) ×
 * refusal ≤ 1 s of CPU per second. An underestimated refusal cost only raises the bound (rate > capacity).
 * The floor's busy time per refusal also carries what its loop spends on anything else (accepting
 * connections, timers, a cold start), so the figure is an estimate: where admission served more than
 * it, it does not hold, and floorReason() says nothing.
 */
export function goodputBound (rate: number, capacity: number, refusalMs: number): number {
  const served = (1 - rate * refusalMs / 1000) / (1 / capacity - refusalMs / 1000)
  return Math.max(0, Math.min(rate, served)) / capacity
}

/** What the refuse-all run of a scenario (the floor) says of a target admission missed, if anything. */
function floorReason (s: HardScenarioResult, key: 'goodput' | '503 p99', limit: number): string | undefined {
  const floor = s.results['refuse-all']
  if (floor === undefined || floor.gen.stats.rejected === 0 || floor.gen.behind) return undefined
  if (key === '503 p99') {
    const p99 = floor.gen.stats.rejP99
    return p99 !== null && p99 > limit
      ? `out of reach here: refuse-all (Fastify answering every request 503, nothing admitted) answered at p99 ${fmtMs(p99)} in the same scenario`
      : undefined
  }
  const refusalMs = floor.server.meanElu * s.seconds * 1000 / floor.gen.stats.rejected
  const bound = goodputBound(s.rate, s.capacity, refusalMs)
  const admission = s.results.admission
  return bound < limit && admission !== undefined && goodShare(s, admission) <= bound
    ? `the floor's loop was busy ${(refusalMs * 1000).toFixed(0)} µs per refusal (refuse-all: ELU ${floor.server.meanElu} for ` +
      `${floor.gen.stats.rejected} refusals in ${s.seconds} s), which by estimate leaves room to serve about ${pct(bound)} of capacity at ${s.rate}/s`
    : undefined
}

/** A client retries a SYN the kernel dropped after this long (Linux's initial retransmission timeout). */
const SYN_RETRY_MS = 1000

/**
 * Admission's 503 p99 is a SYN retry: the kernel dropped connection attempts at the full listen queue
 * during its run, and the p99 is past the retry's second.
 */
function dropsReason (s: HardScenarioResult): string | undefined {
  const run = s.results.admission
  const p99 = run?.gen.stats.rejP99
  if (run?.listenDrops === undefined || run.listenDrops === 0 || p99 === null || p99 === undefined || p99 < SYN_RETRY_MS) return undefined
  return `the kernel dropped ${run.listenDrops} connection attempts at the full listen queue during admission's run, and their clients retried after 1 s`
}

/** A run's first this many seconds are its cold start: the process has just met its first load. */
const COLD_SECONDS = 1

/**
 * Every 503 of admission's run slower than the target was sent in its first COLD_SECONDS: the miss is
 * the cold process's, and the report says how long it lasted (from the timeline, by scheduled time).
 */
function coldReason (s: HardScenarioResult, max: number): string | undefined {
  const run = s.results.admission
  if (run === undefined) return undefined
  const rows = run.gen.timeline
  let end = -1
  for (const row of rows) {
    if (row.rejMax !== null && row.rejMax > max) end = row.t + run.gen.spec.bucketMs / 1000
  }
  return end > 0 && end <= COLD_SECONDS
    ? `every 503 slower than ${max} ms was sent in the run's first ${end} s, while the process was cold (see README, Known limits)`
    : undefined
}

export function checkHardTargets (r: HardResults): TargetCheck[] {
  const out: TargetCheck[] = []
  for (const s of r.scenarios) {
    const lim = hardTargets[s.name]
    if (lim === undefined) continue
    const add = (key: string, target: string, check: (run: HardRun) => { value: string, pass: boolean }, reason?: () => string | undefined): void => {
      const t: TargetCheck = { id: `${s.name}:${key}`, label: `${s.name} ${key}`, target, byContender: {} }
      for (const [c, run] of Object.entries(s.results)) {
        const v = check(run)
        // a figure measured while the generator could not keep up says as much about the generator
        t.byContender[c] = run.gen.behind ? { ...v, value: `${v.value} (generator behind)` } : v
      }
      const why = t.byContender.admission?.pass === false ? reason?.() : undefined
      if (why !== undefined) t.reason = why
      out.push(t)
    }
    if (lim.goodput !== undefined) {
      const min = lim.goodput
      add('goodput', `>= ${pct(min)} of ${s.capacity}/s`, run => ({ value: pct(goodShare(s, run), 1), pass: goodShare(s, run) >= min }),
        () => floorReason(s, 'goodput', min))
    }
    if (lim.noTimeouts === true) {
      add('timeouts', '= 0', run => ({ value: String(run.gen.stats.timeouts), pass: run.gen.stats.timeouts === 0 }))
    }
    if (lim.okP99 !== undefined) {
      const max = lim.okP99
      add('2xx p99', `<= ${max} ms`, run => ({ value: fmtMs(run.gen.stats.okP99), pass: run.gen.stats.okP99 !== null && run.gen.stats.okP99 <= max }))
    }
    if (lim.rejP99 !== undefined) {
      const max = lim.rejP99
      add('503 p99', `<= ${max} ms`, run => run.gen.stats.rejected === 0
        ? { value: 'no 503', pass: true }
        : { value: fmtMs(run.gen.stats.rejP99), pass: run.gen.stats.rejP99 !== null && run.gen.stats.rejP99 <= max },
      () => [floorReason(s, '503 p99', max), dropsReason(s), coldReason(s, max)].filter(x => x !== undefined).join('; ') || undefined)
    }
    if (lim.sheds === true) {
      add('sheds', 'some 503', run => ({ value: String(run.gen.stats.rejected), pass: run.gen.stats.rejected > 0 }))
    }
    if (lim.refusals !== undefined) {
      const max = lim.refusals
      add('refusals', `<= ${pct(max, 1)} of offered`, (run) => {
        const share = run.gen.stats.offered > 0 ? run.gen.stats.rejected / run.gen.stats.offered : 0
        return { value: `${run.gen.stats.rejected} (${pct(share, 2)})`, pass: share <= max }
      })
    }
  }
  return out
}

interface Row { c: string, cells: string[] }

const columns = ['contender', 'goodput', '2xx', '2xx p50', '2xx p99', '503', '503 p99', 'timeouts', 'errors', 'conns', 'listen drops', 'in-flight max', 'limit', 'gen lag p99', 'gen ELU', 'flags']

function rows (s: HardScenarioResult): Row[] {
  return Object.entries(s.results).map(([c, run]) => {
    const st = run.gen.stats
    const sv = run.server
    const flags: string[] = []
    if (run.gen.behind) flags.push(`generator behind (lag p99 ${fmtMs(run.gen.lag.p99)}, ELU ${run.gen.elu})`)
    const i = run.interference
    if (i !== undefined && (i.cpu0Foreign > 0.05 || i.cpu1Foreign > 0.05)) flags.push(`foreign CPU ${pct(i.cpu0Foreign)}/${pct(i.cpu1Foreign)}`)
    if (sv.died) flags.push('server died')
    const codes = Object.entries(run.gen.errorCodes).map(([k, v]) => `${k} ${v}`).join(', ')
    return {
      c,
      cells: [
        c,
        pct(goodShare(s, run)),
        String(st.ok),
        fmtMs(st.okP50),
        fmtMs(st.okP99),
        String(st.rejected),
        fmtMs(st.rejP99),
        String(st.timeouts),
        `${st.errors + st.other}${codes.length > 0 ? ` (${codes})` : ''}`,
        String(run.gen.conns),
        run.listenDrops === undefined ? '-' : String(run.listenDrops),
        String(sv.maxInflight),
        sv.minLimit !== undefined ? `${sv.minLimit}-${sv.maxLimit ?? ''}` : '-',
        fmtMs(run.gen.lag.p99),
        run.gen.elu.toFixed(2),
        flags.join('; ')
      ]
    }
  })
}

/** "admission / bare: goodput x2.10, 2xx p99 80 ms vs 4.20 s, 503 p99 2 ms vs -" for every baseline. */
function ratios (s: HardScenarioResult): string[] {
  const a = s.results.admission
  if (a === undefined) return []
  const out: string[] = []
  for (const [c, run] of Object.entries(s.results)) {
    if (c === 'admission') continue
    const g = run.gen.stats.goodPerSec
    const ratio = g > 0 ? `x${(a.gen.stats.goodPerSec / g).toFixed(2)}` : a.gen.stats.goodPerSec > 0 ? 'x inf' : 'x -'
    out.push(`admission / ${c}: goodput ${ratio} (${pct(goodShare(s, a))} vs ${pct(goodShare(s, run))}), 2xx p99 ${fmtMs(a.gen.stats.okP99)} vs ${fmtMs(run.gen.stats.okP99)}, ` +
      `503 ${a.gen.stats.rejected} vs ${run.gen.stats.rejected}, timeouts ${a.gen.stats.timeouts} vs ${run.gen.stats.timeouts}`)
  }
  return out
}

function describe (s: HardScenarioResult): string {
  const routes = s.routes.map(r => `${r.path}${s.routes.length > 1 ? ` (${r.weight ?? 1})` : ''}`).join(', ')
  return `${s.label}: ${s.rate}/s Poisson for ${s.seconds} s = ${s.mult}x of ${s.capacity}/s; ${routes}; ` +
    `${s.start === 'flood' ? 'load from the first answer' : 'server idle ~2 s first'}${s.env !== undefined ? `; env ${Object.entries(s.env).map(([k, v]) => `${k}=${v}`).join(' ')}` : ''}`
}

function targetLines (r: HardResults): { lines: string[], met: number, total: number } {
  const lines: string[] = []
  let met = 0
  let total = 0
  for (const t of r.targets) {
    const a = t.byContender.admission
    if (a !== undefined) {
      total++
      if (a.pass) met++
    }
    const others = Object.entries(t.byContender).filter(([c]) => c !== 'admission').map(([c, v]) => `${c} ${v.value}`).join('; ')
    lines.push(`${a === undefined ? 'n/a   ' : a.pass ? 'MET   ' : 'MISSED'}  ${t.label} ${t.target}: ${a?.value ?? '-'}${others.length > 0 ? `   [${others}]` : ''}`)
    if (t.reason !== undefined) lines.push(`          ${t.reason}`)
  }
  return { lines, met, total }
}

export function capacityLine (c: Capacities): string {
  const sync = c.syncGiven ? 'given' : `closed loop ${c.syncClosedLoop ?? '-'}`
  return `/work ${c.work > 0 ? `${c.work}/s` : '-'}; sync route ${c.sync}/s (${sync}; 1000/10 ms = ${c.syncCpuEstimate}); ` +
    `slow route ${c.slow}/s (1000/30 ms = ${c.slowCpuEstimate}); /hello ${c.hello ?? '-'}/s; mix ${c.mix ?? '-'}/s`
}

export function printHard (r: HardResults, log: (s: string) => void): void {
  log(`\n=== hard cases: ${capacityLine(r.capacities)} ===`)
  log(`goodput = 2xx within ${r.sloMs} ms per second, % of the scenario's capacity; latencies from the scheduled send time`)
  const widths = [15, 8, 7, 9, 9, 7, 9, 9, 8, 7, 14, 9, 12, 8, 0]
  for (const s of r.scenarios) {
    log(`\n${s.name}  ${describe(s)}`)
    log(`  ${columns.map((h, k) => h.padEnd(widths[k] ?? 0)).join('')}`)
    for (const row of rows(s)) log(`  ${row.cells.map((x, k) => x.padEnd(widths[k] ?? 0)).join('')}`)
    for (const line of ratios(s)) log(`  ${line}`)
    for (const [c, run] of Object.entries(s.results)) {
      for (const br of run.gen.byRoute ?? []) {
        const st = br.stats
        log(`    ${c.padEnd(15)} ${br.name.padEnd(14)} offered ${st.offered}, 2xx ${st.ok} (within SLO ${st.good}), 2xx p99 ${fmtMs(st.okP99)}, 503 ${st.rejected} (p99 ${fmtMs(st.rejP99)}), timeouts ${st.timeouts}`)
      }
    }
  }
  const t = targetLines(r)
  log('\n=== hard-case targets (admission; the baselines in brackets) ===')
  for (const line of t.lines) log(line)
  log(`admission: ${t.met}/${t.total} hard-case targets met`)
}

function table (header: string[], body: string[][]): string {
  const esc = (x: string): string => x.replace(/\|/g, '\\|')
  return [`| ${header.map(esc).join(' | ')} |`, `|${header.map(() => '---').join('|')}|`, ...body.map(b => `| ${b.map(esc).join(' | ')} |`)].join('\n')
}

export function markdownReport (r: HardResults): string {
  const out: string[] = []
  const t = targetLines(r)
  out.push(`# Hard cases, ${r.date}`, '')
  out.push(`lib/ at ${r.lib}; ${r.machine.cpus} CPU${r.machine.cpus === 1 ? '' : 's'} (${r.machine.model}), Node ${r.machine.node}, ${r.machine.platform}; ` +
    `${r.machine.pinned ? 'server pinned to CPU 0, generator to CPU 1' : 'not pinned'}; admission options \`${r.admissionOptions}\`; ` +
    `run took ${r.elapsedSeconds} s.`, '')
  out.push('Every run: a fresh server, no warm-up load; a load generator process of its own (undici `request`, one fresh ' +
    'Agent: connections opened on demand, no cap), warmed against its own tiny server before the load; Poisson arrivals ' +
    `(same seed for every contender of a scenario); latency from the scheduled send time; client timeout ${r.timeoutMs / 1000} s. ` +
    `Goodput = 2xx within ${r.sloMs} ms per second, as % of the scenario's capacity.`, '')
  out.push(`Capacities: ${capacityLine(r.capacities)}. /work: ${r.capacities.workMethod}. The mix: 1 / sum(share / capacity of its route).`, '')
  if (r.targets.length > 0) {
    out.push(`## Targets: admission ${t.met}/${t.total} met`, '')
    out.push('Where admission missed a target, the refuse-all run of the same scenario (Fastify answering every request 503 from one ' +
      'hook, nothing admitted) says what it can: its 503 p99 (what no admission policy in a hook beats here), and its loop\'s busy ' +
      'time per refusal, from which follows an estimate of what can be served beside the refusals (given only where admission ' +
      'served no more; an estimate, since that busy time holds the floor\'s other work too).', '')
    out.push(table(['', 'scenario', 'target', 'admission', 'baselines'], r.targets.map((x) => {
      const a = x.byContender.admission
      const others = Object.entries(x.byContender).filter(([c]) => c !== 'admission').map(([c, v]) => `${c} ${v.value}`).join('; ')
      return [a === undefined ? 'n/a' : a.pass ? 'met' : '**missed**', x.label, x.target, `${a?.value ?? '-'}${x.reason !== undefined ? `; ${x.reason}` : ''}`, others]
    })), '')
  }
  for (const s of r.scenarios) {
    out.push(`## ${s.name}`, '', describe(s), '')
    out.push(table(columns, rows(s).map(x => x.cells)), '')
    for (const line of ratios(s)) out.push(`- ${line}`)
    const routeRows = Object.entries(s.results).flatMap(([c, run]) => (run.gen.byRoute ?? []).map(br => [
      c, br.name, String(br.stats.offered), String(br.stats.good), fmtMs(br.stats.okP99), String(br.stats.rejected), fmtMs(br.stats.rejP99), String(br.stats.timeouts)
    ]))
    if (routeRows.length > 0) out.push('', table(['contender', 'route', 'offered', '2xx within SLO', '2xx p99', '503', '503 p99', 'timeouts'], routeRows))
    const cs = Object.keys(s.results)
    const buckets = s.results[cs[0] ?? '']?.gen.timeline.length ?? 0
    const body: string[][] = []
    for (let b = 0; b < buckets; b++) {
      const row = [(s.results[cs[0] ?? '']?.gen.timeline[b]?.t ?? 0).toFixed(2)]
      for (const c of cs) {
        const x = s.results[c]?.gen.timeline[b]
        row.push(x === undefined ? '-' : `${x.ok} (${fmtMs(x.okMax)}) / ${x.rejected} (${fmtMs(x.rejMax)})${x.failed > 0 ? ` / ${x.failed} failed` : ''}`)
      }
      body.push(row)
    }
    out.push('', '<details><summary>timeline: per 250 ms of scheduled time, 2xx (max latency) / 503 (max latency) / failed</summary>', '')
    out.push(table(['t (s)', ...cs], body), '', '</details>', '')
    const gens = Object.entries(s.results).map(([c, run]) =>
      `${c}: ${run.gen.arrivals} arrivals, send lag p50/p99/max ${fmtMs(run.gen.lag.p50)}/${fmtMs(run.gen.lag.p99)}/${fmtMs(run.gen.lag.max)}, ` +
      `generator ELU ${run.gen.elu}, loop delay p99 ${fmtMs(run.gen.delayP99)}, CPU ${run.gen.cpuMs} ms, max outstanding ${run.gen.maxOutstanding}, ` +
      `connection errors ${run.gen.connErrors}, warm-up ${run.gen.warm.requests} requests in ${run.gen.warm.ms} ms (slowest of the last 100 ${fmtMs(run.gen.warm.lastRoundMax)}), server idle ${run.idleMs} ms before the load`)
    out.push('Generator:', '', ...gens.map(g => `- ${g}`), '')
  }
  if (r.notes.length > 0) out.push('## Notes', '', ...r.notes.map(n => `- ${n}`), '')
  return out.join('\n')
}
