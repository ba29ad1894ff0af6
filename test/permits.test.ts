import t from 'tap'
import net from 'node:net'
import { Readable } from 'node:stream'
import Fastify from 'fastify'
import websocket from '@fastify/websocket'
import WebSocket from 'ws'
import { Registry } from 'prom-client'
import admission, { kAdmissionController } from '../lib/index.js'
import { build, gate, saturate, snapshot, turns } from './helpers/app.js'
import { portOf, sendRaw, waitFor } from './helpers/sockets.js'

t.test('regression: a client that left while an earlier async onRequest hook awaited leaked its permit', async t => {
  const app = Fastify()
  t.teardown(() => app.close())
  const auth = gate()
  let authed = 0
  // The app's own hook comes first (added before the plugin): admission runs after it.
  app.addHook('onRequest', async function appAuth () { await auth.wait; authed++ })
  await app.register(admission, { registry: new Registry(), startupGrace: 0, sampleInterval: 10_000 })
  app.get('/', async () => 'ok')
  await app.listen({ port: 0, host: '127.0.0.1' })
  const sockets = Array.from({ length: 10 }, () => sendRaw(portOf(app), 'GET / HTTP/1.1\r\nHost: x\r\n\r\n'))
  await turns(20)
  for (const s of sockets) s.destroy()
  await new Promise(resolve => setTimeout(resolve, 50))
  auth.open()
  await waitFor(() => authed === 10, 'the auth hook to finish for all 10')
  await turns(20)
  t.equal(snapshot(app).inflight, 0, 'no permit held for clients already gone')
  t.equal(app[kAdmissionController].totals.admitted, 10, 'each counted once')
})

