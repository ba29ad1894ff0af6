// End to end with a real Prometheus: the example server, started fresh and driven at about 3x its
// capacity from its first request, is scraped every second; the expression the README recommends is
// queried through Prometheus's HTTP API, as prometheus-adapter and KEDA do, and turned into the replica
// count an HPA computes. Skipped where the prometheus binary is missing, except in CI (.ci/run installs it).
import t from 'tap'
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { Agent, request } from 'undici'

type Teardown = { teardown: (fn: () => unknown) => void }

const hasPrometheus = spawnSync('prometheus', ['--version']).status === 0
/** CPU of one /work request, ms (plus a 10 ms database call): about 160 requests/s on one core. */
const CPU_MS = 6
/**
 * How the load relates to the probed capacity. The probe runs while tap runs other test files beside
 * this one, and reads anywhere from half to all of what the process serves later: 4x the probe made
 * 1.6-7x here. The one-step check holds at whatever ratio the window shows.
 */
const OVERLOAD = 4
const LOAD_SECONDS = 40
/** The seconds of the load the expression's window covers, where offered and served are measured. */
const WINDOW_SECONDS = 30
const BELOW = 0.5
const BELOW_SECONDS = 15
const PROBE_CONNECTIONS = 5
const HPA_TOLERANCE = 0.1
const TARGET = 1

/** The replica count the HPA computes for one replica reading `value` against TARGET. */
export function hpaReplicas (current: number, value: number): number {
  const ratio = value / TARGET
  if (Math.abs(ratio - 1) <= HPA_TOLERANCE) return current
  return Math.max(1, Math.ceil(current * ratio))
}

/**
 * Spawns a command that dies with this test process, however that ends (a timeout kills it without
 * teardown): a watcher kills the command when its stdin, a pipe from here, closes. Teardown closes it.
 */
function guarded (t: Teardown, command: string, args: string[], env: NodeJS.ProcessEnv = process.env): ChildProcess {
  // The watcher reads the pipe through fd 3 (a background job's stdin is /dev/null); the shell exits
  // with the command.
  const script = 'exec 3<&0; "$@" 3<&- & pid=$!; (cat <&3 >/dev/null; kill -9 $pid 2>/dev/null) & wait $pid'
  const child = spawn('sh', ['-c', script, 'sh', command, ...args], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env
  })
  let err = ''
  child.stderr?.on('data', (chunk: Buffer) => { err = (err + chunk.toString()).slice(-2000) })
  // What a command that died on its own said (not the shell's "Killed" once this side closed the pipe).
  child.once('exit', code => { if (code !== 0 && err !== '' && child.stdin?.writableEnded !== true) console.error(err) })
  t.teardown(async () => {
    if (child.exitCode !== null) return
    child.stdin?.end()
    await once(child, 'exit')
  })
  return child
}

async function freePort (): Promise<number> {
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as { port: number }
  server.close()
  await once(server, 'close')
  return port
}

function startExample (t: Teardown): Promise<{ stop: () => void, port: number }> {
  const child = guarded(t, process.execPath, ['--import', 'tsx', fileURLToPath(new URL('../example/server.ts', import.meta.url))], {
    ...process.env,
    PORT: '0',
    CPU_MS: String(CPU_MS),
    DB_MS: '10',
    // Transpiled by tsx, not tap's loader: its coverage would map to the wrong sources.
    _TAPJS_PROCESSINFO_COV_EXCLUDE_: '/./'
  })
  return new Promise((resolve, reject) => {
    let out = ''
    child.stdout?.on('data', (chunk: Buffer) => {
      out += chunk.toString()
      const m = /127\.0\.0\.1:(\d+)/.exec(out)
      if (m !== null) resolve({ stop: () => child.stdin?.end(), port: Number(m[1]) })
    })
    child.once('exit', code => reject(new Error(`example server exited (${String(code)}): ${out}`)))
  })
}

interface Tally { sent: number, ok: number, refused: number, failed: number }

/**
 * Poisson arrivals at `rate` for `seconds` through undici's default Agent (connections opened on
 * demand). `onSecond` receives each second's tally when it ends.
 */
async function openLoop (port: number, rate: number, seconds: number, onSecond?: (tally: Tally) => void): Promise<Tally> {
  const agent = new Agent({ connect: { timeout: 10_000 } })
  const total: Tally = { sent: 0, ok: 0, refused: 0, failed: 0 }
  let second: Tally = { sent: 0, ok: 0, refused: 0, failed: 0 }
  const pending = new Set<Promise<void>>()
  const start = performance.now()
  let next = 0
  let secondEnds = 1000
  const count = (key: keyof Tally): void => { total[key]++; second[key]++ }
  while (next < seconds * 1000) {
    const now = performance.now() - start
    while (next <= now && next < seconds * 1000) {
      count('sent')
      const p: Promise<void> = request(`http://127.0.0.1:${port}/work`, { dispatcher: agent, headersTimeout: 10_000, bodyTimeout: 10_000 })
        .then(async res => {
          await res.body.dump()
          count(res.statusCode === 200 ? 'ok' : res.statusCode === 503 ? 'refused' : 'failed')
        }, () => { count('failed') })
        .finally(() => pending.delete(p))
      pending.add(p)
      next += -Math.log(1 - Math.random()) * 1000 / rate
    }
    if (now >= secondEnds) {
      onSecond?.(second)
      second = { sent: 0, ok: 0, refused: 0, failed: 0 }
      secondEnds += 1000
    }
    await sleep(1)
  }
  await Promise.all(pending)
  onSecond?.(second)
  await agent.close()
  return total
}

