import t from 'tap'
import { simulate, type SimSpec } from '../bench/sim.js'

// bench/sim.ts drives the plugin's own controller and loop turns on a virtual clock. These checks keep
// the tool honest as the controller changes: every request is accounted for, a run is a function of its
// spec, and below capacity nothing is refused.
const work: SimSpec = { rate: 1736, preMs: 1, ioMs: 20, postMs: 1, readMs: 0.05, refusalMs: 0.06, seconds: 3, seed: 7 }

t.test('the simulator: every request admitted or refused, the same figures for the same spec', async t => {
  const a = simulate(work)
  t.ok(a.offered > 4000, `${a.offered} Poisson arrivals in 3 s at 1736/s`)
  t.equal(a.admitted + a.refused, a.offered)
  t.ok(a.refused > 0, 'a 3.6x overload is shed')
  t.ok(a.windows.length >= 25, `${a.windows.length} windows reported`)
  t.equal(a.windows.reduce((sum, w) => sum + w.arrivals, 0) <= a.offered, true)
  t.same(simulate(work), a, 'deterministic')
  t.not(simulate({ ...work, seed: 8 }).offered, a.offered, 'another seed, other arrivals')
})

t.test('the simulator: at 0.7x of the route\'s capacity nothing is refused and every answer is in time', async t => {
  const r = simulate({ ...work, rate: 340 })
  t.equal(r.refused, 0)
  t.equal(r.goodputPerSecond * 3, r.admitted)
  t.ok(r.okP99Ms < 100, `2xx p99 ${r.okP99Ms} ms`)
})
