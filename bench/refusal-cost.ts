// What a refusal costs the event loop when requests arrive one by one, as in the sweep's open loop, and
// what that leaves of capacity at the easy targets' multiples.
//
//   npx tsx bench/refusal-cost.ts [capacity/s] [rounds]
//
// The hello-world rounds measure a closed loop: 50 connections that send again at once, so every turn
// reads dozens of requests and the loop's own cost per turn is shared among them. Open-loop arrivals
// spaced over 256 pre-opened connections (the sweep's) come one or two to a turn, and each pays that
// cost alone. refuse-all (Fastify answering 503 to every request from an onRequest hook: the floor of
// the hard cases) is run at 1x, 2x and 3x of capacity, a fresh process per round, after 1 s of
// warm-up at the same rate and 1 s without load. Per refusal it gives the loop's busy time (ELU ×
// seconds ÷ refusals) and the main thread's CPU beyond its idle rate (schedstat: the kernel's work on
// the thread's behalf counts). With each, goodputBound (hard-report.ts) gives the most a loop could
// serve at 2x and 3x if every request it does not serve is refused at that cost. The bound is an estimate: under admission the loop is
// busy, turns read more requests each, and a refusal may cost less than on the floor's idle loop.
// Capacity is measured as `npm run bench` measures it unless given.
import { goodputBound } from './hard-report.js'
import { installExitHandlers, killAllChildren, pinSelf, prepareServerBundle } from './proc.js'
import { runOpenLoop } from './open-loop.js'
import { mainThreadNs, measure, measureCapacity, serverInfo, sleepMs, withServer } from './scenarios.js'
import { median, windowStats } from './stats.js'

const MULTIPLES = [1, 2, 3]
const SECONDS = 3
/** The idle process's own CPU is measured for this long before the load, ms. */
const IDLE_MS = 1000

installExitHandlers()
pinSelf(1)
await prepareServerBundle()
const log = (line: string): void => { console.log(line) }
const given = Number(process.argv[2])
const rounds = Math.max(1, Number(process.argv[3] ?? 3))
const capacity = given > 0
  ? given
  : (await measureCapacity({ quick: false, sloMs: 1000, timeoutMs: 10_000, drainMs: 10_000, log })).rps
log(`capacity ${capacity}/s; refuse-all, ${rounds} fresh processes per rate, ${SECONDS} s each after 1 s of warm-up`)
for (const mult of MULTIPLES) {
  const rate = Math.round(capacity * mult)
  const byElu: number[] = []
  const byCpu: number[] = []
  for (let k = 0; k < rounds; k++) {
    const round = await withServer({ contender: 'refuse-all' }, async (srv) => {
      await runOpenLoop({ port: srv.port, phases: [{ seconds: 1, rate }], routes: '/work', drainMs: 1000, timeoutMs: 10_000 })
      // What the process spends with no request at all (its timers), per second, is left out.
      const idle0 = mainThreadNs(srv.pid)
      await sleepMs(IDLE_MS)
      const idle1 = mainThreadNs(srv.pid)
      const m = await measure(srv, { phases: [{ seconds: SECONDS, rate }], routes: '/work', drainMs: 0, timeoutMs: 10_000 })
      const loaded = mainThreadNs(srv.pid)
      const idlePerSecNs = idle0 !== null && idle1 !== null ? (idle1 - idle0) * 1000 / IDLE_MS : null
      const cpuNs = loaded !== null && idle1 !== null && idlePerSecNs !== null ? loaded - idle1 - idlePerSecNs * m.gen.wallMs / 1000 : null
      return { m, cpuNs }
    })
    const refused = windowStats(round.m.gen.records, 0, SECONDS, 1000).rejected
    const elu = serverInfo(round.m).meanElu
    const behind = round.m.gen.behind
    if (refused > 0 && !behind) {
      byElu.push(elu * SECONDS * 1000 / refused)
      if (round.cpuNs !== null) byCpu.push(round.cpuNs / 1e6 / refused)
    }
    log(`  ${mult}x ${rate}/s round ${k + 1}: ${refused} refused, ELU ${elu}${behind ? ' (generator behind: not counted)' : ''}`)
  }
  if (byElu.length === 0) continue
  const room = (ms: number): string => MULTIPLES.filter(x => x > 1).map(x => `${x}x ${(goodputBound(capacity * x, capacity, ms) * 100).toFixed(1)} %`).join(', ')
  const us = (ms: number): string => `${(ms * 1000).toFixed(0)} µs`
  log(`${mult}x: per refusal (medians of ${byElu.length}), busy loop ${us(median(byElu))} (room at ${room(median(byElu))})` +
    (byCpu.length > 0 ? `, main-thread CPU beyond idle ${us(median(byCpu))} (room at ${room(median(byCpu))})` : ''))
}
killAllChildren()
process.exit(0)
