import t from 'tap'
import { AdaptiveLimit, limitOf, MAX_POOL_WINDOWS, MIN_SAMPLES, SUSTAINED_WINDOWS, type WindowStats } from '../lib/limit.js'

const settings = { minLimit: 2, maxLimit: 1000, initialLimit: 50, headroom: 0.5, busyTarget: 0.98 }

function win (over: Partial<WindowStats>): WindowStats {
  return { durationMs: 100, elu: 0.5, completed: 20, latencySumMs: 20 * 20, rejected: 0, arrivals: 20, ...over }
}

t.test('starts at the initial limit, unenforced, knowing nothing', async t => {
  const l = new AdaptiveLimit(settings)
  t.equal(l.limit, 50)
  t.equal(l.pressure, false)
  t.equal(l.capacity, 0)
  t.equal(l.baselineMs, 0)
})

t.test('first informative window: capacity = completions per busy second, limit by Little\'s law', async t => {
  const l = new AdaptiveLimit(settings)
  l.update(win({}))
  // 20 completions in 0.1 s at ELU 0.5 → 400/s at a fully busy loop; mean latency 20 ms.
  t.equal(l.capacity, 400)
  t.equal(l.baselineMs, 20)
  // 400/s · 0.020 s · 1.5 = 12
  t.equal(l.limit, limitOf(12))
  t.equal(l.pressure, false)
})

t.test('capacity is smoothed, weighted by ELU', async t => {
  const l = new AdaptiveLimit(settings)
  l.update(win({}))
  // sample 30/0.1/1 = 300; capacity += 0.3 · 1 · (300 − 400) = 370
  l.update(win({ elu: 1, completed: 30, latencySumMs: 30 * 20 }))
  t.equal(Math.round(l.capacity * 1e9) / 1e9, 370)
  // a window at ELU 0.2 moves it far less: sample 10/0.1/0.2 = 500; += 0.3 · 0.2 · 130 = 7.8
  l.update(win({ elu: 0.2, completed: 10, latencySumMs: 10 * 20 }))
  t.equal(Math.round(l.capacity * 1e9) / 1e9, 377.8)
})

t.test('pressure: on at ELU ≥ 0.9; held while shedding down to 0.75; off below', async t => {
  const l = new AdaptiveLimit(settings)
  l.update(win({ elu: 0.89 }))
  t.equal(l.pressure, false)
  l.update(win({ elu: 0.9 }))
  t.equal(l.pressure, true)
  l.update(win({ elu: 0.8, rejected: 3 }))
  t.equal(l.pressure, true, 'held: still shedding with a busy loop')
  l.update(win({ elu: 0.8, rejected: 0 }))
  t.equal(l.pressure, false, 'released: no refusals needed')
  l.update(win({ elu: 0.95 }))
  l.update(win({ elu: 0.74, rejected: 9 }))
  t.equal(l.pressure, false, 'released: loop has headroom even though it was shedding')
})

t.test('pressure held at an idle moment while more arrive than the loop can finish (enforcement dropped mid-burst)', async t => {
  const l = new AdaptiveLimit(settings)
  l.update(win({})) // capacity 400/s
  l.update(win({ elu: 0.95, rejected: 100, arrivals: 160 }))
  t.equal(l.pressure, true)
  const gain = l.gain
  // a limit cut too low leaves the loop idle while 1600/s arrive: still overloaded, the gain raises the limit
  l.update(win({ elu: 0.7, rejected: 150, arrivals: 160 }))
  t.equal(l.pressure, true, 'held: 1600/s arrive for a capacity of 400/s')
  t.ok(l.gain > gain, 'the limit rises instead')
  // arrivals below capacity while the limit refuses at an idle loop (a slow downstream): released
  l.update(win({ elu: 0.7, rejected: 5, arrivals: 30 }))
  t.equal(l.pressure, false, 'released: 300/s arrive for 400/s')
  l.update(win({ elu: 0.95 }))
  l.update(win({ elu: 0.7, rejected: 0, arrivals: 160 }))
  t.equal(l.pressure, false, 'released: nothing was refused')
})

t.test('under pressure latency carries queueing: the baseline only falls', async t => {
  const l = new AdaptiveLimit(settings)
  l.update(win({}))
  l.update(win({ elu: 1, completed: 40, latencySumMs: 40 * 90 }))
  t.equal(l.baselineMs, 20, 'queueing does not inflate the baseline')
  // capacity 400 + 0.3·(400 − 400) = 400 → limit stays 12
  t.equal(l.limit, limitOf(12))
  l.update(win({ elu: 1, completed: 40, latencySumMs: 40 * 10 }))
  t.equal(l.baselineMs, 10, 'cheaper requests are learned at once')
  t.equal(l.limit, limitOf(6))
})

