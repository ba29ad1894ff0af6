// Instructions a hello-world request costs the server, counted by valgrind's callgrind: a figure that
// does not move with the machine's load, unlike the hello-world ratio of `npm run bench`, whose
// rounds spread 0.81-1.01 on this project's shared machine while the target is 0.98.
//   tsx bench/instructions.ts [requests] [rounds] [contender,...]
// Each contender of bench/server.ts (bundled, --series off) runs under callgrind pinned to core 0,
// with `node --single-threaded` (the JIT compiles on the main thread, not at times that vary from run
// to run). Counting is limited to what libuv runs for sockets (uv__stream_io) and in the check phase
// (uv__run_check, where the plugin's end-of-turn callback runs): timers are left out, as under
// valgrind a timer fires about 50 times as often per request as it does natively. A closed loop of 50
// keep-alive connections (undici) sends `requests` requests to warm the process up, the counters are
// zeroed, and it sends `requests` more. What garbage collection and the JIT compiler ran is reported
// apart from the rest ("steady"), which is what a request costs once the process is warm.
// Under valgrind a request takes about 50 times as long, so the admission contender is given options
// that let everything in (the measurement is of the admitted path; with defaults a process that slow
// is rightly shed). Needs valgrind (`apt-get install valgrind`). One contender takes about 80 s.
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Pool } from 'undici'
import { commandExists, installExitHandlers, prepareServerBundle, startServer } from './proc.js'
import type { Contender } from './server.js'
import { median } from './stats.js'

const ADMIT_ALL = JSON.stringify({ minLimit: 1_000_000, maxLimit: 1_000_000, initialLimit: 1_000_000, turnBudget: 1000, congestionInterval: 10_000 })
const CONNECTIONS = 50
/** Functions of the garbage collector and of the JIT compiler, by their C++ names. */
const GC = /Scaveng|IterateObjectCache|RootScavenge|GarbageCollect|MarkCompact|Sweep|Evacuat|Marking|Heap::|MemoryAllocator|SemiSpace|NewSpace|IterateRoots|RecordWrite|GlobalHandles|Visit|Worklist|PagedSpace/
const COMPILE = /v8::internal::(compiler::|maglev::|interpreter::|baseline::|Compiler|Parser|Scanner|Zone|Deoptimizer|Ast)/

interface Count { steady: number, gc: number, compile: number, refused: number }

/** `count` requests over a closed loop of CONNECTIONS connections; how many were not 2xx. */
async function closedLoop (pool: Pool, count: number): Promise<number> {
  let sent = 0
  let refused = 0
  async function connection (): Promise<void> {
    while (sent < count) {
      sent++
      const res = await pool.request({ path: '/hello', method: 'GET' })
      await res.body.text()
      if (res.statusCode !== 200) refused++
    }
  }
  await Promise.all(Array.from({ length: CONNECTIONS }, connection))
  return refused
}

/** Instructions per request in one callgrind dump, by category. */
function readDump (file: string, requests: number): Omit<Count, 'refused'> {
  const out = spawnSync('callgrind_annotate', ['--threshold=100', '--inclusive=no', file], { encoding: 'utf8', maxBuffer: 1 << 28 }).stdout
  let total = 0
  let gc = 0
  let compile = 0
  let counted = false
  for (const line of out.split('\n')) {
    const m = /^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)$/.exec(line)
    if (m === null) continue
    const [, figure, name] = m as unknown as [string, string, string]
    // The first block lists the totals and the callers above main (inclusive); self costs follow.
    if (name.includes('PROGRAM TOTALS') || /below main|libc_start|libc-start|node::Start\(|SpinEventLoop|NodeMainInstance|\?\?\?:main |0x000000000001ab70/.test(name)) continue
    counted = true
    const ir = Number(figure.replaceAll(',', ''))
    total += ir
    if (GC.test(name)) gc += ir
    else if (COMPILE.test(name) && !name.startsWith('???:Builtins_')) compile += ir
  }
  if (!counted) throw new Error(`nothing counted in ${file}`)
  return { steady: (total - gc - compile) / requests, gc: gc / requests, compile: compile / requests }
}

async function measure (contender: Contender, requests: number, dir: string): Promise<Count> {
  const srv = await startServer({
    contender,
    series: false,
    wrapper: ['valgrind', '--tool=callgrind', '--toggle-collect=uv__stream_io', '--toggle-collect=uv__run_check', `--callgrind-out-file=${join(dir, contender)}-%p`],
    nodeArgs: ['--single-threaded'],
    startTimeoutMs: 120_000,
    ...(contender === 'admission' ? { env: { BENCH_ADMISSION_OPTIONS: ADMIT_ALL } } : {})
  })
  const pid = String(srv.pid)
  const pool = new Pool(`http://127.0.0.1:${srv.port}`, { connections: CONNECTIONS })
  try {
    await closedLoop(pool, requests)
    spawnSync('callgrind_control', ['-z', pid])
    const refused = await closedLoop(pool, requests)
    spawnSync('callgrind_control', ['-d', pid])
    return { ...readDump(join(dir, `${contender}-${pid}.1`), requests), refused }
  } finally {
    await pool.close()
    await srv.stop()
  }
}

async function main (): Promise<void> {
  if (!commandExists('valgrind') || !commandExists('taskset')) throw new Error('needs valgrind and taskset')
  installExitHandlers()
  const requests = Number(process.argv[2] ?? 20_000)
  const rounds = Number(process.argv[3] ?? 1)
  const contenders = (process.argv[4] ?? 'bare,empty-hook,clock-hook,permit-floor,admission').split(',') as Contender[]
  if (await prepareServerBundle() === undefined) throw new Error('could not bundle bench/server.ts (esbuild)')
  const dir = mkdtempSync(join(tmpdir(), 'instructions-'))
  const counts = new Map<Contender, Count[]>()
  try {
    for (let round = 0; round < rounds; round++) {
      for (const contender of round % 2 === 0 ? contenders : [...contenders].reverse()) {
        const count = await measure(contender, requests, dir)
        counts.set(contender, [...(counts.get(contender) ?? []), count])
        console.log(`round ${round + 1} ${contender}: steady ${Math.round(count.steady)}, gc ${Math.round(count.gc)}, compile ${Math.round(count.compile)} instructions a request; not 2xx ${count.refused}`)
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
  const steady = (c: Contender): number => median((counts.get(c) ?? []).map(x => x.steady))
  const bare = counts.has('bare') ? steady('bare') : NaN
  console.log(`\ninstructions a hello-world request (median of ${rounds}; ${requests} requests after ${requests} of warm-up; timers left out)`)
  console.log('contender        steady   beyond bare        gc   compile')
  for (const [c, list] of counts) {
    const s = steady(c)
    const extra = s - bare
    console.log(`${c.padEnd(14)} ${Math.round(s).toString().padStart(8)}  ${Number.isNaN(extra) ? '' : `${extra >= 0 ? '+' : ''}${Math.round(extra)} (${(100 * extra / bare).toFixed(1)} %)`.padStart(14)}  ${Math.round(median(list.map(x => x.gc))).toString().padStart(8)}  ${Math.round(median(list.map(x => x.compile))).toString().padStart(8)}`)
  }
}

await main()
