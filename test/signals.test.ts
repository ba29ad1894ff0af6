import t from 'tap'
import { excessDelayMs, LoopMonitor, p99 } from '../lib/signals.js'

t.test('excess delay: what exceeds the timer resolution, never negative or NaN', async t => {
  t.equal(excessDelayMs(10, 10), 0)
  t.equal(excessDelayMs(12.5, 10), 2.5)
  t.equal(excessDelayMs(9, 10), 0)
  t.equal(excessDelayMs(NaN, 10), 0)
  t.equal(excessDelayMs(Infinity, 10), 0)
})

t.test('p99 by nearest rank: the largest of fewer than 100 samples, 0 for none', async t => {
  t.equal(p99([]), 0)
  t.equal(p99([3, 1, 2]), 3)
  const hundred = Array.from({ length: 100 }, (_, i) => 100 - i)
  t.equal(p99(hundred), 99)
  t.equal(p99(Array.from({ length: 200 }, (_, i) => i)), 197)
})

function busy (ms: number): void {
  const end = performance.now() + ms
  while (performance.now() < end);
}

t.test('a window of synchronous work reads as a busy loop with a long delay; every sample is handed on', async t => {
  const samples: number[] = []
  const m = new LoopMonitor(10, seconds => { samples.push(seconds) })
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
  t.ok(samples.some(s => s >= 0.04), `samples ${samples.join(' ')}`)
  t.ok(samples.every(s => s >= 0 && s < 1), 'seconds, never negative')
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