t.test('a slow downstream with an idle CPU raises the limit instead of shedding', async t => {
  const l = new AdaptiveLimit(settings)
  l.update(win({}))
  t.equal(l.limit, limitOf(12))
  // Downstream now takes 300 ms; the loop is 60 % busy: baseline += 0.3 · (300 − 20) = 104.
  l.update(win({ elu: 0.6, completed: 24, latencySumMs: 24 * 300 }))
  t.equal(l.baselineMs, 104)
  t.equal(l.pressure, false)
  const before = l.limit
  for (let i = 0; i < 20; i++) l.update(win({ elu: 0.6, completed: 24, latencySumMs: 24 * 300 }))
  t.ok(l.limit > before)
  // converges on 400/s · 0.3 s · 1.5 = 180
  t.equal(l.limit, limitOf(180))
})

t.test('windows with too few samples teach nothing', async t => {
  const l = new AdaptiveLimit(settings)
  l.update(win({ completed: MIN_SAMPLES - 1, latencySumMs: 4 }))
  t.equal(l.capacity, 0)
  t.equal(l.baselineMs, 0)
  t.equal(l.limit, 50)
})

t.test('regression: a service of slow requests (25/s) never learned a limit: windows are pooled to MIN_SAMPLES', async t => {
  const l = new AdaptiveLimit(settings)
  // 2 completions of 430 ms per 100 ms window at ELU 0.7, a window with none in between.
  l.update(win({ elu: 0.7, completed: 2, latencySumMs: 2 * 430 }))
  l.update(win({ elu: 0.7, completed: 0, latencySumMs: 0 }))
  l.update(win({ elu: 0.7, completed: 2, latencySumMs: 2 * 430 }))
  t.equal(l.capacity, 0, '4 completions: not yet')
  l.update(win({ elu: 0.7, completed: 2, latencySumMs: 2 * 430 }))
  // 6 completions over the three windows that had any: 0.3 s at ELU 0.7.
  t.equal(Math.round(l.capacity * 1e6) / 1e6, Math.round(6 / 0.3 / 0.7 * 1e6) / 1e6)
  t.equal(l.baselineMs, 430)
  t.equal(l.limit, limitOf(6 / 0.3 / 0.7 * 0.43 * 1.5))
})

t.test('pooled windows too old to be pooled further are dropped', async t => {
  const l = new AdaptiveLimit(settings)
  l.update(win({ completed: 1, latencySumMs: 500 }))
  for (let i = 1; i < MAX_POOL_WINDOWS; i++) l.update(win({ completed: 0, latencySumMs: 0 }))
  for (let i = 0; i < 4; i++) l.update(win({ completed: 1, latencySumMs: 20 }))
  t.equal(l.capacity, 0, 'the first completion was dropped with its pool: 4 since')
  l.update(win({ completed: 1, latencySumMs: 20 }))
  t.equal(l.baselineMs, 20, 'the old 500 ms completion is not in the mean')
})

t.test('NaN, Infinity and empty windows never reach the limit', async t => {
  const l = new AdaptiveLimit(settings)
  l.update(win({}))
  l.update(win({ durationMs: 0 }))
  l.update(win({ durationMs: NaN }))
  l.update(win({ durationMs: Infinity }))
  l.update(win({ latencySumMs: Infinity }))
  t.equal(l.limit, limitOf(12))
  l.update(win({ elu: NaN }))
  t.equal(l.pressure, false, 'NaN ELU counts as idle')
  t.equal(l.capacity, 400, 'and teaches no capacity')
  t.ok(Number.isFinite(l.limit))
})

t.test('the limit stays within [minLimit, maxLimit]', async t => {
  const tiny = new AdaptiveLimit({ ...settings, minLimit: 5 })
  tiny.update(win({ completed: 10, latencySumMs: 10 * 1 }))
  // 200/s · 0.001 s · 1.5 = 0.3 → floor 5
  t.equal(tiny.limit, 5)
  const huge = new AdaptiveLimit({ ...settings, maxLimit: 100 })
  huge.update(win({ elu: 0.1, completed: 100, latencySumMs: 100 * 1000 }))
  t.equal(huge.limit, 100)
})

t.test('headroom scales the standing queue allowance', async t => {
  const none = new AdaptiveLimit({ ...settings, headroom: 0 })
  none.update(win({}))
  t.equal(none.limit, limitOf(8)) // 400 · 0.02
  const double = new AdaptiveLimit({ ...settings, headroom: 1 })
  double.update(win({}))
  t.equal(double.limit, limitOf(16))
})

