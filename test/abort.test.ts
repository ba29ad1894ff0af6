import t from 'tap'
import type { AddressInfo } from 'node:net'
import { build, gate } from './helpers/app.js'
import { sendRaw, waitFor } from './helpers/sockets.js'

t.test('clients that abort mid-handler give their permits back, exactly once', async t => {
  // 20 connections at once on a slow, instrumented CI machine can last 16 busy turns and 25 ms (a
  // quarter of congestionInterval): an accept backlog by the plugin's rule (README, Known limits). This
  // test is about permits.
  const { app, controller } = await build(t, { congestionInterval: 10_000 })
  const g = gate()
  let finished = 0
  app.get('/slow', async () => {
    await g.wait
    finished++
    return { done: true }
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo
  const sockets = Array.from({ length: 20 }, () => sendRaw(port, 'GET /slow HTTP/1.1\r\nHost: x\r\n\r\n'))
  await waitFor(() => app.admission?.inflight === 20, '20 requests in flight')
  for (const s of sockets) s.destroy()
  await waitFor(() => app.admission?.inflight === 0, 'in-flight back to 0 after the aborts')
  // The handlers still finish afterwards and write to closed sockets: no second release.
  g.open()
  await waitFor(() => finished === 20, 'handlers to finish')
  await new Promise(resolve => setTimeout(resolve, 50))
  t.equal(app.admission?.inflight, 0)
  t.equal(controller.totals.admitted, 20)
})

t.test('malformed requests and aborts before the hook take no permit', async t => {
  const { app, controller } = await build(t)
  app.get('/', async () => 'ok')
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo
  const replies = await Promise.all([
    'GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n',
    'NOT-A-METHOD / HTTP/1.1\r\n\r\n',
    'GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n'
  ].map(raw => new Promise<string>(resolve => {
    const s = sendRaw(port, raw)
    let data = ''
    s.on('data', (d: Buffer) => { data += d.toString() })
    s.on('close', () => resolve(data))
  })))
  for (const reply of replies) t.match(reply, /^HTTP\/1\.1 400/)
  // Half a request, then gone.
  sendRaw(port, 'GET / HTTP/1.1\r\nHo').destroy()
  const ok = await fetch(`http://127.0.0.1:${port}/`)
  t.equal(ok.status, 200)
  await waitFor(() => app.admission?.inflight === 0, 'in-flight 0')
  t.equal(controller.totals.admitted, 1)
})

t.test('keep-alive: many requests on one connection, each released', async t => {
  const { app } = await build(t)
  app.get('/', async () => 'ok')
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo
  const s = sendRaw(port, 'GET / HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(50))
  let data = ''
  await new Promise<void>(resolve => {
    s.on('data', (d: Buffer) => {
      data += d.toString()
      if (data.split('HTTP/1.1 200').length - 1 === 50) resolve()
    })
  })
  s.destroy()
  await waitFor(() => app.admission?.inflight === 0, 'in-flight 0')
  t.pass('50 pipelined requests answered and released')
})
