import t from 'tap'
import http2 from 'node:http2'
import net from 'node:net'
import type { AddressInfo } from 'node:net'
import Fastify from 'fastify'
import { Registry } from 'prom-client'
import admission, { kAdmissionController, type AdmissionOptions } from '../lib/index.js'
import { gate, snapshot } from './helpers/app.js'
import { waitFor } from './helpers/sockets.js'

/** A raw keep-alive connection that collects what the server writes. */
function connect (port: number): { socket: net.Socket, received: () => string, closed: () => boolean } {
  const socket = net.connect(port, '127.0.0.1')
  let data = ''
  let closed = false
  socket.on('data', (d: Buffer) => { data += d.toString() })
  socket.on('close', () => { closed = true })
  socket.on('error', () => {})
  return { socket, received: () => data, closed: () => closed }
}

async function server (t: { teardown: (fn: () => unknown) => void }, opts: AdmissionOptions = {}) {
  const registry = new Registry()
  const app = Fastify()
  await app.register(admission, { registry, startupGrace: 0, sampleInterval: 10_000, ...opts })
  const g = gate()
  app.get('/slow', async () => { await g.wait; return 'finished' })
  app.get('/fast', async () => 'fast')
  await app.listen({ port: 0, host: '127.0.0.1' })
  const port = (app.server.address() as AddressInfo).port
  t.teardown(() => { g.open(); return app.close() })
  return { app, registry, port, open: g.open }
}

t.test('close: in-flight requests finish, told to close their connection; draining shown meanwhile', async t => {
  const { app, registry, port, open } = await server(t)
  const first = connect(port)
  const second = connect(port)
  first.socket.write('GET /slow HTTP/1.1\r\nHost: x\r\n\r\n')
  second.socket.write('GET /slow HTTP/1.1\r\nHost: x\r\n\r\n')
  await waitFor(() => snapshot(app).inflight === 2, 'two in flight')
  t.equal(snapshot(app).draining, false)
  const closing = app.close()
  await waitFor(() => snapshot(app).draining, 'draining')
  t.match(await registry.metrics(), /fastify_admission_draining 1/)
  open()
  await closing
  for (const c of [first, second]) {
    await waitFor(() => c.received().endsWith('finished'), 'the response')
    t.match(c.received(), /^HTTP\/1\.1 200[\s\S]*connection: close/i)
    await waitFor(c.closed, 'the connection closed')
  }
  t.equal(snapshot(app).inflight, 0)
  t.equal(app[kAdmissionController].totals.admitted, 2)
})

t.test('while draining, a request that reaches the hook is refused at once with Connection: close', async t => {
  const { app } = await server(t, { mode: 'enforce' })
  app[kAdmissionController].draining = true // what preClose does
  const res = await app.inject('/fast')
  t.equal(res.statusCode, 503)
  t.equal(res.headers.connection, 'close')
  t.match(res.headers['retry-after'], /^\d+$/)
  t.equal(app[kAdmissionController].totals.rejected.drain, 1)
})

t.test('close with Fastify\'s default return503OnClosing: its own 503 answers first, the drain still waits for in-flight', async t => {
  const { app, port, open } = await server(t)
  const c = connect(port)
  c.socket.write('GET /slow HTTP/1.1\r\nHost: x\r\n\r\n')
  await waitFor(() => snapshot(app).inflight === 1, 'in flight')
  let closed = false
  const closing = app.close().then(() => { closed = true })
  await waitFor(() => snapshot(app).draining, 'draining')
  await new Promise(resolve => setTimeout(resolve, 50))
  t.equal(closed, false, 'close waits for the request in flight')
  open()
  await closing
  await waitFor(() => c.received().endsWith('finished'), 'the response')
  t.match(c.received(), /^HTTP\/1\.1 200/)
})

t.test('drainTimeout: a request that never finishes has its connection closed at the deadline', async t => {
  const { app, port } = await server(t, { drainTimeout: 200 })
  const c = connect(port)
  c.socket.write('GET /slow HTTP/1.1\r\nHost: x\r\n\r\n')
  await waitFor(() => snapshot(app).inflight === 1, 'in flight')
  const started = Date.now()
  await app.close()
  const took = Date.now() - started
  t.ok(took >= 150 && took < 3000, `close() returned after the deadline (${took} ms)`)
  await waitFor(c.closed, 'the client connection closed')
  t.equal(snapshot(app).inflight, 0, 'its permit given back')
})

t.test('an SSE stream open at close is ended at the deadline, so close() returns', async t => {
  const app = Fastify()
  await app.register(admission, { registry: new Registry(), startupGrace: 0, sampleInterval: 20, drainTimeout: 100 })
  app.get('/events', (_request, reply) => {
    reply.hijack()
    reply.raw.writeHead(200, { 'content-type': 'text/event-stream' })
    reply.raw.write('data: hello\n\n')
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const c = connect((app.server.address() as AddressInfo).port)
  c.socket.write('GET /events HTTP/1.1\r\nHost: x\r\n\r\n')
  await waitFor(() => c.received().includes('data: hello'), 'the stream open')
  await waitFor(() => snapshot(app).inflight === 0, 'the stream holds no permit')
  await app.close()
  await waitFor(c.closed, 'the stream closed by the deadline')
  t.pass('close() returned')
})

t.test('regression: on HTTP/2 the drain deadline closed nothing and close() hung; Connection headers warned', async t => {
  const warnings: string[] = []
  const onWarning = (w: Error): void => { warnings.push(w.message) }
  process.on('warning', onWarning)
  t.teardown(() => { process.off('warning', onWarning) })
  const app = Fastify({ http2: true })
  await app.register(admission, { registry: new Registry(), startupGrace: 0, sampleInterval: 10_000, drainTimeout: 200 })
  app.get('/never', () => new Promise(() => {}))
  app.get('/fast', async () => 'fast')
  await app.listen({ port: 0, host: '127.0.0.1' })
  const client = http2.connect(`http://127.0.0.1:${(app.server.address() as AddressInfo).port}`)
  client.on('error', () => {})
  const fast = client.request({ ':path': '/fast' })
  fast.on('error', () => {})
  let body = ''
  fast.on('data', (d: Buffer) => { body += d.toString() })
  await new Promise(resolve => fast.on('end', resolve))
  t.equal(body, 'fast')
  const never = client.request({ ':path': '/never' })
  never.on('error', () => {})
  await waitFor(() => app.admission?.inflight === 1, 'in flight')
  const started = Date.now()
  await app.close()
  const took = Date.now() - started
  t.ok(took >= 150 && took < 3000, `close() returned after the deadline (${took} ms)`)
  await waitFor(() => client.destroyed || client.closed, 'the session closed')
  t.equal(app.admission?.inflight, 0)
  t.same(warnings.filter(w => /connection/i.test(w)), [], 'no Connection header on HTTP/2')
  client.destroy()
})
