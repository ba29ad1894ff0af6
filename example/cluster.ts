// The example API in cluster mode: one worker per core, each running the app of example/server.ts
// with its own fastify-admission, and one metrics endpoint in the primary that sums up the workers
// (README, "Cluster").
//
//   npx tsx example/cluster.ts       # WORKERS (default: one per core), PORT 3000, METRICS_PORT 9464,
//                                    # CPU_MS / DB_MS: cost of /work (1.5 / 20), LOG=1: request logs
//   curl 127.0.0.1:3000/work
//   curl 127.0.0.1:9464/metrics      # the scrape target: every worker's series, aggregated
//   curl 127.0.0.1:9464/workers      # each worker's own figures, JSON (debugging; the cluster test)
//
// Why a limiter per worker: what the plugin protects is an event loop, and every worker has its own.
// A worker's limit, capacity and turn budget describe its loop; one shared limit would admit work on a
// saturated loop because another one idles.
import cluster, { type Worker } from 'node:cluster'
import { once } from 'node:events'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import os from 'node:os'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { AggregatorRegistry, register, type MetricObjectWithValues, type MetricValue } from 'prom-client'
import { build } from './server.js'

const HOST = '127.0.0.1'
const SNAPSHOT = 'fastify-admission-example:snapshot'

export interface ClusterOptions {
  /** worker processes (default: os.availableParallelism()) */
  workers?: number
  /** public port the workers share (default 3000; 0 = any free port) */
  port?: number
  /** port of the primary's metrics server (default 9464; 0 = any free port) */
  metricsPort?: number
  /** CPU time and simulated database time of one /work request, ms (see example/server.ts) */
  cpuMs?: number
  dbMs?: number
}

export interface RunningCluster {
  port: number
  metricsPort: number
  pids: number[]
  /** Stops every worker (each drains, as app.close() does), then the metrics server. */
  close (): Promise<void>
}

export interface WorkerSnapshot {
  pid: number
  metrics: Array<MetricObjectWithValues<MetricValue<string>>>
}

/** In the primary: starts the metrics server, forks the workers and resolves once all of them listen. */
export async function startCluster (options: ClusterOptions = {}): Promise<RunningCluster> {
  // Each gauge of the plugin declares how clusterMetrics() combines the workers (README, "Cluster"):
  //   sum      in-flight, limit, capacity, counters, histograms: every worker holds and serves its share
  //   average  ELU, saturation: round-robin gives every worker an equal share of the connections
  //   max      loop delay p99, Retry-After, shedding, draining: a request waits behind the loop it lands on
  const aggregator = new AggregatorRegistry()
  let workers: Worker[] = []
  const metricsServer = http.createServer((request, response) => {
    const path = new URL(request.url ?? '/', 'http://x').pathname
    if (request.method !== 'GET' || (path !== '/metrics' && path !== '/workers')) return response.writeHead(404).end()
    const body = path === '/metrics'
      ? aggregator.clusterMetrics()
      : Promise.all(workers.filter(worker => worker.isConnected()).map(snapshot)).then(all => JSON.stringify(all))
    body.then(
      text => response.writeHead(200, { 'content-type': path === '/metrics' ? aggregator.contentType : 'application/json' }).end(text),
      (err: Error) => response.writeHead(500, { 'content-type': 'text/plain' }).end(err.message)
    )
  })
  metricsServer.listen(options.metricsPort ?? 9464, HOST)
  await once(metricsServer, 'listening')
  const metricsPort = (metricsServer.address() as AddressInfo).port

  // Workers run this file (not process.argv[1], which is another script when this one is imported),
  // with this process's loader flags (tsx's).
  cluster.setupPrimary({ exec: fileURLToPath(import.meta.url), execArgv: [...process.execArgv] })
  const env: Record<string, string> = { PORT: String(options.port ?? 3000), METRICS_PORT: String(metricsPort) }
  if (options.cpuMs !== undefined) env.CPU_MS = String(options.cpuMs)
  if (options.dbMs !== undefined) env.DB_MS = String(options.dbMs)
  let closing = false
  workers = Array.from({ length: options.workers ?? os.availableParallelism() }, () => cluster.fork(env))
  // A production primary would fork a replacement; this one only says so.
  const onExit = (worker: Worker, code: number | null, signal: string | null): void => {
    if (!closing) console.error(`worker ${worker.process.pid} exited (${signal ?? code}); not replaced`)
  }
  cluster.on('exit', onExit)

  let closed: Promise<void> | undefined
  const close = (): Promise<void> => (closed ??= stop())
  async function stop (): Promise<void> {
    closing = true
    const alive = workers.filter(worker => !worker.isDead())
    const exits = alive.map(worker => once(worker, 'exit'))
    for (const worker of alive) worker.process.kill('SIGTERM')
    // Each worker drains for up to drainTimeout (10 s by default) before its app.close() returns.
    const deadline = setTimeout(() => { for (const worker of alive) worker.process.kill('SIGKILL') }, 15_000)
    await Promise.all(exits)
    clearTimeout(deadline)
    cluster.off('exit', onExit)
    await new Promise(resolve => metricsServer.close(resolve))
  }

  let port: number
  try {
    const addresses = await Promise.all(workers.map(async worker => {
      const [address] = await Promise.race([
        once(worker, 'listening') as Promise<[AddressInfo]>,
        once(worker, 'exit').then(([code]) => { throw new Error(`worker ${worker.process.pid} exited with ${String(code)} before listening`) })
      ])
      return address.port
    }))
    port = addresses[0] as number
  } catch (err) {
    await close()
    throw err
  }
  return { port, metricsPort, pids: workers.map(worker => worker.process.pid as number), close }
}

