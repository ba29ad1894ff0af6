// Benchmark runner: `npm run bench` (≤ 10 min, then ≈ 7 min of hard cases) or `npm run bench:quick` (≤ 90 s).
//
//   tsx bench/run.ts [--quick] [--only sweep,step,slow,stall,bimodal,hello,hard] [--contenders bare,admission,...] [--hard]
//
// The hard cases (hard.ts, also `npm run bench:hard`) run last, in full mode or with --hard, with the
// capacity measured here; they write their own report (bench/results/hard-<date>.md|json).
//
// The runner (and its load generator) pins itself to CPU 1; every server under
// test runs alone on CPU 0. Results: bench/results/<date>[-quick].json|html and
// bench/results/latest[-quick].json|html.
import { mkdirSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import { performance } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { runHardBench } from './hard.js'
import { goodputChart, renderHtml } from './html.js'
import { commandExists, foreignLoad, hasTaskset, installExitHandlers, killAllChildren, pinSelf, prepareServerBundle, setQuietBudget } from './proc.js'
import { gitState, isoDate, type BenchResults } from './results.js'
import {
  bimodalRoutes, measureCapacity, ms, pct100, runBimodal, runHello, runSlowDownstream, runStall, runStep, runSweep,
  type BenchConfig
} from './scenarios.js'
import { contenders as allContenders, type Contender } from './server.js'
import { checkTargets } from './targets.js'

const scenarioNames = ['sweep', 'step', 'slow', 'stall', 'bimodal', 'hello', 'hard'] as const

async function main (): Promise<void> {
  const t0 = performance.now()
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      // the hard cases in a quick run too (full runs include them unless --only leaves them out)
      hard: { type: 'boolean', default: false },
      only: { type: 'string' },
      contenders: { type: 'string' },
      out: { type: 'string' },
      // seconds the whole run may spend waiting for other processes to leave CPUs 0 and 1
      // (before each server start, at most 5 s each); default 40 in full mode, 0 in quick mode
      'wait-quiet': { type: 'string' }
    }
  })
  const quick = values.quick === true
  const only = new Set((values.only ?? scenarioNames.join(',')).split(',').map(s => s.trim()))
  const picked = values.contenders === undefined
    ? undefined
    : values.contenders.split(',').map(s => s.trim()).filter((c): c is Contender => (allContenders as readonly string[]).includes(c))
  installExitHandlers()

  const notes: string[] = []
  const quietBudget = Number(values['wait-quiet'] ?? (quick ? 0 : 40))
  setQuietBudget(Number.isFinite(quietBudget) ? quietBudget * 1000 : 0)
  const cpus = os.availableParallelism()
  let pinned = false
  if (cpus >= 2 && hasTaskset()) pinned = pinSelf(1)
  if (!pinned) notes.push('not pinned (needs taskset and ≥ 2 CPUs): server and load generator share CPUs, figures are pessimistic')

  const timeoutMs = 10000
  const cfg: BenchConfig = {
    quick,
    sloMs: 1000,
    timeoutMs,
    // full: wait the whole client timeout; quick: wait a bit more than the SLO (goodput stays exact,
    // latencies beyond it are cut and counted as "unfinished")
    drainMs: quick ? 1050 : timeoutMs,
    log: (line) => console.log(line)
  }
  const log = cfg.log
  // --contenders replaces every scenario's default list
  const choose = (defaults: Contender[]): Contender[] => picked ?? defaults
  const everyone: Contender[] = ['bare', 'under-pressure', 'static-cap', 'admission']
  const main3: Contender[] = ['admission', 'under-pressure', 'bare']

  log(`fastify-admission benchmark (${quick ? 'quick' : 'full'}), ${cpus} CPUs, ${pinned ? 'server on CPU 0, generator on CPU 1' : 'unpinned'}`)
  const bundle = await prepareServerBundle()
  const lib = gitState()
  log(`servers: ${bundle !== undefined ? 'bench/server.ts + lib/ bundled once with esbuild' : 'bench/server.ts through tsx'}; lib/ at ${lib}`)
  const busy = await foreignLoad(300)
  if (busy !== undefined && (busy[0] > 0.1 || busy[1] > 0.1)) {
    const msg = `other processes are using the benchmark CPUs (CPU0 ${pct100(busy[0])}, CPU1 ${pct100(busy[1])}): expect noisy figures`
    notes.push(msg)
    log(`warning: ${msg}`)
  }
  log('measuring capacity of bare Fastify on /work (1 ms CPU + 20 ms await + 1 ms CPU)…')
  const capacity = await measureCapacity(cfg)
  const C = capacity.rps
  log(`capacity ≈ ${C} requests/s (ramp estimate ${capacity.estimate}/s, unloaded p99 ${ms(capacity.unloadedP99)})  [${elapsed(t0)}]`)

  const results: BenchResults = {
    date: isoDate(),
    mode: quick ? 'quick' : 'full',
    lib,
    machine: { cpus, model: os.cpus()[0]?.model ?? 'unknown', node: process.version, platform: `${os.platform()} ${os.release()}`, pinned, wrk: commandExists('wrk') },
    sloMs: cfg.sloMs,
    timeoutMs,
    drainMs: cfg.drainMs,
    elapsedSeconds: 0,
    capacity,
    sweep: { mults: [], seconds: 0, results: {} },
    notes
  }

  if (only.has('sweep')) {
    const mults = quick ? [0.5, 2, 4, 10] : [0.5, 1, 2, 4, 10]
    const seconds = quick ? 3 : 7
    log(`sweep: ${mults.join('x, ')}x of capacity, ${seconds} s per point, fresh server per point  [${elapsed(t0)}]`)
    const cs = choose(quick ? main3 : everyone)
    results.sweep = {
      mults,
      seconds,
      // quick: the baselines only where they matter (overload); admission everywhere
      results: await runSweep(cfg, C, cs, mults, seconds, (c, m) => quick && c !== 'admission' && m < 1)
    }
  }
  if (only.has('step')) {
    const secs: [number, number, number] = quick ? [1.5, 3, 2.5] : [5, 5, 5]
    log(`step: 0.5x ${secs[0]} s → 3x ${secs[1]} s → 0.5x ${secs[2]} s  [${elapsed(t0)}]`)
    results.step = { seconds: secs, results: await runStep(cfg, C, choose(quick ? ['admission'] : everyone), secs) }
  }
  if (only.has('slow')) {
    log(`slow downstream: /work?cpu=1&io=300 at 0.7x  [${elapsed(t0)}]`)
    results.slow = { route: '/work?cpu=1&io=300', results: await runSlowDownstream(cfg, C, choose(quick ? ['admission'] : everyone), quick ? 3 : 8) }
  }
  if (only.has('stall')) {
    // quick: one stall (≈ 1.8 s into a 3.5 s run); full: three
    log(`stall: 200 ms synchronous stall every 3 s, /work at 0.7x  [${elapsed(t0)}]`)
    results.stall = { everyMs: 3000, stallMs: 200, results: await runStall(cfg, C, choose(quick ? ['admission'] : everyone), quick ? 3.5 : 10, 3000, 200) }
  }
  if (only.has('bimodal') && (!quick || values.only !== undefined)) {
    const mult = 3
    log(`bimodal: 90 % cheap (0.2 ms CPU) / 10 % expensive (10 ms CPU) at ${mult}x of /work capacity  [${elapsed(t0)}]`)
    results.bimodal = {
      routes: bimodalRoutes.map(r => ({ name: r.name, path: r.path, weight: r.weight ?? 1, cpuMs: r.cpuMs })),
      mult,
      results: await runBimodal(cfg, C, choose(quick ? ['admission'] : everyone), quick ? 3 : 6, mult)
    }
  }
  if (only.has('hello')) {
    log(`hello-world overhead: closed loop, a fresh process per contender and round  [${elapsed(t0)}]`)
    // The clock read and the floor only in full mode: the quick run keeps its 90 s.
    results.hello = await runHello(cfg, choose(quick ? ['bare', 'empty-hook', 'admission'] : ['bare', 'empty-hook', 'clock-hook', 'permit-floor', 'admission']), quick ? 2 : 7, quick ? 1 : 2, quick ? 1 : 3)
  }

  // a baseline serving well above "capacity" within the SLO means the capacity search was disturbed
  const overCap = Object.entries(results.sweep.results).flatMap(([c, pts]) => pts.filter(p => p.mult >= 2 && p.stats.goodPerSec > 1.15 * C).map(p => `${c} at ${p.mult}x: ${pct100(p.stats.goodPerSec / C)}`))
  if (overCap.length > 0) {
    const msg = `capacity looks underestimated (goodput above 115 % of it: ${overCap.join(', ')}); probably measured while other processes used the CPUs — rerun on a quiet machine`
    notes.push(msg)
    log(`warning: ${msg}`)
  }
  results.elapsedSeconds = Math.round((performance.now() - t0) / 100) / 10
  const targets = checkTargets(results)
  const outDir = values.out ?? fileURLToPath(new URL('./results/', import.meta.url))
  mkdirSync(outDir, { recursive: true })
  // latest.* is the last complete full run (the README links it and shows goodput.svg); quick runs keep
  // latest-quick.*, and runs narrowed with --only or --contenders latest-partial.*, so neither
  // overwrites the complete report.
  const partial = values.only !== undefined || values.contenders !== undefined
  const kind = partial ? 'partial' : quick ? 'quick' : ''
  const base = kind === '' ? results.date : `${results.date}-${kind}`
  const json = JSON.stringify({ ...results, targets }, null, 1)
  const html = renderHtml(results, targets)
  writeFileSync(`${outDir}/${base}.json`, json)
  writeFileSync(`${outDir}/${base}.html`, html)
  const latest = kind === '' ? 'latest' : `latest-${kind}`
  writeFileSync(`${outDir}/${latest}.json`, json)
  writeFileSync(`${outDir}/${latest}.html`, html)
  if (kind === '' && Object.keys(results.sweep.results).length > 0) writeFileSync(`${outDir}/goodput.svg`, goodputChart(results))

  printSummary(results, targets)
  log(`\nreport: bench/results/${base}.html (and ${latest}.html), data: ${base}.json`)
  log(`elapsed ${results.elapsedSeconds} s`)
  if (only.has('hard') && (!quick || values.hard === true || values.only !== undefined)) {
    await runHardBench({
      log,
      capacity,
      ...(picked !== undefined ? { contenders: picked } : {}),
      pinned,
      outDir,
      partial: partial || quick,
      notes
    })
  }
  killAllChildren()
}

