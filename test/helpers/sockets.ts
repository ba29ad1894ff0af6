// Raw HTTP/1.1 over net sockets, for tests that must control exactly what reaches the server and when
// the client leaves: half-sent headers, bodies that never complete, pipelining, aborts at a chosen moment.
// Plus websocket clients that never throw (a refused upgrade is an outcome, not an error).

import net from 'node:net'
import type { AddressInfo } from 'node:net'
import type { FastifyInstance } from 'fastify'
import WebSocket from 'ws'

export function sleep (ms: number): Promise<void> {
  return new Promise(resolve => setTimeout(resolve, ms))
}

/** Poll `check` every 5 ms; resolves false when it still does not hold after `ms`. */
export async function until (check: () => boolean | Promise<boolean>, ms = 5000): Promise<boolean> {
  const end = Date.now() + ms
  while (!(await check())) {
    if (Date.now() > end) return false
    await sleep(5)
  }
  return true
}

/** Poll `check` every 5 ms; throws, naming `what`, when it still does not hold after `ms`. */
export async function waitFor (check: () => boolean, what: string, ms = 5000): Promise<void> {
  if (!(await until(check, ms))) throw new Error(`timed out waiting for ${what}`)
}

/** Open a connection to 127.0.0.1:`port` and write `raw` on it; errors are ignored (the test aborts). */
export function sendRaw (port: number, raw: string): net.Socket {
  const socket = net.connect(port, '127.0.0.1')
  socket.on('error', () => {})
  socket.write(raw)
  return socket
}

export function portOf (app: FastifyInstance): number {
  return (app.server.address() as AddressInfo).port
}

/** Sockets the server still has open (accepted and not yet closed). */
export function openConnections (app: FastifyInstance): Promise<number> {
  return new Promise((resolve, reject) => {
    app.server.getConnections((err, n) => { err == null ? resolve(n) : reject(err) })
  })
}

/** The text of one request; `content-length` is added for a body unless given. */
export function httpText (method: string, path: string, headers: Record<string, string> = {}, body = ''): string {
  let text = `${method} ${path} HTTP/1.1\r\nhost: 127.0.0.1\r\n`
  for (const [name, value] of Object.entries(headers)) text += `${name}: ${value}\r\n`
  if (body !== '' && headers['content-length'] === undefined) text += `content-length: ${Buffer.byteLength(body)}\r\n`
  return `${text}\r\n${body}`
}

const STATUS_LINE = /HTTP\/1\.1 (\d{3}) /g

/** A client connection that records what it receives. Status lines are found by scanning the bytes. */
export class RawClient {
  readonly socket: net.Socket
  readonly closed: Promise<void>
  #received = ''
  #isClosed = false
  readonly #waiters = new Set<() => void>()

  constructor (port: number) {
    const socket = net.connect(port, '127.0.0.1')
    socket.setNoDelay(true)
    socket.on('error', () => {})
    socket.on('data', (chunk: Buffer) => {
      this.#received += chunk.toString('latin1')
      this.#notify()
    })
    this.closed = new Promise(resolve => socket.once('close', () => {
      this.#isClosed = true
      this.#notify()
      resolve()
    }))
    this.socket = socket
  }

  get received (): string {
    return this.#received
  }

  get isClosed (): boolean {
    return this.#isClosed
  }

  /** Status codes of the responses received so far, in order. */
  statuses (): number[] {
    return Array.from(this.#received.matchAll(STATUS_LINE), m => Number(m[1]))
  }

  send (text: string): this {
    this.socket.write(text)
    return this
  }

  /** Resolves true once `check` holds; false when the connection closed or `ms` passed first. */
  wait (check: () => boolean, ms = 5000): Promise<boolean> {
    return new Promise(resolve => {
      const test = (): void => {
        const ok = check()
        if (!ok && !this.#isClosed) return
        clearTimeout(timer)
        this.#waiters.delete(test)
        resolve(ok)
      }
      const timer = setTimeout(() => { this.#waiters.delete(test); resolve(false) }, ms)
      this.#waiters.add(test)
      test()
    })
  }

  /** Resolves true when the server closed the connection within `ms`; otherwise destroys it, false. */
  async closedWithin (ms: number): Promise<boolean> {
    const closed = await this.wait(() => this.#isClosed, ms)
    if (!closed) await this.destroy()
    return closed
  }

  /** Leave abruptly; resolves once the socket is closed. */
  destroy (): Promise<void> {
    this.socket.destroy()
    return this.closed
  }

  #notify (): void {
    for (const waiter of this.#waiters) waiter()
  }
}

/** A websocket client once open; undefined when the upgrade was refused or did not complete in `ms`. */
export async function openWebSocket (url: string, ms = 2000): Promise<WebSocket | undefined> {
  const ws = new WebSocket(url)
  ws.on('error', () => {})
  const open = await new Promise<boolean>(resolve => {
    const timer = setTimeout(resolve, ms, false)
    ws.once('open', () => { clearTimeout(timer); resolve(true) })
    ws.once('close', () => { clearTimeout(timer); resolve(false) })
  })
  if (open) return ws
  ws.terminate()
  return undefined
}

/** Close with the closing handshake, or drop the connection; resolves once closed. */
export function closeWebSocket (ws: WebSocket, graceful: boolean): Promise<void> {
  if (ws.readyState === WebSocket.CLOSED) return Promise.resolve()
  const closed = new Promise<void>(resolve => ws.once('close', () => resolve()))
  graceful ? ws.close() : ws.terminate()
  return closed
}

/**
 * Several requests on one new connection: written at once (`pipelined`) or each once the previous
 * answer's status line arrived (keep-alive). With `leaveAt`, the client leaves `leaveMs` after writing
 * that request; otherwise it waits up to `ms` for the server to close, so the last request should say
 * `connection: close`. Returns the status codes received and whether the server closed the connection.
 */
export async function converse (port: number, texts: readonly string[], opts: {
  pipelined: boolean, leaveAt?: number, leaveMs?: number, ms?: number
}): Promise<{ statuses: number[], closedByServer: boolean }> {
  const { pipelined, leaveAt = -1, leaveMs = 0, ms = 3000 } = opts
  const client = new RawClient(port)
  if (pipelined) client.send(texts.join(''))
  for (let i = 0; i < texts.length; i++) {
    if (!pipelined) client.send(texts[i] as string)
    if (i === leaveAt) {
      await sleep(leaveMs)
      await client.destroy()
      return { statuses: client.statuses(), closedByServer: false }
    }
    if (!pipelined && !await client.wait(() => client.statuses().length > i, ms)) break
  }
  const closedByServer = await client.closedWithin(ms)
  return { statuses: client.statuses(), closedByServer }
}
