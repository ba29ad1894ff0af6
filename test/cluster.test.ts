import t from 'tap'
import { spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import http from 'node:http'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import type { WorkerSnapshot } from '../example/cluster.js'

const promtool = spawnSync('promtool', ['--version']).status === 0
const N = 40
const P = 'fastify_admission_'

// What README "Cluster" promises for each family: worker shares add up; utilisation and saturation are
// means; delay, Retry-After and the flags are the worst worker's.
const AGGREGATORS: Record<string, 'sum' | 'average' | 'max'> = {
  inflight_requests: 'sum',
  concurrency_limit: 'sum',
  capacity_requests_per_second: 'sum',
  requests_total: 'sum',
  request_duration_seconds: 'sum',
  event_loop_delay_seconds: 'sum',
  event_loop_utilization_ratio: 'average',
  saturation_ratio: 'average',
  event_loop_delay_p99_seconds: 'max',
  retry_after_seconds: 'max',
  shedding: 'max',
  draining: 'max'
}
// Sampled every 20 ms: never equal in two reads, so left out of the consistent-snapshot comparison.
const MOVING = P + 'event_loop_delay_seconds'

interface Response { status: number, type: string, body: string }

function get (port: number, path: string): Promise<Response> {
  return new Promise((resolve, reject) => {
    // agent: false, one connection per request: the cluster primary hands each new connection to the
    // next worker, so the requests spread over both.
    const req = http.get({ host: '127.0.0.1', port, path, agent: false, timeout: 10_000 }, res => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { body += chunk })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: res.headers['content-type'] ?? '', body }))
    })
    req.on('timeout', () => req.destroy(new Error(`GET ${path} timed out`)))
    req.on('error', reject)
  })
}

/** `name{k="v",...}` with the labels sorted: the same key for a text line and a JSON value. */
function key (name: string, labels: Record<string, string | number>): string {
  const parts = Object.keys(labels).sort().map(k => `${k}="${labels[k]}"`)
  return parts.length === 0 ? name : `${name}{${parts.join(',')}}`
}

/** Every sample of a text exposition, by key. */
function parse (text: string): Map<string, number> {
  const samples = new Map<string, number>()
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (m === null) continue
    const labels: Record<string, string> = {}
    for (const [, k, v] of (m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)) labels[k as string] = v as string
    samples.set(key(m[1] as string, labels), Number(m[3]))
  }
  return samples
}

/** Each worker's samples by key (pid order), and the aggregator each family declares. */
function perWorker (snapshots: WorkerSnapshot[]): { samples: Map<string, number[]>, declared: Map<string, string | undefined>, family: Map<string, string> } {
  const samples = new Map<string, number[]>()
  const declared = new Map<string, string | undefined>()
  const family = new Map<string, string>()
  for (const worker of [...snapshots].sort((a, b) => a.pid - b.pid)) {
    for (const metric of worker.metrics) {
      declared.set(metric.name, metric.aggregator)
      for (const value of metric.values) {
        const k = key((value as { metricName?: string }).metricName ?? metric.name, value.labels as Record<string, string | number>)
        family.set(k, metric.name)
        samples.set(k, [...(samples.get(k) ?? []), value.value])
      }
    }
  }
  return { samples, declared, family }
}

function aggregate (how: 'sum' | 'average' | 'max', values: number[]): number {
  const sum = values.reduce((a, b) => a + b, 0)
  return how === 'sum' ? sum : how === 'average' ? sum / values.length : Math.max(...values)
}