t.test('feedback while shedding: an idle CPU raises the gain, a saturated loop lowers it', async t => {
  const l = new AdaptiveLimit(settings)
  l.update(win({}))
  t.equal(l.limit, limitOf(12))
  // Refusing under pressure while the loop idles 10 %: gain x (1 + 0.98 - 0.9) = 1.08.
  l.update(win({ elu: 0.9, completed: 36, latencySumMs: 36 * 20, rejected: 50 }))
  t.equal(Math.round(l.gain * 1e9) / 1e9, 1.08)
  // capacity 400 + 0.3 * 0.9 * (400 - 400) = 400 -> 400 * 0.02 * 1.5 * 1.08 = 12.96
  t.equal(l.limit, limitOf(400 * 0.02 * 1.5 * 1.08))
  // Saturated and refusing: x 0.98 per window, so the limit cannot creep up.
  l.update(win({ elu: 1, completed: 40, latencySumMs: 40 * 20, rejected: 50 }))
  t.equal(Math.round(l.gain * 1e9) / 1e9, Math.round(1.08 * 0.98 * 1e9) / 1e9)
  // Under pressure without refusals the limit does not bind: the gain holds.
  const held = l.gain
  l.update(win({ elu: 1, completed: 40, latencySumMs: 40 * 20, rejected: 0 }))
  t.equal(l.gain, held)
  // Without pressure it relaxes towards 1.
  l.update(win({ elu: 0.5 }))
  t.equal(Math.round(l.gain * 1e9) / 1e9, Math.round((held + 0.3 * (1 - held)) * 1e9) / 1e9)
})

t.test('regression: while shedding, the allowance for random arrivals queued more work (longer turns, slower refusals)', async t => {
  const l = new AdaptiveLimit(settings)
  l.update(win({}))
  t.equal(l.limit, limitOf(12), 'below capacity: the model plus 4 standard deviations of Poisson in-flight')
  t.equal(limitOf(12), 26)
  // Saturated and refusing: the gain steps by (1 + 0.98 - 1) = 0.98 per window. The allowance stays for
  // SUSTAINED_WINDOWS - 1 windows (random arrivals near capacity bind the limit for a window or two).
  let gain = 1
  for (let i = 1; i < SUSTAINED_WINDOWS; i++) {
    l.update(win({ elu: 1, completed: 40, latencySumMs: 40 * 20, rejected: 500 }))
    gain *= 0.98
    t.equal(l.limit, limitOf(12 * gain), `binding window ${i}: model + allowance`)
  }
  l.update(win({ elu: 1, completed: 40, latencySumMs: 40 * 20, rejected: 500 }))
  gain *= 0.98
  t.equal(l.limit, Math.ceil(12 * gain), 'sustained: the model alone')
  // A window without refusals (the limit does not bind) brings the allowance back.
  l.update(win({ elu: 1, completed: 40, latencySumMs: 40 * 20, rejected: 0 }))
  t.equal(l.limit, limitOf(12 * gain))
})

t.test('the gain stays within [0.5, 3]', async t => {
  const up = new AdaptiveLimit(settings)
  for (let i = 0; i < 50; i++) up.update(win({ elu: 0.76, rejected: 1 }))
  t.equal(up.pressure, false, 'pressure released below 0.75 only')
  const high = new AdaptiveLimit(settings)
  high.update(win({ elu: 0.95 }))
  for (let i = 0; i < 50; i++) high.update(win({ elu: 0.8, rejected: 1 }))
  t.equal(high.gain, 3)
  const low = new AdaptiveLimit(settings)
  for (let i = 0; i < 100; i++) low.update(win({ elu: 1, rejected: 1 }))
  t.equal(low.gain, 0.5)
})

t.test('regression: a cold 4x burst kept the room for random arrivals for half a second (limit 17-20 against a model of 8)', async t => {
  const l = new AdaptiveLimit(settings)
  l.update(win({}))
  t.equal(l.limit, limitOf(12))
  // Binding, with arrivals at twice the capacity (400/s · 0.1 s · 2 = 80): the model alone at once.
  l.update(win({ elu: 1, completed: 40, latencySumMs: 40 * 20, rejected: 60, arrivals: 80 }))
  const gain = 0.98
  t.equal(l.limit, Math.ceil(12 * gain), 'flooded: the model alone from the first binding window')
  // It stays so while the limit binds, even once fewer arrive than twice the capacity.
  l.update(win({ elu: 1, completed: 40, latencySumMs: 40 * 20, rejected: 5, arrivals: 45 }))
  t.equal(l.limit, Math.ceil(12 * gain * gain))
  // A window in which the limit does not bind brings the room back.
  l.update(win({ elu: 1, completed: 40, latencySumMs: 40 * 20, rejected: 0, arrivals: 45 }))
  t.equal(l.limit, limitOf(12 * gain * gain))
})

