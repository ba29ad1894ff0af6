// A small API protected by fastify-admission with its default options.
//
//   npm start                 # listens on 127.0.0.1:3000 (PORT to change; CPU_MS, DB_MS: cost of /work;
//                             # ADMISSION_MODE=observe: count would-be refusals, refuse nothing)
//   curl 127.0.0.1:3000/work  # ~1.5 ms of CPU + a ~20 ms simulated database call
//   curl 127.0.0.1:3000/metrics
//
// Under overload /work answers 503 with Retry-After; /health and /metrics are exempt.
import { createHash } from 'node:crypto'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import { pathToFileURL } from 'node:url'
import Fastify, { type FastifyInstance } from 'fastify'
import admission from '../lib/index.js'

interface Order { id: number, customer: string, total: number }

/** Real CPU work: build, sort and digest a list of orders (a stand-in for rendering a report). */
export function summarizeOrders (seed: number, count: number): { top: Order[], digest: string } {
  let x = seed >>> 0 || 1
  const orders: Order[] = []
  for (let i = 0; i < count; i++) {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5; x >>>= 0
    orders.push({ id: i, customer: `c${x % 997}`, total: (x % 100000) / 100 })
  }
  orders.sort((a, b) => b.total - a.total || a.id - b.id)
  const digest = createHash('sha256').update(JSON.stringify(orders)).digest('hex')
  return { top: orders.slice(0, 3), digest }
}

/** Picks the list size that takes about `targetMs` on this machine, so /work costs the same everywhere. */
export function calibrate (targetMs: number): number {
  // warm the JIT first: cold runs are several times slower and would make the list far too short
  const warmUntil = performance.now() + 150
  for (let k = 0; performance.now() < warmUntil; k++) summarizeOrders(k + 1, 1000)
  let count = 1000
  for (let round = 0; round < 10; round++) {
    const start = performance.now()
    for (let k = 0; k < 10; k++) summarizeOrders(k + 7, count)
    const each = (performance.now() - start) / 10
    const next = Math.max(20, Math.min(200000, Math.round(count * targetMs / Math.max(each, 0.001))))
    const stable = Math.abs(next - count) < count * 0.05
    count = next
    if (stable && round >= 2) break
  }
  return count
}

const calibrations = new Map<number, number>()
function calibrated (targetMs: number): number {
  let count = calibrations.get(targetMs)
  if (count === undefined) {
    count = calibrate(targetMs)
    calibrations.set(targetMs, count)
  }
  return count
}

export interface BuildOptions {
  logger?: boolean
  /** CPU time of one /work request in ms (default 1.5) */
  cpuMs?: number
  /** simulated database latency in ms (default 20) */
  dbMs?: number
  /** the plugin's mode (default enforce); the demo measures capacity in observe mode, nothing refused */
  mode?: 'enforce' | 'observe'
}

export async function build (options: BuildOptions = {}): Promise<FastifyInstance> {
  const app = Fastify({ logger: options.logger ?? false })
  const dbMs = options.dbMs ?? 20
  // two halves: before and after the database call
  const count = calibrated((options.cpuMs ?? 1.5) / 2)

  await app.register(admission, options.mode === undefined ? {} : { mode: options.mode })

  app.get('/health', { config: { admission: { exempt: true } } }, async () => ({ status: 'ok' }))

  let seq = 0
  app.get('/work', async function work () {
    const id = ++seq
    const before = summarizeOrders(id, count)
    await sleep(dbMs) // the "database"
    const after = summarizeOrders(id + 1, count)
    return { id, best: before.top[0], digest: after.digest.slice(0, 16) }
  })

  return app
}

async function main (): Promise<void> {
  const env = process.env
  const app = await build({
    logger: env.LOG === '1',
    cpuMs: env.CPU_MS === undefined ? undefined : Number(env.CPU_MS),
    dbMs: env.DB_MS === undefined ? undefined : Number(env.DB_MS),
    mode: env.ADMISSION_MODE === 'observe' ? 'observe' : undefined
  })
  await app.listen({ host: '127.0.0.1', port: Number(env.PORT ?? 3000) })
  const { port } = app.server.address() as { port: number }
  console.log(`listening on http://127.0.0.1:${port}  (GET /work, /health, /metrics)`)
  const close = (): void => {
    app.close().then(() => process.exit(0), () => process.exit(1))
  }
  process.once('SIGINT', close)
  process.once('SIGTERM', close)
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    console.error(err)
    process.exit(1)
  })
}
