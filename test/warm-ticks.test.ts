import t from 'tap'
import { NEXT_TICK_WARMUP, nodeMajor, warmNextTick } from '../lib/warm-ticks.js'

/** Counts the calls of process.nextTick while `fn` runs (synchronously), passing them on. */
function countCalls (fn: () => void): number {
  const original = process.nextTick
  let calls = 0
  process.nextTick = function countingNextTick (...args: Parameters<typeof original>): void {
    calls++
    original(...args)
  } as typeof process.nextTick
  try {
    fn()
  } finally {
    process.nextTick = original
  }
  return calls
}

t.test('process.nextTick is called NEXT_TICK_WARMUP times on Node 20, once per process, without waiting', async t => {
  t.equal(nodeMajor(), Number(process.version.slice(1).split('.')[0]))
  t.equal(countCalls(() => { warmNextTick(22) }), 0, 'not on another Node version')
  t.equal(countCalls(() => { warmNextTick(20) }), NEXT_TICK_WARMUP)
  t.equal(countCalls(() => { warmNextTick(20) }), 0, 'the second time calls nothing')
})
