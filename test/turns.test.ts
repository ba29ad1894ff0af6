import t from 'tap'
import { ACCEPT_BUDGET_MS, ACCEPT_RUN, ACCEPT_RUN_SHARE, LoopTurns, SURGE_RUN, SURGE_SHARE } from '../lib/turns.js'
import { fakeLoop, type FakeLoop } from './helpers/loop.js'

const settings = { budgetMs: 5, intervalMs: 100 }

/** One busy turn (no idle before it) that reads `requests` requests, each taking `ms` of work. */
function turn (loop: FakeLoop, turns: LoopTurns, requests: number, ms: number): boolean[] {
  const verdicts: boolean[] = []
  for (let i = 0; i < requests; i++) {
    verdicts.push(turns.overBudget())
    loop.work(ms)
  }
  loop.endTurn()
  return verdicts
}

/** Light load: turns of one 1 ms request with idle moments between them (a typical turn of ~1 ms). */
function calm (loop: FakeLoop, turns: LoopTurns, n = 100): void {
  for (let i = 0; i < n; i++) {
    turn(loop, turns, 1, 1)
    loop.wait(5)
  }
}

t.test('nothing is over budget until every turn has been late for the interval; then the budget ramps down', async t => {
  const loop = fakeLoop()
  const turns = new LoopTurns(settings, loop.clock)
  calm(loop, turns)
  t.ok(turns.typicalMs > 0.9 && turns.typicalMs <= 1, `typical turn ${turns.typicalMs} ms`)
  t.equal(turns.budget(), 5, 'the configured budget: the app\'s turns are short')
  // Synchronous 10 ms handlers, three ready per turn: each turn runs 30 ms.
  for (let i = 0; i < 3; i++) t.same(turn(loop, turns, 3, 10), [false, false, false], `turn ${i}: not yet a standing queue`)
  t.equal(turns.late(), false, '90 ms of late turns')
  t.same(turn(loop, turns, 3, 10), [false, false, false])
  t.equal(turns.late(), true, '120 ms of late turns: a standing queue')
  t.same(turn(loop, turns, 3, 10), [false, false, false], 'just formed: the budget is 4 times itself (20 ms)')
  for (let i = 0; i < 3; i++) turn(loop, turns, 3, 10)
  t.same(turn(loop, turns, 3, 10), [false, true, true], 'one more interval: the first request of a turn is read, the rest refused')
})

t.test('regression: the backlog a 200 ms stall left met the budget at its floor', async t => {
  const loop = fakeLoop()
  const turns = new LoopTurns(settings, loop.clock)
  calm(loop, turns)
  turn(loop, turns, 1, 200)
  t.equal(turns.late(), true, 'one 200 ms turn is a standing queue already')
  t.same(turn(loop, turns, 4, 4), [false, false, false, false], 'the catch-up turns get a multiple of the budget')
  t.same(turn(loop, turns, 6, 4), Array(6).fill(false))
  for (let i = 0; i < 4; i++) turn(loop, turns, 4, 10)
  t.same(turn(loop, turns, 4, 10), [false, false, false, true], 'a queue that stands on is shed')
})

t.test('regression: requests held back by a 200 ms stall outside any request were refused once read', async t => {
  const loop = fakeLoop()
  const turns = new LoopTurns(settings, loop.clock)
  calm(loop, turns)
  turn(loop, turns, 2, 1)
  loop.work(200) // a timer's synchronous work, no request read: no turn of ours
  t.same(turn(loop, turns, 30, 2), Array(30).fill(false), 'the backlog is read')
  t.equal(turns.late(), false)
  t.equal(turns.standing(), false, 'the busy run starts after the stall')
  loop.work(50)
  turn(loop, turns, 2, 1)
  t.equal(turns.late(), true, 'a shorter gap is part of the next turn: 112 ms of late turns, a standing queue')
})