t.test('cluster: the primary serves the workers\' metrics aggregated as each gauge declares', { timeout: 30_000 }, async t => {
  const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(new URL('../example/cluster.ts', import.meta.url))], {
    stdio: ['ignore', 'pipe', 'inherit'],
    // tsx transpiles the child, not tap's loader: record no coverage for it (see overload.test.ts).
    env: { ...process.env, WORKERS: '2', PORT: '0', METRICS_PORT: '0', CPU_MS: '0.2', DB_MS: '1', _TAPJS_PROCESSINFO_COV_EXCLUDE_: '/./' }
  })
  let pids: number[] = []
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM')
      const exited = once(child, 'exit')
      if (await Promise.race([exited.then(() => true), sleep(5000, false, { ref: false })]) === false) child.kill('SIGKILL')
    }
    for (const pid of pids) {
      try { process.kill(pid, 'SIGKILL') } catch {}
    }
  })

  // Ready: the primary prints one JSON line once every worker listens.
  let out = ''
  const ready = await Promise.race([
    new Promise<string>(resolve => child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString()
      if (out.includes('\n')) resolve(out.slice(0, out.indexOf('\n')))
    })),
    once(child, 'exit').then(([code]) => { throw new Error(`the cluster exited with ${String(code)} before it was ready`) }),
    sleep(20_000, undefined, { ref: false }).then(() => { throw new Error('the cluster was not ready within 20 s') })
  ])
  const info = JSON.parse(ready) as { url: string, metrics: string, workers: number[] }
  pids = info.workers
  const port = Number(new URL(info.url).port)
  const metricsPort = Number(new URL(info.metrics).port)
  t.equal(pids.length, 2, 'two workers')

  const statuses: number[] = []
  for (let i = 0; i < N; i++) statuses.push((await get(port, '/work')).status)
  t.same(statuses, Array(N).fill(200), `${N} requests to /work, one at a time, all admitted`)
  const publicMetrics = await get(port, '/metrics')
  t.equal(publicMetrics.status, 404, 'a worker does not serve its own figures as the service\'s')
  t.match(publicMetrics.body, `http://127.0.0.1:${metricsPort}/metrics`, 'it points to the primary')

  // Read each worker, the aggregate, each worker again, until both worker reads agree: then the
  // aggregate was taken from the same values (ELU and saturation change every 100 ms window).
  let before: Map<string, number[]> = new Map()
  let after: Map<string, number[]> = new Map()
  let scrape: Response = { status: 0, type: '', body: '' }
  let attempts = 0
  let declared = new Map<string, string | undefined>()
  let family = new Map<string, string>()
  const stable = (m: Map<string, number[]>): string => JSON.stringify([...m].filter(([k]) => family.get(k) !== MOVING))
  while (attempts++ < 50) {
    const a = perWorker(JSON.parse((await get(metricsPort, '/workers')).body) as WorkerSnapshot[])
    scrape = await get(metricsPort, '/metrics')
    const c = perWorker(JSON.parse((await get(metricsPort, '/workers')).body) as WorkerSnapshot[]);
    ({ samples: before, declared, family } = a)
    after = c.samples
    if (stable(before) === stable(after)) break
    await sleep(15)
  }
  t.equal(stable(before), stable(after), `two consistent reads of the workers around one scrape (attempt ${attempts})`)
  t.equal(scrape.status, 200)
  t.match(scrape.type, /^text\/plain; version=0\.0\.4/, 'Prometheus text content type')
  const text = scrape.body

  const cluster = parse(text)
  const value = (k: string): number | undefined => cluster.get(k)
  const workers = (k: string): number[] => before.get(k) ?? []

  t.equal(value(`${P}requests_total{outcome="admitted"}`), N, 'admitted requests add up over the workers')
  t.ok(workers(`${P}requests_total{outcome="admitted"}`).every(n => n > 0), 'both workers served some')
  t.equal(value(`${P}request_duration_seconds_count{outcome="admitted"}`), N, 'each admitted request timed once')
  t.equal(value(`${P}request_duration_seconds_bucket{le="+Inf",outcome="admitted"}`), N, '+Inf bucket = count')
  t.equal(value(`${P}event_loop_delay_seconds_bucket{le="+Inf"}`), value(`${P}event_loop_delay_seconds_count`), 'loop delay: +Inf bucket = count')
  t.equal(value(`${P}inflight_requests`), 0, 'nothing in flight after the responses')
  t.equal(value(`${P}concurrency_limit`), aggregate('sum', workers(`${P}concurrency_limit`)), 'limits: sum')
  t.equal(value(`${P}capacity_requests_per_second`), aggregate('sum', workers(`${P}capacity_requests_per_second`)), 'capacity: sum')
  t.equal(value(`${P}event_loop_utilization_ratio`), aggregate('average', workers(`${P}event_loop_utilization_ratio`)), 'ELU: average')
  t.equal(value(`${P}shedding`), aggregate('max', workers(`${P}shedding`)), 'shedding: max')
  t.equal(value(`${P}retry_after_seconds`), 1, 'Retry-After: max, 1 s while nothing is shed')

  // Every family, every series, every bucket: the declared aggregator, and the value it gives.
  for (const [name, how] of Object.entries(AGGREGATORS)) t.equal(declared.get(P + name), how, `${name} declares ${how}`)
  t.same([...declared.keys()].sort(), Object.keys(AGGREGATORS).map(name => P + name).sort(), 'no family left out of the table')
  for (const [k, values] of before) {
    if (family.get(k) === MOVING) continue
    const how = AGGREGATORS[(family.get(k) as string).slice(P.length)] as 'sum' | 'average' | 'max'
    t.equal(values.length, 2, `${k}: one value per worker`)
    t.equal(value(k), aggregate(how, values), `${k} = ${how} of ${values.join(', ')}`)
  }
  t.same([...cluster.keys()].filter(k => !k.startsWith(MOVING)).sort(),
    [...before.keys()].filter(k => family.get(k) !== MOVING).sort(), 'the aggregate has exactly the workers\' series')

  const types = text.split('\n').filter(line => line.startsWith('# TYPE '))
  t.equal(types.length, new Set(types).size, 'each family once')
  t.equal(types.length, Object.keys(AGGREGATORS).length, 'every family present')
  if (promtool) {
    const check = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' })
    t.equal(check.status, 0, check.stdout + check.stderr)
    t.equal((check.stdout + check.stderr).trim(), '', 'promtool check metrics: no findings')
  } else if (process.env.CI !== undefined) {
    t.fail('promtool is required in CI')
  }

  // SIGTERM: the primary stops every worker (each drains), then exits 0.
  child.kill('SIGTERM')
  const [code] = await once(child, 'exit') as [number | null]
  t.equal(code, 0, 'the primary exits cleanly')
  const alive = pids.filter(pid => {
    try { process.kill(pid, 0); return true } catch { return false }
  })
  t.same(alive, [], 'no worker outlives the primary')
})