t.test('regression: pipelined requests whose connection died leaked their permits', async t => {
  const { app } = await build(t, { sampleInterval: 20 })
  const g = gate()
  let started = 0
  app.get('/slow', async () => { started++; await g.wait; return 'done' })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const s = sendRaw(portOf(app), 'GET /slow HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(5))
  await waitFor(() => started === 5, 'all 5 pipelined requests in their handlers')
  t.equal(snapshot(app).inflight, 5)
  s.destroy()
  await waitFor(() => snapshot(app).inflight === 0, 'the 4 queued responses released after the connection died')
  g.open()
  await turns(20)
  t.equal(snapshot(app).inflight, 0, 'and nothing released twice when the handlers finish')
})

t.test('regression: a finished pipelined response still queued behind a slower one kept its permit when the connection died', async t => {
  const { app } = await build(t, { sampleInterval: 20 })
  const g = gate()
  let fast = 0
  app.get('/slow', async () => { await g.wait; return 'slow' })
  app.get('/fast', async () => { fast++; return 'fast' })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const s = sendRaw(portOf(app), 'GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /fast HTTP/1.1\r\nHost: x\r\n\r\n')
  await waitFor(() => fast === 1 && snapshot(app).inflight === 2, '/fast answered (queued) while /slow runs')
  s.destroy()
  await waitFor(() => snapshot(app).inflight === 0, 'both released after the connection died')
  g.open()
  await turns(20)
  t.equal(snapshot(app).inflight, 0)
})

t.test('regression: 60 open SSE streams held 60 permits and a busy spell then refused every ordinary request', async t => {
  // A process whose requests are all streams learns no capacity; ten connections at once on its cold
  // code can be a cold surge (README, "Loop turns"), which this test is not about: its span is made 1 s.
  const { app, controller } = await build(t, { sampleInterval: 20, congestionInterval: 10_000 })
  app.get('/events', (_request, reply) => {
    reply.hijack()
    reply.raw.writeHead(200, { 'content-type': 'text/event-stream' })
    reply.raw.write('data: hello\n\n')
  })
  app.get('/', async () => 'ok')
  await app.listen({ port: 0, host: '127.0.0.1' })
  const port = portOf(app)
  let events = 0
  const streams: net.Socket[] = []
  // In batches of 10 (a burst of 60 at once could meet the limit of 50 on a busy loop and be refused,
  // which is the plugin doing its job): 60 streams stay open, more than the default limit.
  for (let batch = 1; batch <= 6; batch++) {
    for (let i = 0; i < 10; i++) {
      const s = sendRaw(port, 'GET /events HTTP/1.1\r\nHost: x\r\n\r\n')
      s.on('data', (d: Buffer) => { if (d.toString().includes('data: hello')) events++ })
      streams.push(s)
    }
    await waitFor(() => events === batch * 10, `${batch * 10} streams established`)
    await waitFor(() => snapshot(app).inflight === 0, 'established streams no longer count as work in progress')
  }
  t.equal(snapshot(app).limit, 50, 'more open streams than the default limit')
  t.equal(controller.totals.admitted, 60)
  saturate(controller)
  const res = await fetch(`http://127.0.0.1:${port}/`)
  t.equal(res.status, 200, 'an ordinary request is admitted during a busy spell')
  for (const s of streams) s.destroy()
  await turns(20)
  t.equal(snapshot(app).inflight, 0, 'closing the streams releases nothing twice')
})

t.test('a streamed body holds its permit only until its headers are out', async t => {
  const { app } = await build(t, { sampleInterval: 20 })
  let stream!: Readable
  app.get('/stream', async (_request, reply) => {
    stream = new Readable({ read () {} })
    stream.push('first chunk\n')
    return reply.type('text/plain').send(stream)
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const s = sendRaw(portOf(app), 'GET /stream HTTP/1.1\r\nHost: x\r\n\r\n')
  let body = ''
  s.on('data', (d: Buffer) => { body += d.toString() })
  await waitFor(() => body.includes('first chunk'), 'the first chunk')
  await waitFor(() => snapshot(app).inflight === 0, 'the streaming response released')
  stream.push(null)
  await waitFor(() => body.includes('\r\n0\r\n'), 'the end of the chunked body')
  s.destroy()
  await turns(20)
  t.equal(snapshot(app).inflight, 0)
})

t.test('a websocket upgrade holds no permit once established, and is counted once', async t => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(admission, { registry: new Registry(), startupGrace: 0, sampleInterval: 20 })
  await app.register(websocket)
  app.get('/ws', { websocket: true }, socket => {
    socket.on('message', (m: Buffer) => socket.send(`echo ${m.toString()}`))
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const ws = new WebSocket(`ws://127.0.0.1:${portOf(app)}/ws`)
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
  ws.send('hi')
  const [reply] = await new Promise<[Buffer]>(resolve => ws.once('message', (...args: [Buffer]) => resolve(args)))
  t.equal(reply.toString(), 'echo hi')
  await waitFor(() => snapshot(app).inflight === 0, 'the established websocket released')
  t.equal(app[kAdmissionController].totals.admitted, 1)
  ws.close()
})

t.test('regression: a refused websocket upgrade left its socket open and app.close() hung', async t => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(admission, { registry: new Registry(), startupGrace: 0, sampleInterval: 10_000, minLimit: 1, maxLimit: 1, initialLimit: 1 })
  await app.register(websocket)
  const g = gate()
  app.get('/slow', async () => { await g.wait; return 'ok' })
  app.get('/ws', { websocket: true }, socket => { socket.close() })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const port = portOf(app)
  saturate(app[kAdmissionController])
  const slow = fetch(`http://127.0.0.1:${port}/slow`)
  await waitFor(() => snapshot(app).inflight === 1, 'the only permit taken')
  const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`)
  const status = await new Promise<number>(resolve => {
    ws.once('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0))
    ws.once('error', () => resolve(-1))
  })
  t.equal(status, 503)
  t.equal(app[kAdmissionController].totals.rejected.limit, 1)
  g.open()
  await slow
  await app.close()
  t.pass('close() completes with the refused client still connected')
})

t.test('regression: an Upgrade header let an ordinary request skip the count', async t => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(admission, { registry: new Registry(), startupGrace: 0, sampleInterval: 20 })
  const g = gate()
  let running = 0
  app.get('/plain', async () => { running++; await g.wait; return 'plain' })
  await app.register(websocket)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const sockets = Array.from({ length: 5 }, () => sendRaw(portOf(app),
    'GET /plain HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n'))
  await waitFor(() => running === 5, 'five handlers running')
  await new Promise(resolve => setTimeout(resolve, 60))
  t.equal(snapshot(app).inflight, 5, 'each holds its permit while its handler runs')
  g.open()
  await waitFor(() => snapshot(app).inflight === 0, 'released when answered')
  for (const s of sockets) s.destroy()
})
