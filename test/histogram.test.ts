import t from 'tap'
import { BucketHistogram, bothRecorders, Histograms, histogramValues, type Recorder } from '../lib/histogram.js'

t.test('a bucket holds the values up to its bound, the last one everything above', async t => {
  const h = new BucketHistogram([0.01, 0.1, 1])
  for (const v of [0, 0.01, 0.011, 0.1, 0.5, 1, 2, 100]) h.observe(v)
  t.same([...h.counts], [2, 2, 2, 2])
  t.equal(h.count, 8)
  t.equal(h.sum, 0 + 0.01 + 0.011 + 0.1 + 0.5 + 1 + 2 + 100)
})

t.test('a negative or NaN value is not observed', async t => {
  const h = new BucketHistogram([1])
  h.observe(-1)
  h.observe(NaN)
  t.equal(h.count, 0)
  t.equal(h.sum, 0)
})

t.test('values as prom-client shows them: cumulative buckets with le, then sum and count', async t => {
  const h = new BucketHistogram([0.5, 1])
  h.observe(0.25)
  h.observe(0.75)
  h.observe(3)
  t.same(histogramValues('x', h, { outcome: 'admitted' }), [
    { value: 1, labels: { outcome: 'admitted', le: 0.5 }, metricName: 'x_bucket' },
    { value: 2, labels: { outcome: 'admitted', le: 1 }, metricName: 'x_bucket' },
    { value: 3, labels: { outcome: 'admitted', le: '+Inf' }, metricName: 'x_bucket' },
    { value: 4, labels: { outcome: 'admitted' }, metricName: 'x_sum' },
    { value: 3, labels: { outcome: 'admitted' }, metricName: 'x_count' }
  ])
})

t.test('the Prometheus recorder keeps admitted, rejected and loop delay apart; both recorders get every call', async t => {
  const h = new Histograms()
  const calls: string[] = []
  const spy: Recorder = {
    loopDelay (s) { calls.push(`delay ${s}`) },
    request (outcome, s) { calls.push(`${outcome} ${s}`) }
  }
  const r = bothRecorders(h, spy)
  r.request('admitted', 0.02)
  r.request('rejected', 0.0001)
  r.request('rejected', 0.0002)
  r.loopDelay(0.003)
  t.equal(h.admitted.count, 1)
  t.equal(h.rejected.count, 2)
  t.equal(h.delay.count, 1)
  t.equal(h.delay.sum, 0.003)
  t.same(calls, ['admitted 0.02', 'rejected 0.0001', 'rejected 0.0002', 'delay 0.003'])
})