t.test('a stall is remembered: how long the loop ran other work before this turn, idle or not before it', async t => {
  const loop = fakeLoop()
  const turns = new LoopTurns(settings, loop.clock)
  calm(loop, turns)
  t.equal(turns.stallEnd, -1, 'none yet')
  loop.wait(3)
  loop.work(200) // idle, then a timer's synchronous work
  turn(loop, turns, 1, 1)
  t.equal(turns.stallEnd, loop.now - 1, 'it ended when the turn after it opened')
  t.equal(turns.stallMs, 200, 'its busy time, not the idle before it')
  const end = turns.stallEnd
  loop.wait(300)
  loop.work(20)
  turn(loop, turns, 1, 1)
  t.equal(turns.stallEnd, end, 'a long idle gap with short work in it is no stall')
  loop.work(24)
  turn(loop, turns, 1, 1)
  t.equal(turns.stallEnd, end, 'shorter than a quarter of the interval: part of the next turn')
  loop.work(30)
  turn(loop, turns, 1, 1)
  t.equal(turns.stallMs, 30, 'a 30 ms pause between turns is one')
  t.equal(turns.stallEnd, loop.now - 1)
})

t.test('regression: at 0.8x, requests read after a clump of continuations were refused', async t => {
  const loop = fakeLoop()
  const turns = new LoopTurns(settings, loop.clock)
  calm(loop, turns)
  for (let i = 0; i < 8; i++) turn(loop, turns, 3, 10)
  t.equal(turns.late(), true)
  // Timers ran 20 ms of continuations (awaits of work admitted earlier, which the limit bounds) before
  // this turn's first request: the budget counts from that request, the new work the turn takes on.
  loop.work(20)
  t.same(turn(loop, turns, 7, 1), [false, false, false, false, false, false, true])
  t.equal(turns.late(), true, 'the turn still counts as late: 27 ms long')
})

t.test('an app whose handlers run long gets a budget of twice its typical turn', async t => {
  const loop = fakeLoop()
  const turns = new LoopTurns(settings, loop.clock)
  for (let i = 0; i < 200; i++) {
    turn(loop, turns, 1, 15)
    loop.wait(10)
  }
  t.ok(Math.abs(turns.typicalMs - 15) < 0.01, `typical turn ${turns.typicalMs} ms`)
  t.ok(Math.abs(turns.budget() - 30) < 0.02)
  // Two requests per turn (28 ms) without a break: not late, the loop absorbs them.
  for (let i = 0; i < 10; i++) t.same(turn(loop, turns, 2, 14), [false, false])
  t.equal(turns.late(), false)
  t.equal(turns.standing(), true)
})

t.test('an idle moment ends the standing queue at once', async t => {
  const loop = fakeLoop()
  const turns = new LoopTurns(settings, loop.clock)
  for (let i = 0; i < 5; i++) turn(loop, turns, 3, 10)
  t.equal(turns.late(), true)
  t.equal(turns.standing(), true)
  loop.wait(1)
  t.same(turn(loop, turns, 3, 10), [false, false, false], 'the queue drained: nothing refused')
  t.equal(turns.late(), false)
  t.equal(turns.standing(), false)
  loop.wait(0.05)
  turn(loop, turns, 1, 1)
  t.equal(turns.standing(), false, 'a poll returning at once is not an idle moment: still the same busy run')
})

t.test('hysteresis: turns held near the budget stay late; a clearly short turn ends it', async t => {
  const loop = fakeLoop()
  const turns = new LoopTurns(settings, loop.clock)
  for (let i = 0; i < 5; i++) turn(loop, turns, 3, 10)
  t.equal(turns.late(), true)
  for (let i = 0; i < 10; i++) turn(loop, turns, 1, 3)
  t.equal(turns.late(), true, 'turns of 3 ms (above half the target) keep it')
  turn(loop, turns, 1, 2)
  t.equal(turns.late(), false, 'a 2 ms turn ends it')
  t.equal(turns.standing(), true, 'the loop is still busy without a break')
})

