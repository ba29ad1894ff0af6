import t from 'tap'
import { RetryAfterPolicy } from '../lib/retry-after.js'

t.test('starts at min; doubles each full period of shedding, up to max', async t => {
  const p = new RetryAfterPolicy({ min: 1, max: 8 }, () => 0)
  t.equal(p.base, 1)
  p.update(true, 0) // shedding starts: wait a full period (1 s)
  p.update(true, 500)
  t.equal(p.base, 1)
  p.update(true, 1000)
  t.equal(p.base, 2)
  p.update(true, 2900)
  t.equal(p.base, 2, 'next step only after 2 s more')
  p.update(true, 3000)
  t.equal(p.base, 4)
  p.update(true, 7000)
  t.equal(p.base, 8)
  p.update(true, 20000)
  t.equal(p.base, 8, 'capped at max')
})

t.test('halves every quiet second once shedding stops, down to min', async t => {
  const p = new RetryAfterPolicy({ min: 2, max: 16 }, () => 0)
  p.update(true, 0)
  p.update(true, 2000)
  p.update(true, 6000)
  p.update(true, 14000)
  t.equal(p.base, 16)
  p.update(false, 15000) // stops: the first step after a quiet second
  p.update(false, 15900)
  t.equal(p.base, 16)
  p.update(false, 16000)
  t.equal(p.base, 8)
  p.update(false, 17000)
  t.equal(p.base, 4)
  p.update(false, 18000)
  t.equal(p.base, 2)
  p.update(false, 99000)
  t.equal(p.base, 2, 'floored at min')
})

t.test('regression: the cap outlasted the episode (a refusal 20 s after shedding stopped was told 30 s)', async t => {
  const p = new RetryAfterPolicy({ min: 1, max: 30 }, () => 0)
  let now = 0
  p.update(true, now)
  while (p.base < 30) p.update(true, (now += 100))
  const stopped = now + 1000
  for (let at = stopped; at <= stopped + 20_000; at += 100) p.update(false, at)
  t.equal(p.base, 1, 'back to min within 5 quiet seconds')
  t.equal(p.value(), 1)
})

t.test('jitter: a band about half the base wide, from the base, or ending at max', async t => {
  const draws = [0, 0.49, 0.5, 0.999]
  const values = (base: number, max: number): number[] => draws.map(r => {
    const p = new RetryAfterPolicy({ min: base, max }, () => r)
    return p.value()
  })
  t.same(values(1, 30), [1, 1, 2, 2])
  t.same(values(4, 30), [4, 5, 5, 6])
  t.same(values(8, 30), [8, 10, 10, 12])
  t.same(values(8, 9), [8, 8, 9, 9], 'little room above: never beyond max')
  t.same(values(5, 5), [5, 5, 5, 5], 'min = max: nothing to spread')
  t.same(values(1, 1), [1, 1, 1, 1])
  const p = new RetryAfterPolicy({ min: 1, max: 30 })
  const seen = new Set<number>()
  for (let i = 0; i < 200; i++) seen.add(p.value())
  t.same([...seen].filter(v => v !== 1 && v !== 2), [], 'default random stays within base..base+1')
})

t.test('regression: at the cap the jitter disappeared (every client told exactly 30 s)', async t => {
  const p = new RetryAfterPolicy({ min: 1, max: 30 })
  let now = 0
  p.update(true, now)
  while (p.base < 30) p.update(true, (now += 100))
  const seen = new Set<number>()
  for (let i = 0; i < 2000; i++) seen.add(p.value())
  t.ok(Math.min(...seen) === 15 && Math.max(...seen) === 30, `spread over 15-30 s, saw ${[...seen].sort((a, b) => a - b).join(',')}`)
  t.ok(seen.size >= 14)
})
