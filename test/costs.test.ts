import t from 'tap'
import { CostModel, COST_FLOOR_MS, MAX_ROUTES, MIN_SEEN, Pace, REFUSAL_MS, RUN_SMOOTHING, type RouteCost } from '../lib/costs.js'

/** A fixed sequence of counts around `mean` (a deterministic stand-in for how completions vary). */
function counts (mean: number, window: number, phase: number): number {
  return Math.max(0, Math.round(mean + mean * 0.4 * Math.sin(1.7 * window + phase) + 2 * Math.cos(3.1 * window * (phase + 1))))
}

/** Feeds `n` windows of routes with costs `ms` (completions around `means`), and `refused` refusals. */
function feed (model: CostModel, routes: RouteCost[], ms: number[], means: number[], n: number, refused = 0, from = 0): void {
  for (let w = from; w < from + n; w++) {
    let busy = REFUSAL_MS * refused
    routes.forEach((route, i) => {
      const c = counts(means[i] as number, w, i)
      route.completed = c
      busy += c * (ms[i] as number)
    })
    model.learn(busy, refused, 2)
  }
}

t.test('a mixed app: each route\'s cost is learned from how the counts vary, not the mean of all', async t => {
  const model = new CostModel()
  const routes = [model.register(), model.register(), model.register()]
  // A hello-world route, an awaiting 2.2 ms route and a 10 ms synchronous one, at 3x with refusals.
  feed(model, routes, [0.012, 2.2, 10.3], [15, 12, 3.5], 60, 100)
  t.ok(Math.abs(model.costOf(routes[0]) - 0.012) < 0.005, `hello ${model.costOf(routes[0])}`)
  t.ok(Math.abs(model.costOf(routes[1]) - 2.2) < 0.05, `work ${model.costOf(routes[1])}`)
  t.ok(Math.abs(model.costOf(routes[2]) - 10.3) < 0.1, `sync ${model.costOf(routes[2])}`)
  t.equal(model.meanMs, 2)
})

t.test('a route\'s own figure only once it rests on MIN_SEEN completions: the mean cost before', async t => {
  const model = new CostModel()
  const route = model.register()
  t.equal(model.costOf(route), 0, 'nothing known')
  t.equal(model.costOf(undefined), 0)
  // The route costs 2 ms, the mean is 0.8.
  route.completed = MIN_SEEN - 1
  model.learn(2 * (MIN_SEEN - 1), 0, 0.8)
  t.equal(route.seen, MIN_SEEN - 1)
  t.equal(route.completed, 0, 'the window\'s count is reset')
  t.equal(model.costOf(route), 0.8, 'the mean')
  t.equal(model.costOf(undefined), 0.8)
  route.completed = 1
  model.learn(2, 0, 0.8)
  t.ok(Math.abs(model.costOf(route) - 2) < 0.01, `its own: ${model.costOf(route)}`)
})

t.test('a cost is never taken below the floor', async t => {
  const model = new CostModel()
  const [a, b] = [model.register(), model.register()]
  // Busy time that the second route explains alone: the first one's fit goes to 0 or below.
  feed(model, [a, b] as RouteCost[], [0, 3], [20, 10], 60)
  t.equal(model.costOf(a), COST_FLOOR_MS)
  t.ok(Math.abs(model.costOf(b) - 3) < 0.05)
})

t.test('a route whose cost changes is followed (the old windows are forgotten)', async t => {
  const model = new CostModel()
  const routes = [model.register(), model.register()]
  feed(model, routes, [1, 4], [20, 5], 60)
  t.ok(Math.abs(model.costOf(routes[0]) - 1) < 0.05)
  feed(model, routes, [2, 4], [20, 5], 150, 0, 60)
  t.ok(Math.abs(model.costOf(routes[0]) - 2) < 0.1, `after the change: ${model.costOf(routes[0])}`)
  t.ok(Math.abs(model.costOf(routes[1]) - 4) < 0.2, `the other: ${model.costOf(routes[1])}`)
})