/**
 * Served requests per second at a closed loop of PROBE_CONNECTIONS, after a warm-up second: enough to
 * keep the CPU busy (6 ms of CPU per 16 ms request), below the limit the plugin learns (about 8), so
 * that no refusal storm of instant retries eats the CPU it measures.
 */
async function probeCapacity (port: number): Promise<number> {
  const agent = new Agent({ connections: PROBE_CONNECTIONS })
  let ok = 0
  let counting = false
  const until = performance.now() + 4000
  const countFrom = performance.now() + 1000
  await Promise.all(Array.from({ length: PROBE_CONNECTIONS }, async () => {
    while (performance.now() < until) {
      const res = await request(`http://127.0.0.1:${port}/work`, { dispatcher: agent })
      await res.body.dump()
      counting ||= performance.now() >= countFrom
      if (counting && res.statusCode === 200) ok++
    }
  }))
  await agent.close()
  return ok / 3
}

class PrometheusServer {
  constructor (readonly base: string) {}

  async get (path: string): Promise<unknown> {
    const res = await request(this.base + path)
    const body = await res.body.json() as { status: string, data: unknown, error?: string }
    if (body.status !== 'success') throw new Error(`${path}: ${body.error ?? res.statusCode}`)
    return body.data
  }

  /** The value of a one-series instant query now, or undefined when it has none yet. */
  async instant (expr: string): Promise<number | undefined> {
    const data = await this.get(`/api/v1/query?query=${encodeURIComponent(expr)}`) as { result: Array<{ value: [number, string] }> }
    const v = data.result[0]?.value[1]
    return v === undefined ? undefined : Number(v)
  }

  /** Values of a one-series range query, one a second. */
  async range (expr: string, fromSec: number, toSec: number): Promise<number[]> {
    const q = `/api/v1/query_range?query=${encodeURIComponent(expr)}&start=${fromSec}&end=${toSec}&step=1`
    const data = await this.get(q) as { result: Array<{ values: Array<[number, string]> }> }
    return (data.result[0]?.values ?? []).map(([, v]) => Number(v))
  }
}

