// Permit accounting under faults, property style: a seeded random mix of requests (successes, errors,
// aborts at every hook stage, streams, SSE, websockets, timeouts, keep-alive, pipelining) over real
// sockets; once everything is quiet, nothing is in flight and every request that reached routing was
// counted exactly once. Replay a failure with ACCOUNTING_SEED=<seed>; ACCOUNTING_REQUESTS sets the size,
// ACCOUNTING_KINDS=a,b narrows the mix to find which kind of request breaks it.

import t, { type Test } from 'tap'
import { randomBytes } from 'node:crypto'
import { performance } from 'node:perf_hooks'
import { Readable } from 'node:stream'
import Fastify, { type FastifyReply, type FastifyRequest } from 'fastify'
import websocket from '@fastify/websocket'
import { Registry } from 'prom-client'
import { Agent, request } from 'undici'
import admission, { kAdmissionController, type AdmissionOptions } from '../lib/index.js'
import { saturate, snapshot } from './helpers/app.js'
import {
  RawClient, closeWebSocket, converse, httpText, openConnections, openWebSocket, portOf, sleep, until
} from './helpers/sockets.js'

const seed = Number(process.env.ACCOUNTING_SEED ?? Math.floor(Math.random() * 2 ** 32)) >>> 0
const REQUESTS = Number(process.env.ACCOUNTING_REQUESTS ?? 2000)
const CONCURRENCY = 32
const SAMPLE_INTERVAL = 20
const STAGES = ['hook', 'preHandler', 'handler'] as const
type Rand = () => number

