import t from 'tap'
import { NEXT_TICK_WARMUP, warmNextTick } from '../lib/warm-ticks.js'

t.test('process.nextTick is called NEXT_TICK_WARMUP times, once per process, and its ticks have run when it resolves', async t => {
  const original = process.nextTick
  let calls = 0
  let ran = 0
  process.nextTick = function countingNextTick (callback: (...args: unknown[]) => void, ...args: unknown[]): void {
    calls++
    original(() => {
      ran++
      callback(...args)
    })
  } as typeof process.nextTick
  t.teardown(() => { process.nextTick = original })
  await warmNextTick()
  t.equal(calls, NEXT_TICK_WARMUP + 1, 'the warm-up and the one that resolves')
  t.equal(ran, calls, 'every tick ran before it resolved')
  await warmNextTick()
  t.equal(calls, NEXT_TICK_WARMUP + 1, 'the second time calls nothing')
})