t.test('random arrivals below capacity: a few late turns, then idle: never late', async t => {
  const loop = fakeLoop()
  const turns = new LoopTurns(settings, loop.clock)
  for (let burst = 0; burst < 50; burst++) {
    for (let i = 0; i < 4; i++) t.same(turn(loop, turns, 2, 10), [false, false])
    loop.wait(30)
  }
  t.equal(turns.late(), false)
})

t.test('busy without a break for the interval is standing, however short the turns', async t => {
  const loop = fakeLoop()
  const turns = new LoopTurns(settings, loop.clock)
  for (let i = 0; i < 99; i++) turn(loop, turns, 1, 1)
  t.equal(turns.standing(), false)
  t.equal(turns.late(), false)
  turn(loop, turns, 1, 1)
  t.equal(turns.standing(), true)
  t.equal(turns.late(), false, 'short turns are never late')
})

t.test('connections waiting to be accepted: a short turn budget until the loop idles', async t => {
  const loop = fakeLoop()
  const turns = new LoopTurns(settings, loop.clock)
  for (let i = 0; i < ACCEPT_RUN - 1; i++) {
    turns.connection()
    t.same(turn(loop, turns, 2, 2), [false, false])
  }
  t.equal(turns.acceptBacklog(), false, `${ACCEPT_RUN - 1} turns in a row`)
  turn(loop, turns, 1, 1)
  t.equal(turns.acceptBacklog(), false, 'a turn without a connection breaks the run')
  for (let i = 0; i < ACCEPT_RUN; i++) {
    turns.connection()
    turn(loop, turns, 1, 0.1)
  }
  t.equal(turns.acceptBacklog(), false, 'a pool opening its connections at once is let in within a few ms')
  for (let i = 0; i < 30; i++) {
    turns.connection()
    turn(loop, turns, 1, 2)
  }
  t.equal(turns.acceptBacklog(), true, 'one connection every turn for 60 ms')
  turns.connection()
  t.same(turn(loop, turns, 3, ACCEPT_BUDGET_MS), [false, false, true], 'reads for the accept budget, then refuses')
  loop.wait(1)
  turns.connection()
  t.equal(turns.acceptBacklog(), false, 'the loop waited: nothing was queued')
  loop.endTurn()
})

t.test('a cold burst of clients opening connections is an accept backlog after a quarter of the interval', async t => {
  // An idle process hit by a 4x burst: every turn accepts a connection and reads its one request, 1.2-3
  // ms of work. At half the interval the backlog was declared after 58 ms, and the 503s of the first
  // 0.1 s had waited up to 76-81 ms.
  t.equal(ACCEPT_RUN_SHARE * settings.intervalMs, 25, 'a quarter of the 100 ms interval')
  const loop = fakeLoop()
  const turns = new LoopTurns(settings, loop.clock)
  loop.wait(2000)
  for (let i = 0; i < ACCEPT_RUN; i++) {
    turns.connection()
    turn(loop, turns, 1, 24 / ACCEPT_RUN)
  }
  t.equal(turns.acceptBacklog(), false, `${ACCEPT_RUN} turns over 24 ms`)
  for (let i = 0; i < 2; i++) {
    turns.connection()
    turn(loop, turns, 1, 1.5)
  }
  t.equal(turns.acceptBacklog(), true, `${ACCEPT_RUN + 2} turns over 27 ms: half the interval would wait for 50`)
})