t.test('a route that stops finishing requests keeps its figure, and the model stays sound for hours of windows', async t => {
  const model = new CostModel()
  const routes = [model.register(), model.register()]
  feed(model, routes, [1, 4], [20, 5], 60)
  const before = model.costOf(routes[1])
  feed(model, [routes[0] as RouteCost], [1], [20], 100_000, 0, 60)
  t.ok(Math.abs(model.costOf(routes[1]) - before) < 0.1 * before, `not one of its completions since: ${model.costOf(routes[1])} (${before})`)
  t.ok(Math.abs(model.costOf(routes[0]) - 1) < 0.05)
  feed(model, routes, [1, 6], [20, 5], 60, 0, 100_060)
  t.ok(Math.abs(model.costOf(routes[1]) - 6) < 0.3, `learned again: ${model.costOf(routes[1])}`)
})

t.test('a window without completions, or without a finite busy time, teaches nothing', async t => {
  const model = new CostModel()
  const route = model.register()
  feed(model, [route], [2], [20], 30)
  const learned = model.costOf(route)
  model.learn(50, 10, 2)
  t.equal(model.costOf(route), learned, 'refusals only')
  for (const busy of [NaN, Infinity, -1]) {
    route.completed = 10
    model.learn(busy, 0, 2)
  }
  t.equal(model.costOf(route), learned)
  model.learn(50, 0, NaN)
  t.equal(model.meanMs, 0, 'an unknown mean is 0')
})

t.test('routes beyond MAX_ROUTES share one slot', async t => {
  const model = new CostModel()
  const own = Array.from({ length: MAX_ROUTES }, () => model.register())
  t.equal(new Set(own.map(r => r.index)).size, MAX_ROUTES)
  t.notOk(own.includes(model.shared))
  t.equal(model.register(), model.shared)
  t.equal(model.register(), model.shared)
})

t.test('regression: a route that awaits a query first was paced when replies read between two requests were charged to it', async t => {
  // The runs the turns measured for such a route at 4x with a database stand-in: 0.02 ms of its own,
  // and now and then a few driver replies and their continuations (2-3 ms). A smoothed mean of every
  // run read 0.02-2.9 ms and crossed PACED_SHARE of its 2.2 ms cost; the shortest of each window does not.
  const model = new CostModel()
  const route = model.register()
  t.equal(route.prefixMs, -1, 'nothing measured yet')
  model.learn(0, 0, 2)
  t.equal(route.prefixMs, -1, 'a window without a run measures nothing')
  const runs = [[0.02, 2.6, 2.9], [3.1, 0.03, 0.02], [0.02, 0.02, 2.2]]
  for (const window of runs) {
    for (const ms of window) route.runMinMs = Math.min(route.runMinMs, ms)
    model.learn(0, 0, 2)
    t.equal(route.runMinMs, Infinity, 'each window starts anew')
  }
  t.ok(Math.abs(route.prefixMs - 0.02) < 1e-9, `the shortest of each window: ${route.prefixMs}`)
  route.runMinMs = 1.02
  model.learn(0, 0, 2)
  t.ok(Math.abs(route.prefixMs - (0.02 + RUN_SMOOTHING)) < 1e-9, `a route that now works when admitted, followed over windows: ${route.prefixMs}`)
})

t.test('the pace: a bucket of loop time, a burst, and debt', async t => {
  const pace = new Pace()
  // Rate 1 ms per ms, burst 4 ms, requests of 2 ms read 0.5 ms apart.
  const admitted: boolean[] = []
  for (let i = 0; i < 8; i++) admitted.push(pace.admit(1000 + 0.5 * i, 2, 1, 4))
  t.same(admitted, [true, true, true, false, false, true, false, false], 'the burst (and what refilled meanwhile), then one per 2 ms')
  t.equal(pace.admit(1100, 10, 1, 4), true, 'a full bucket admits a 10 ms request')
  t.equal(pace.admit(1105, 2, 1, 4), false, 'in debt 6 ms, refilled 5')
  t.equal(pace.admit(1106.5, 2, 1, 4), true, 'out of debt')
})