/** mulberry32: uniform in [0, 1), fully determined by the seed. */
function prng (a: number): Rand {
  return () => {
    a = (a + 0x6d2b79f5) | 0
    let x = Math.imul(a ^ (a >>> 15), 1 | a)
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}
const int = (rand: Rand, n: number): number => Math.floor(rand() * n)
const sum = (record: object): number => Object.values(record).reduce((a: number, b: number) => a + b, 0)
const ms = (req: FastifyRequest, name: string): number => Number(req.headers[name] ?? 0)

/** The app under test; `seen` is what its own hooks and handlers saw. Delays and sizes come in headers. */
async function serve (t: Test, opts: AdmissionOptions) {
  // Node 20 checks requestTimeout only every connectionsCheckingInterval, and only with headersTimeout <= it.
  const http = { connectionsCheckingInterval: 50, headersTimeout: 300 }
  const app = Fastify({ requestTimeout: 300, connectionTimeout: 600, http })
  t.teardown(() => app.close())
  const seen = { routed: 0, busy: 0, enforce: false, abortedIn: { hook: 0, preHandler: 0, handler: 0 } }
  const gone = new WeakSet<FastifyRequest>()
  // Await like real work; note the stage if the client had left by its end.
  async function hold (req: FastifyRequest, stage: typeof STAGES[number], wait: number): Promise<void> {
    seen.busy++
    await sleep(wait)
    seen.busy--
    if (req.socket.destroyed && !gone.has(req)) { gone.add(req); seen.abortedIn[stage]++ }
  }
  // In front of the plugin: the count of what reached routing (the plugin's metrics path is no route and
  // is answered uncounted, like an exempt route), then an app hook that awaits like auth or sessions.
  app.addHook('onRequest', function countRouted (req, _reply, done) {
    if (req.routeOptions.config.admission?.exempt !== true && req.url !== '/metrics') seen.routed++
    done()
  })
  app.addHook('onRequest', async function appHook (req) {
    if (ms(req, 'x-hook-ms') > 0) await hold(req, 'hook', ms(req, 'x-hook-ms'))
    // Limited runs: the limit binds at every decision, whatever the sampler measured meanwhile.
    if (seen.enforce) saturate(controller, performance.now())
  })
  await app.register(admission, { registry: new Registry(), startupGrace: 0, sampleInterval: SAMPLE_INTERVAL, ...opts })
  await app.register(websocket)
  const controller = app[kAdmissionController]

  app.route({
    method: ['GET', 'POST'],
    url: '/work',
    bodyLimit: 256,
    preHandler: async function slowPreHandler (req) {
      if (ms(req, 'x-pre-ms') > 0) await hold(req, 'preHandler', ms(req, 'x-pre-ms'))
    },
    handler: function work (req) {
      if (req.headers['x-fail'] === 'throw') throw new Error('handler threw')
      return hold(req, 'handler', ms(req, 'x-handler-ms')).then(() => {
        if (req.headers['x-fail'] === 'reject') throw new Error('handler rejected')
        return { ok: true }
      })
    }
  })
  app.get('/stream', function streamed (req, reply) {
    let i = 0
    let timer: NodeJS.Timeout | undefined
    seen.busy++
    reply.type('text/plain').send(new Readable({
      read () { timer = setTimeout(() => this.push(++i <= ms(req, 'x-chunks') ? `chunk ${i}\n` : null), 5) },
      destroy (err, cb) { clearTimeout(timer); seen.busy--; cb(err) }
    }))
  })
  // Hijacked, written to reply.raw: a few parts, or server-sent events until the client leaves.
  function drip (req: FastifyRequest, reply: FastifyReply, type: string, n: number): void {
    reply.hijack()
    const { socket } = req
    if (socket.destroyed) return
    reply.raw.writeHead(200, { 'content-type': type, 'cache-control': 'no-cache' })
    seen.busy++
    let i = 0
    const timer = setInterval(() => { ++i <= n ? reply.raw.write(`data: ${i}\n\n`) : stop() }, 5)
    function stop (): void {
      clearInterval(timer)
      socket.off('close', stop)
      seen.busy--
      reply.raw.end()
    }
    socket.once('close', stop)
  }
  app.get('/hijack', (req, reply) => drip(req, reply, 'text/plain', ms(req, 'x-chunks')))
  app.get('/sse', (req, reply) => drip(req, reply, 'text/event-stream', Infinity))
  app.get('/health', { config: { admission: { exempt: true } } }, async () => ({ ok: true }))
  app.get('/ws', { websocket: true }, function echo (socket) {
    socket.on('message', data => socket.send(data))
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, controller, port: portOf(app), seen }
}

interface Client {
  /** The kind of the job this client runs, for messages. */
  kind: string
  port: number
  agent: Agent
  /** A 503 is an acceptable answer to any request that is not exempt. */
  limited: boolean
  /** Client-side outcomes that were not the expected ones. */
  wrong: string[]
}
type Run = (c: Client, rand: Rand, n: number) => Promise<void>
type Headers = Record<string, string>

function delays (rand: Rand, max: number): Headers {
  const draw = (): string => String(int(rand, max))
  return { 'x-hook-ms': draw(), 'x-pre-ms': draw(), 'x-handler-ms': draw() }
}
const okStatus = (c: Client, status: number): boolean => status === 200 || status === 404 || (c.limited && status === 503)

/** An ordinary request through undici (a keep-alive pool), checked against the expected status. */
async function fetched (c: Client, path: string, want: number, init: {
  method?: 'GET' | 'POST', headers?: Headers, body?: string
} = {}): Promise<void> {
  try {
    const res = await request(`http://127.0.0.1:${c.port}${path}`, { dispatcher: c.agent, ...init })
    await res.body.text()
    const refused = c.limited && res.statusCode === 503 && path !== '/metrics' && path !== '/health'
    if (res.statusCode !== want && !refused) c.wrong.push(`${c.kind}: status ${res.statusCode}`)
  } catch (err) {
    c.wrong.push(`${c.kind}: ${(err as Error).message}`)
  }
}

/** A raw request whose connection the server must close (error, timeout, Connection: close). */
async function closedByServer (c: Client, text: string, want?: number): Promise<void> {
  const client = new RawClient(c.port).send(text)
  // A refusal keeps the connection alive (the request itself was fine): the client leaves then.
  await client.wait(() => client.isClosed || (c.limited && client.statuses()[0] === 503), 3000)
  const status = client.statuses()[0]
  if (c.limited && status === 503) return await client.destroy()
  if (!await client.closedWithin(0)) c.wrong.push(`${c.kind}: connection left open`)
  if (want !== undefined && status !== want) c.wrong.push(`${c.kind}: status ${status}`)
}

/** Requests on one connection (see converse); it dies early 40 % of the time. */
async function connection (c: Client, r: Rand, texts: string[], pipelined: boolean): Promise<void> {
  const leaveAt = r() < 0.4 ? int(r, texts.length) : -1
  const leaveMs = int(r, pipelined ? 30 : 10)
  const { statuses, closedByServer } = await converse(c.port, texts, { pipelined, leaveAt, leaveMs })
  if (leaveAt >= 0) return
  if (!closedByServer) c.wrong.push(`${c.kind}: connection left open`)
  if (statuses.length !== texts.length || !statuses.every(s => okStatus(c, s))) c.wrong.push(`${c.kind}: ${statuses}`)
}

function requests (r: Rand, n: number, paths: string[], max: number): string[] {
  return Array.from({ length: n }, (_, i) => httpText('GET', paths[int(r, paths.length)] as string,
    { ...delays(r, max), 'x-chunks': '3', ...(i === n - 1 ? { connection: 'close' } : {}) }))
}

/** Send `text` on a new connection, leave after `ms`. */
async function leave (c: Client, text: string, ms: number): Promise<void> {
  const client = new RawClient(c.port).send(text)
  await sleep(ms)
  await client.destroy()
}

const json = { 'content-type': 'application/json' }
const chunks = (r: Rand): Headers => ({ 'x-chunks': String(1 + int(r, 4)) })
const MALFORMED = [
  'GET /work HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n',
  'NOT-A-METHOD /work HTTP/1.1\r\n\r\n',
  'GET /work HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n'
]

const KINDS: Record<string, { weight: number, multi?: true, run: Run }> = {
  ok: { weight: 10, run: (c, r) => fetched(c, '/work', 200, { headers: delays(r, 6) }) },
  throws: { weight: 3, run: (c, r) => fetched(c, '/work', 500, { headers: { ...delays(r, 4), 'x-fail': 'throw' } }) },
  rejects: { weight: 3, run: (c, r) => fetched(c, '/work', 500, { headers: { ...delays(r, 4), 'x-fail': 'reject' } }) },
  notFound: { weight: 3, run: (c, r) => fetched(c, `/missing/${int(r, 100)}`, 404) },
  exempt: { weight: 2, run: (c, r) => fetched(c, r() < 0.5 ? '/metrics' : '/health', 200) },
  badJson: { weight: 2, run: c => fetched(c, '/work', 400, { method: 'POST', headers: json, body: '{"a":' }) },
  tooBig: { weight: 2, run: c => fetched(c, '/work', 413, { method: 'POST', headers: json, body: `"${'x'.repeat(999)}"` }) },
  hijack: { weight: 3, run: (c, r) => fetched(c, '/hijack', 200, { headers: chunks(r) }) },
  stream: { weight: 3, run: (c, r) => fetched(c, '/stream', 200, { headers: chunks(r) }) },
  oneShot: { weight: 3, run: (c, r) => closedByServer(c, httpText('GET', '/work', { ...delays(r, 4), connection: 'close' }), 200) },
  malformed: { weight: 1, run: (c, r) => closedByServer(c, MALFORMED[int(r, MALFORMED.length)] as string, 400) },
  // The body never completes: requestTimeout (300 ms) answers 408 and closes.
  bodyStalls: {
    weight: 0.5,
    run: c => closedByServer(c, httpText('POST', '/work', { ...json, 'content-length': '64' }) + '{"a":', 408)
  },
  // The handler outlives connectionTimeout (600 ms): the idle socket is destroyed under it.
  idleTimeout: { weight: 0.5, run: c => closedByServer(c, httpText('GET', '/work', { 'x-handler-ms': '800' })) },
  // The client leaves at a random moment: before, during or after the app hook, preHandler or handler.
  abort: {
    weight: 10,
    run: (c, r) => {
      const headers = delays(r, 25)
      const wait = int(r, sum(Object.values(headers).map(Number)) + 10)
      return leave(c, httpText(r() < 0.8 ? 'GET' : 'POST', '/work', headers), wait)
    }
  },
  // Headers never complete: the request never reaches Fastify.
  partialHeaders: {
    weight: 2,
    run: (c, r) => {
      const text = httpText('GET', '/work', delays(r, 5))
      return leave(c, text.slice(0, 1 + int(r, text.length - 2)), int(r, 10))
    }
  },
  streamAbort: {
    weight: 3,
    run: (c, r) => leave(c, httpText('GET', r() < 0.5 ? '/stream' : '/hijack', { 'x-chunks': '20', 'x-hook-ms': String(int(r, 5)) }), int(r, 60))
  },
  sse: {
    weight: 2,
    async run (c, r) {
      const client = new RawClient(c.port).send(httpText('GET', '/sse', { accept: 'text/event-stream', ...delays(r, 4) }))
      await client.wait(() => client.received.includes('data:') || client.statuses().some(s => s !== 200), 1000)
      await sleep(int(r, 40))
      await client.destroy()
    }
  },
  ws: {
    weight: 3,
    async run (c, r) {
      if (r() < 0.25) { // The client leaves during the upgrade.
        const key = randomBytes(16).toString('base64')
        const headers = { connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': key }
        return await leave(c, httpText('GET', '/ws', { ...headers, 'x-hook-ms': String(int(r, 10)) }), int(r, 15))
      }
      const ws = await openWebSocket(`ws://127.0.0.1:${c.port}/ws`)
      if (ws === undefined) {
        if (!c.limited) c.wrong.push('ws: upgrade failed')
        return
      }
      const echo = new Promise(resolve => ws.once('message', resolve))
      ws.send('ping')
      if (await Promise.race([echo.then(() => true), sleep(2000)]) !== true) c.wrong.push('ws: no echo')
      await sleep(int(r, 30))
      await closeWebSocket(ws, r() < 0.5)
    }
  },
  // Several requests on one connection, each after the previous answer.
  keepAlive: { weight: 3, multi: true, run: (c, r, n) => connection(c, r, requests(r, n, ['/work', '/missing'], 4), false) },
  // Several requests written at once: a connection that dies leaves responses queued.
  pipeline: {
    weight: 4,
    multi: true,
    run: (c, r, n) => connection(c, r, requests(r, n, ['/work', '/missing', '/stream', '/hijack'], 20), true)
  }
}

interface Job { kind: string, n: number, seed: number }
const MIX = (process.env.ACCOUNTING_KINDS ?? Object.keys(KINDS).join()).split(',').filter(k => k in KINDS)

/** One job of every kind, then random ones until `total` requests are planned. */
function plan (rand: Rand, total: number): Job[] {
  const weights = MIX.reduce((a, k) => a + (KINDS[k]?.weight ?? 0), 0)
  const jobs: Job[] = []
  const add = (kind: string): number => {
    const n = KINDS[kind]?.multi === true ? 2 + int(rand, 4) : 1
    jobs.push({ kind, n, seed: int(rand, 2 ** 32) })
    return n
  }
  let count = MIX.reduce((a, kind) => a + add(kind), 0)
  while (count < total) {
    let x = rand() * weights
    count += add(MIX.find(k => (x -= KINDS[k]?.weight ?? 0) < 0) ?? 'ok')
  }
  return jobs
}

/** Run the jobs `CONCURRENCY` at a time, in plan order; returns how many of each kind completed. */
async function load (c: Client, jobs: Job[]): Promise<Record<string, number>> {
  const done: Record<string, number> = {}
  let next = 0
  async function worker (): Promise<void> {
    for (let job = jobs[next++]; job !== undefined; job = jobs[next++]) {
      const { kind } = job
      const run = KINDS[kind]?.run(Object.assign({}, c, { kind }), prng(job.seed), job.n)
      await run?.catch((err: Error) => { c.wrong.push(`${kind}: ${err.message}`) })
      done[kind] = (done[kind] ?? 0) + 1
    }
  }
  await Promise.all(Array.from({ length: CONCURRENCY }, worker))
  return done
}

/** Long-lived responses opened one after another, two sample intervals apart; in-flight once all are open. */
async function holdOpen (c: Client, inflight: () => number): Promise<number> {
  const closers: Array<() => Promise<void>> = []
  for (const path of ['/sse', '/stream', '/hijack', '/ws', '/sse', '/stream', '/hijack', '/ws']) {
    if (path === '/ws') {
      const ws = await openWebSocket(`ws://127.0.0.1:${c.port}/ws`)
      if (ws === undefined) c.wrong.push('holdOpen /ws: refused')
      else closers.push(() => closeWebSocket(ws, false))
    } else {
      const client = new RawClient(c.port).send(httpText('GET', path, { 'x-chunks': '1000000' }))
      if (!await client.wait(() => /\r\n\r\n./s.test(client.received), 2000) || client.statuses()[0] !== 200) {
        c.wrong.push(`holdOpen ${path}: ${client.statuses()}`)
      }
      closers.push(() => client.destroy())
    }
    await sleep(2 * SAMPLE_INTERVAL)
  }
  const held = inflight()
  await Promise.all(closers.map(close => close()))
  return held
}

async function accounting (t: Test, opts: AdmissionOptions, limited: boolean, total: number): Promise<void> {
  const server = await serve(t, opts)
  const { app, controller, seen } = server
  if (limited) {
    saturate(controller, performance.now())
    seen.enforce = true
  }
  const agent = new Agent({ keepAliveMaxTimeout: 300 })
  const c: Client = { kind: '', port: server.port, agent, limited, wrong: [] }
  const inflight = (): number => snapshot(app).inflight
  let [min, max] = [0, 0]
  const probe = setInterval(() => { [min, max] = [Math.min(min, inflight()), Math.max(max, inflight())] }, 2)
  // Quiet: every socket closed, every handler, timer and stream done; then late releases get 5 windows.
  const quiet = async (): Promise<boolean> => {
    const ok = await until(async () => seen.busy === 0 && await openConnections(app) === 0, 5000)
    await sleep(5 * SAMPLE_INTERVAL)
    return ok
  }
  const started = performance.now()
  const done = await load(c, plan(prng(seed + (limited ? 1 : 0)), total))
  await agent.close()
  const quietAfterLoad = await quiet()
  const settled = inflight()
  const whileOpen = await holdOpen(c, inflight) - settled
  const quietAtEnd = await quiet()
  clearInterval(probe)
  const { totals } = controller
  const counted = totals.admitted + sum(totals.rejected) + sum(totals.observed)
  t.comment(`seed=${seed}: ${seen.routed} routed in ${Math.round(performance.now() - started)} ms, ` +
    `totals ${JSON.stringify(totals)}, aborted in ${JSON.stringify(seen.abortedIn)}`)

  const open = `busy ${seen.busy}, sockets ${await openConnections(app)}`
  t.ok(quietAfterLoad && quietAtEnd, `every socket closed and every handler and stream done (${open}), seed=${seed}`)
  t.equal(settled, 0, `nothing in flight once the random load is over, seed=${seed}`)
  t.equal(whileOpen, 0, `open SSE, streams, hijacked responses and websockets hold no permit, seed=${seed}`)
  t.equal(inflight(), 0, `nothing in flight at the end, seed=${seed}`)
  t.equal(counted, seen.routed, `every routed request counted exactly once, seed=${seed}`)
  t.ok(min >= 0, `in-flight never negative (min ${min}), seed=${seed}`)
  t.same(c.wrong, [], `clients got the expected answers, seed=${seed}`)
  t.same(MIX.filter(k => done[k] === undefined), [], `every kind ran, seed=${seed}`)
  if (limited) {
    t.ok(max <= 2, `in-flight never over the limit (max ${max}), seed=${seed}`)
    t.ok(totals.rejected.limit > 0, `the limit refused requests, seed=${seed}`)
  } else if (MIX.includes('abort')) {
    t.same(STAGES.filter(s => seen.abortedIn[s] === 0), [], `clients left during every stage, seed=${seed}`)
  }
}

t.test('permits are given back exactly once under a random mix of faults', async t => {
  // A floor far over the concurrency: the adaptive limit never binds, every request goes the whole way.
  // The test's own clients share the loop with the server: the turn budget would (rightly) shed once
  // they keep it busy, so the unlimited variant keeps it out of reach.
  await accounting(t, { minLimit: 1000, turnBudget: 1000, congestionInterval: 10_000 }, false, REQUESTS)
})

t.test('the same holds while a limit of 2 binds and refusals mix in', async t => {
  await accounting(t, { minLimit: 2, maxLimit: 2, initialLimit: 2 }, true, Math.ceil(REQUESTS / 2))
})