t.test('a surge: a connection in each of SURGE_RUN busy turns in a row, over a tenth of the interval', async t => {
  t.equal(SURGE_SHARE * settings.intervalMs, 10)
  const loop = fakeLoop()
  const turns = new LoopTurns(settings, loop.clock)
  loop.wait(2000)
  for (let i = 0; i < 3 * SURGE_RUN; i++) {
    turns.connection()
    turn(loop, turns, 1, 0.3)
  }
  t.equal(turns.surge(), false, `${3 * SURGE_RUN} turns in a row over ${(3 * SURGE_RUN * 0.3).toFixed(1)} ms: a pool opening at once`)
  turns.connection()
  turn(loop, turns, 1, 5)
  t.equal(turns.surge(), true, 'the same run past 10 ms')
  turn(loop, turns, 1, 1)
  t.equal(turns.surge(), false, 'a turn without a connection ends it')
  for (let i = 0; i < SURGE_RUN - 1; i++) {
    turns.connection()
    turn(loop, turns, 1, 2.5)
  }
  t.equal(turns.surge(), false, `${SURGE_RUN - 1} turns over 12.5 ms: too few`)
  turns.connection()
  turn(loop, turns, 1, 2.5)
  t.equal(turns.surge(), true, `${SURGE_RUN} turns over 15 ms`)
  t.equal(turns.acceptBacklog(), false, 'not yet an accept backlog: too few turns')
  loop.wait(1)
  turns.connection()
  t.equal(turns.surge(), false, 'the loop waited: the connections were not queued')
  loop.endTurn()
})

t.test('no accept backlog while refusals would not shorten the turns', async t => {
  const loop = fakeLoop()
  const turns = new LoopTurns(settings, loop.clock)
  turns.refusalsShorten = false
  for (let i = 0; i < 30; i++) {
    turns.connection()
    turn(loop, turns, 1, 2)
  }
  t.equal(turns.acceptBacklog(), false)
  turns.connection()
  t.same(turn(loop, turns, 3, ACCEPT_BUDGET_MS), [false, false, false], 'reads past the accept budget')
  turns.refusalsShorten = true
  t.equal(turns.acceptBacklog(), true, 'the same run, once refusals shorten turns')
})

t.test('how long a turn has run: from the previous turn\'s end when the loop did not idle, 0 between turns', async t => {
  const loop = fakeLoop()
  const turns = new LoopTurns(settings, loop.clock)
  t.equal(turns.ran(), 0, 'no turn open')
  loop.wait(3)
  turns.overBudget()
  loop.work(2)
  t.equal(turns.ran(), 2, 'the loop idled before it: from its first request')
  loop.endTurn()
  loop.work(7) // timers: continuations before the next turn reads a request
  t.equal(turns.ran(), 0, 'closed')
  turns.overBudget()
  t.equal(turns.ran(), 7, 'no idle moment: the continuations count')
  loop.endTurn()
})

t.test('a share of the interval: standing(0.25) after 25 ms of busy loop, standing() after 100', async t => {
  const loop = fakeLoop()
  const turns = new LoopTurns(settings, loop.clock)
  const busy: Array<[boolean, boolean]> = []
  for (let i = 0; i < 5; i++) {
    turn(loop, turns, 1, 24)
    busy.push([turns.standing(0.25), turns.standing()])
  }
  t.same(busy, [[false, false], [true, false], [true, false], [true, false], [true, true]])
})

t.test('a route\'s run at admission: from the admitted request\'s read to the next read, or to the end of its turn; the shortest is kept', async t => {
  const loop = fakeLoop()
  const turns = new LoopTurns(settings, loop.clock)
  const route = { runMinMs: Infinity }
  turns.overBudget()
  t.equal(turns.readAt, loop.now)
  turns.admitted(route)
  loop.work(2)
  turns.overBudget()
  t.equal(route.runMinMs, 2, 'the first measure as it is')
  loop.work(0.5)
  turns.overBudget()
  t.equal(route.runMinMs, 2, 'a read after a request not admitted measures nothing')
  turns.admitted(route)
  loop.work(4)
  loop.endTurn()
  t.equal(route.runMinMs, 2, 'the last admitted of its turn, measured at the turn\'s end: longer, not kept')
  loop.wait(5)
  turns.overBudget()
  turns.admitted(route)
  loop.work(1.5)
  loop.endTurn()
  t.equal(route.runMinMs, 1.5, 'shorter: kept')
  loop.wait(5)
  turns.overBudget()
  loop.work(1)
  loop.endTurn()
  t.equal(route.runMinMs, 1.5, 'nothing pending')
})
