// In a file of its own: the warm-up runs once per process, and this is the first registration here.
import t from 'tap'
import Fastify from 'fastify'
import { Registry } from 'prom-client'
import admission from '../lib/index.js'
import { NEXT_TICK_WARMUP, nodeMajor } from '../lib/warm-ticks.js'

t.test('registering the plugin warms process.nextTick on Node 20', async t => {
  const app = Fastify()
  t.teardown(async () => { await app.close() })
  const original = process.nextTick
  let calls = 0
  process.nextTick = function countingNextTick (...args: Parameters<typeof original>): void {
    calls++
    original(...args)
  } as typeof process.nextTick
  try {
    await app.register(admission, { registry: new Registry() })
    await app.ready()
  } finally {
    process.nextTick = original
  }
  if (nodeMajor() === 20) t.ok(calls >= NEXT_TICK_WARMUP, `${calls} calls during registration`)
  else t.ok(calls < NEXT_TICK_WARMUP, `${calls} calls during registration (no warm-up off Node 20)`)
})