let nextSnapshot = 0
/** One worker's own registry, read over the IPC channel. */
function snapshot (worker: Worker): Promise<WorkerSnapshot> {
  const id = nextSnapshot++
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      worker.off('message', onMessage)
      reject(new Error(`worker ${worker.process.pid} did not answer`))
    }, 5000)
    function onMessage (message: { type?: string, id?: number, metrics?: WorkerSnapshot['metrics'] }): void {
      if (message.type !== SNAPSHOT || message.id !== id) return
      clearTimeout(timer)
      worker.off('message', onMessage)
      resolve({ pid: worker.process.pid as number, metrics: message.metrics ?? [] })
    }
    worker.on('message', onMessage)
    worker.send({ type: SNAPSHOT, id })
  })
}

/** In a worker: the example app on the shared port. */
async function runWorker (): Promise<void> {
  // Constructing it in a worker installs prom-client's answer to the primary's requests: the worker
  // sends the JSON of prom-client's global registry, where the plugin registers by default.
  // eslint-disable-next-line no-new
  new AggregatorRegistry()
  process.on('message', (message: { type?: string, id?: number }) => {
    if (message.type !== SNAPSHOT) return
    register.getMetricsAsJSON().then(metrics => process.send?.({ type: SNAPSHOT, id: message.id, metrics }), () => {})
  })
  const env = process.env
  const app = await build({
    logger: env.LOG === '1',
    cpuMs: env.CPU_MS === undefined ? undefined : Number(env.CPU_MS),
    dbMs: env.DB_MS === undefined ? undefined : Number(env.DB_MS)
  })
  // The plugin would answer GET /metrics on the public port with the figures of whichever worker the
  // connection landed on, which look like the service's and are not. A route of the app's own at that
  // path turns the plugin's off; it points to the primary, the one scrape target.
  app.get('/metrics', { config: { admission: { exempt: true } } }, async (_request, reply) => reply.code(404).send({
    message: `one worker's metrics are not the service's: scrape the cluster primary at http://${HOST}:${env.METRICS_PORT}/metrics`
  }))
  await app.listen({ host: HOST, port: Number(env.PORT) })
  let stopping = false
  const stop = (): void => {
    if (stopping) return
    stopping = true
    app.close().then(() => process.exit(0), () => process.exit(1))
  }
  process.once('SIGTERM', stop)
  process.once('SIGINT', stop) // Ctrl-C reaches every process of the group
  // If the primary dies, Node makes its workers exit at once (the IPC channel closes).
}

function numberFromEnv (name: string): number | undefined {
  const value = process.env[name]
  return value === undefined || value === '' ? undefined : Number(value)
}

async function main (): Promise<void> {
  const starting = startCluster({
    workers: numberFromEnv('WORKERS'),
    port: numberFromEnv('PORT'),
    metricsPort: numberFromEnv('METRICS_PORT'),
    cpuMs: numberFromEnv('CPU_MS'),
    dbMs: numberFromEnv('DB_MS')
  })
  // Handled from the start: a signal during boot stops the workers once they are up.
  const stop = (): void => {
    starting.then(running => running.close()).then(() => process.exit(0), () => process.exit(1))
  }
  process.once('SIGINT', stop)
  process.once('SIGTERM', stop)
  const running = await starting
  // One JSON line: readable, and what test/cluster.test.ts waits for.
  console.log(JSON.stringify({
    url: `http://${HOST}:${running.port}`, metrics: `http://${HOST}:${running.metricsPort}/metrics`, workers: running.pids
  }))
}

if (cluster.isWorker) {
  runWorker().catch((err: unknown) => {
    console.error(err)
    process.exit(1)
  })
} else if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    console.error(err)
    process.exit(1)
  })
}
