import t from 'tap'
import { excessDelayMs, LoopMonitor } from '../lib/signals.js'

t.test('excess delay: what exceeds the histogram resolution, never negative or NaN', async t => {
  t.equal(excessDelayMs(10_000_000, 10), 0)
  t.equal(excessDelayMs(12_500_000, 10), 2.5)
  t.equal(excessDelayMs(9_000_000, 10), 0)
  t.equal(excessDelayMs(NaN, 10), 0)
  t.equal(excessDelayMs(Infinity, 10), 0)
})

function busy (ms: number): void {
  const end = performance.now() + ms
  while (performance.now() < end);
}

t.test('a window of synchronous work reads as a busy loop with a long delay', async t => {
  const m = new LoopMonitor(10)
  t.teardown(() => m.stop())
  await new Promise(resolve => setTimeout(resolve, 30))
  m.read()
  // Busy 60 ms at a time, giving the loop a turn in between, for about 200 ms.
  for (let i = 0; i < 4; i++) {
    busy(60)
    await new Promise(resolve => setImmediate(resolve))
  }
  const w = m.read()
  t.ok(w.durationMs >= 240, `duration ${w.durationMs}`)
  t.ok(w.elu > 0.8 && w.elu <= 1, `elu ${w.elu}`)
  t.ok(w.delayP99Ms >= 40, `delay p99 ${w.delayP99Ms}`)
})

t.test('a window in which the delay timer never fired reads its own length as the delay', async t => {
  const m = new LoopMonitor(10)
  t.teardown(() => m.stop())
  m.read()
  busy(50)
  const w = m.read()
  t.ok(w.delayP99Ms >= 35 && w.delayP99Ms <= w.durationMs, `delay ${w.delayP99Ms} of ${w.durationMs}`)
  t.ok(w.elu > 0.9, `elu ${w.elu}`)
})

t.test('an idle window reads as idle', async t => {
  const m = new LoopMonitor(10)
  t.teardown(() => m.stop())
  m.read()
  await new Promise(resolve => setTimeout(resolve, 120))
  const w = m.read()
  t.ok(w.elu < 0.5, `elu ${w.elu}`)
  t.ok(w.delayP99Ms < 30, `delay ${w.delayP99Ms}`)
})