function printSummary (r: BenchResults, targets: ReturnType<typeof checkTargets>): void {
  const C = r.capacity.rps
  const log = (s: string): void => console.log(s)
  log(`\n=== summary (${r.mode}) — capacity ${C} req/s, SLO ${r.sloMs} ms, goodput = 2xx within SLO as % of capacity ===`)
  const cs = Object.keys(r.sweep.results)
  if (cs.length > 0) {
    log(`${'contender'.padEnd(15)}${r.sweep.mults.map(m => `${m}x`.padStart(26)).join('')}`)
    log(`${''.padEnd(15)}${r.sweep.mults.map(() => 'goodput 2xx-p99 503%'.padStart(26)).join('')}`)
    for (const c of cs) {
      const cells = r.sweep.mults.map((m) => {
        const p = r.sweep.results[c]?.find(x => x.mult === m)
        if (p === undefined) return '–'.padStart(26)
        const rej = p.stats.offered > 0 ? p.stats.rejected / p.stats.offered : 0
        return `${pct100(p.stats.goodPerSec / C).padStart(6)} ${ms(p.stats.okP99).padStart(8)} ${pct100(rej).padStart(5)}${p.gen.behind || (p.gen.foreignCpu0 ?? 0) > 0.05 || (p.gen.foreignCpu1 ?? 0) > 0.05 ? '!' : ' '}`.padStart(26)
      })
      log(`${c.padEnd(15)}${cells.join('')}`)
    }
    log('(! = load generator fell behind its schedule, or other processes used our CPUs, at that point)')
  }
  log('\n=== targets ===')
  let pass = 0
  let total = 0
  for (const t of targets) {
    if (Object.keys(t.byContender).length === 0) continue
    const a = t.byContender.admission
    const others = Object.entries(t.byContender).filter(([c]) => c !== 'admission').map(([c, v]) => `${c} ${v.value}`).join('; ')
    if (a !== undefined) {
      total++
      if (a.pass) pass++
    }
    const status = a === undefined ? 'n/a ' : a.pass ? 'PASS' : 'FAIL'
    log(`${status}  ${t.label} ${t.target}: ${a?.value ?? '–'}${others.length > 0 ? `   [${others}]` : ''}`)
    if (t.reason !== undefined) log(`      measured reason: ${t.reason}`)
  }
  log(`admission: ${pass}/${total} targets met`)
}

function elapsed (t0: number): string {
  return `${((performance.now() - t0) / 1000).toFixed(1)} s`
}

main().catch((err: unknown) => {
  killAllChildren()
  console.error(err)
  process.exit(1)
})