t.test('arrivals below twice the capacity keep the room for random arrivals while the limit binds briefly', async t => {
  const l = new AdaptiveLimit(settings)
  l.update(win({}))
  // 79 arrivals in 100 ms at a capacity of 400/s: 1.98 times it.
  l.update(win({ elu: 1, completed: 40, latencySumMs: 40 * 20, rejected: 30, arrivals: 79 }))
  t.equal(l.limit, limitOf(12 * 0.98))
  // Not counted without refusals either: arrivals at 3x that the limit does not refuse.
  const free = new AdaptiveLimit(settings)
  free.update(win({}))
  free.update(win({ elu: 1, completed: 40, latencySumMs: 40 * 20, rejected: 0, arrivals: 120 }))
  t.equal(free.limit, limitOf(12))
})

t.test('regression: a mixed app\'s limit stuck at 2 with the loop half idle (a window of cheap completions lowered the baseline, and under pressure it could not rise)', async t => {
  const l = new AdaptiveLimit(settings)
  l.update(win({}))
  t.equal(l.baselineMs, 20)
  // Saturated and refusing; a window whose completions were mostly of a cheap route: the baseline falls.
  l.update(win({ elu: 1, completed: 40, latencySumMs: 40 * 2, rejected: 100, arrivals: 120 }))
  t.equal(l.baselineMs, 2)
  t.equal(l.pressure, true)
  // 400/s · 0.002 s · 1.5 · 0.98 = 1.18, flooded (120 arrivals ≥ 80): the model alone, at the floor.
  t.equal(l.limit, 2)
  // The limit now holds the loop half idle while more than the capacity arrives: pressure holds, and the
  // latencies carry no queueing for the CPU, so the baseline learns from them again.
  l.update(win({ elu: 0.5, completed: 20, latencySumMs: 20 * 12, rejected: 100, arrivals: 120 }))
  t.equal(l.pressure, true, 'still refusing, more arriving than the capacity')
  t.equal(l.baselineMs, 2 + 0.3 * (12 - 2))
  // The gain rises too (idle loop while refusing: × (1 + 0.98 - 0.5)): 400 · 0.005 · 1.5 · 0.98 · 1.48 = 4.35.
  t.equal(l.limit, 5)
  // Busy again: under pressure the baseline may only fall.
  l.update(win({ elu: 0.95, completed: 40, latencySumMs: 40 * 30, rejected: 100, arrivals: 120 }))
  t.equal(l.baselineMs, 2 + 0.3 * (12 - 2))
})

t.test('the baseline may still only fall under pressure when a pooled window queued for the CPU', async t => {
  const l = new AdaptiveLimit(settings)
  l.update(win({}))
  l.update(win({ elu: 1, completed: 40, latencySumMs: 40 * 2, rejected: 100, arrivals: 120 }))
  t.equal(l.baselineMs, 2)
  // Two windows pooled for want of completions: the first saturated, the second idle while refusing.
  // Their pooled ELU (0.725) is below RELEASE_ELU, but the first one's latencies queued.
  l.update(win({ elu: 0.95, completed: 2, latencySumMs: 2 * 30, rejected: 100, arrivals: 120 }))
  l.update(win({ elu: 0.5, completed: 3, latencySumMs: 3 * 12, rejected: 100, arrivals: 120 }))
  t.equal(l.pressure, true)
  t.equal(l.baselineMs, 2)
})

t.test('a window too short to expect 16 arrivals at capacity is flooded only 4 standard deviations above it', async t => {
  const at = (arrivals: number): AdaptiveLimit => {
    const l = new AdaptiveLimit(settings)
    l.update(win({}))
    // 10 ms at 400/s: 4 expected; twice that is 8, 4 standard deviations above it 4 + 4 · 2 = 12.
    l.update(win({ durationMs: 10, elu: 1, completed: 0, latencySumMs: 0, rejected: 5, arrivals }))
    return l
  }
  t.equal(at(11).limit, limitOf(12 * 0.98), 'not flooded: the room for random arrivals stays')
  t.equal(at(12).limit, Math.ceil(12 * 0.98), 'flooded: the model alone')
})