async function startPrometheus (t: Teardown, target: number): Promise<PrometheusServer> {
  const dir = await mkdtemp(join(tmpdir(), 'admission-prometheus-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  await writeFile(join(dir, 'prometheus.yml'), [
    'global: { scrape_interval: 1s, scrape_timeout: 900ms }',
    'scrape_configs:',
    '  - job_name: api',
    `    static_configs: [{ targets: ['127.0.0.1:${target}'] }]`
  ].join('\n'))
  const port = await freePort()
  const child = guarded(t, 'prometheus', [
    `--config.file=${join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${join(dir, 'data')}`,
    `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn'
  ])
  const prometheus = new PrometheusServer(`http://127.0.0.1:${port}`)
  for (let i = 0; ; i++) {
    try {
      // Ready, and has scraped the target a few times.
      if (await prometheus.instant('count_over_time(up{job="api"}[1m]) >= 3') !== undefined) return prometheus
    } catch {}
    if (i > 300 || child.exitCode !== null) throw new Error('prometheus did not come up or never scraped the target')
    await sleep(100)
  }
}

/** The expression README.md recommends: its ```promql block under "## Autoscaling". */
async function recommendedExpression (): Promise<string> {
  const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8')
  const section = readme.slice(readme.indexOf('## Autoscaling'))
  const m = /```promql\n(.+)\n```/.exec(section)
  if (m === null) throw new Error('README.md recommends no expression')
  return m[1] as string
}

// Probe, 40 s of overload, the fall back, 15 s below capacity.
t.setTimeout(300_000)

t.test('hpaReplicas: ceil of current × value ÷ target, unchanged within the 10 % tolerance', async t => {
  t.equal(hpaReplicas(1, 3.2), 4)
  t.equal(hpaReplicas(1, 2.9), 3)
  t.equal(hpaReplicas(1, 1.08), 1)
  t.equal(hpaReplicas(4, 0.05), 1)
  t.equal(hpaReplicas(3, 1.12), 4)
})

t.test('with a real Prometheus, one HPA step covers a cold start at 3x; no scale-up below capacity; scale back after', { skip: !hasPrometheus && process.env.CI !== 'true' && 'prometheus is not installed', timeout: 280_000 }, async t => {
  const expr = await recommendedExpression()
  t.match(expr, /fastify_admission_saturation_ratio/)

  // Capacity from a throwaway process: the one Prometheus watches must see its first request under load.
  const probe = await startExample(t)
  const probed = await probeCapacity(probe.port)
  probe.stop()
  t.ok(probed > 20, `probed capacity ${probed.toFixed(0)}/s`)

  const api = await startExample(t)
  const prometheus = await startPrometheus(t, api.port)
  const seconds: Tally[] = []
  const loadStart = Date.now() / 1000
  const total = await openLoop(api.port, OVERLOAD * probed, LOAD_SECONDS, tally => seconds.push(tally))
  const loadEnd = Date.now() / 1000
  // Offered and served over the window the expression averages (the load's last 30 s).
  const window = seconds.slice(LOAD_SECONDS - WINDOW_SECONDS, LOAD_SECONDS)
  const offered = window.reduce((sum, s) => sum + s.sent, 0) / WINDOW_SECONDS
  const served = window.reduce((sum, s) => sum + s.ok, 0) / WINDOW_SECONDS
  const needed = offered / served
  await sleep(1500) // the last scrape
  const value = await prometheus.instant(expr)
  t.ok(value !== undefined, 'the expression has a value')
  const replicas = hpaReplicas(1, value ?? 0)
  const during = await prometheus.range(expr, Math.ceil(loadStart), Math.floor(loadEnd))
  const raw = await prometheus.range('fastify_admission_saturation_ratio', Math.ceil(loadStart), Math.floor(loadEnd))
  t.comment(`probed capacity ${probed.toFixed(0)}/s; load ${total.sent} sent, ${total.ok} ok, ${total.refused} refused, ${total.failed} failed`)
  t.comment(`last ${WINDOW_SECONDS} s: offered ${offered.toFixed(0)}/s, served ${served.toFixed(0)}/s, offered ÷ capacity ${needed.toFixed(2)}`)
  t.comment(`expression ${value?.toFixed(2) ?? '-'} -> ${replicas} replicas (±25 %: ${(0.75 * needed).toFixed(2)}..${(1.25 * needed).toFixed(2)})`)
  t.comment(`during the load: expression max ${Math.max(...during).toFixed(2)}, raw gauge max ${Math.max(...raw).toFixed(2)}; raw first 10 s: ${raw.slice(0, 10).map(v => v.toFixed(2)).join(' ')}`)
  t.equal(total.failed, 0, 'no request failed or timed out')
  t.ok(needed >= 1.5, `the load is an overload that needs more than one replica (${needed.toFixed(2)}x)`)
  // The replica counts an HPA computes from a signal within ±25 % of the truth (a count is whole: at
  // 3.1x even the exact signal asks for 4).
  t.ok(Math.abs((value ?? 0) / needed - 1) <= 0.25, `the expression is within 25 % of offered ÷ capacity (${((value ?? 0) / needed).toFixed(2)})`)
  t.ok(replicas >= Math.ceil(0.75 * needed) && replicas <= Math.ceil(1.25 * needed), `one step: ${replicas} replicas for ${needed.toFixed(2)}x`)
  t.ok(during.length >= LOAD_SECONDS - 5, `${during.length} evaluations during the load`)
  t.ok(Math.max(...during) <= 1.25 * needed, 'the expression never overshoots, cold start included')
  t.ok(Math.max(...raw.slice(0, 10)) <= 1.25 * needed, 'nor does the gauge itself in the first 10 s')

  // Load gone: the expression falls until the HPA computes a single replica.
  const stopped = Date.now()
  let back: number | undefined
  while (Date.now() - stopped < 90_000) {
    if (hpaReplicas(1, await prometheus.instant(expr) ?? Infinity) === 1) {
      back = (Date.now() - stopped) / 1000
      break
    }
    await sleep(1000)
  }
  t.comment(`scaled back to 1 replica ${back?.toFixed(0) ?? 'never'} s after the load stopped`)
  t.ok(back !== undefined, 'scales back once the load stops')

  // Below capacity (half of what the process served under load, not the probe, which ran beside other
  // test files): never more than one replica.
  const belowStart = Date.now() / 1000
  const below = await openLoop(api.port, BELOW * served, BELOW_SECONDS)
  await sleep(1500)
  const values = await prometheus.range(expr, Math.ceil(belowStart), Math.floor(Date.now() / 1000))
  t.comment(`at ${BELOW}x: ${below.sent} sent, ${below.refused} refused; expression max ${Math.max(...values).toFixed(2)}`)
  t.ok(values.length >= BELOW_SECONDS - 2, `${values.length} evaluations below capacity`)
  t.ok(values.every(v => hpaReplicas(1, v) === 1), 'no scale-up below capacity')

  // Last, the same process's capacity, warm, at a saturating closed loop: what the replicas added
  // would serve.
  const warm = await probeCapacity(api.port)
  t.comment(`warm capacity of the same process ${warm.toFixed(0)}/s: offered ÷ capacity ${(offered / warm).toFixed(2)}, expression ÷ that ${((value ?? 0) / (offered / warm)).toFixed(2)}`)
})
