// A minimal HTTP/1.1 GET client over keep-alive TCP connections, for load
// generation only. It is several times cheaper per request than node:http's
// client, which lets one core offer ~5000+ requests/s on schedule.
//
// One request per connection at a time (no pipelining, so no head-of-line
// blocking in the measurements). warm() opens connections before the load starts;
// a request that finds no idle connection opens a new one (the caller caps how many
// run at once: under load a Node server accepts about one new connection per
// event-loop turn, so a pool that grows under load measures its own connection storm). Responses must carry Content-Length or be
// chunked; the body is read and discarded.
import net from 'node:net'

/** Called once per request: status code (0 on a connection error). */
export type ResponseCallback = (status: number) => void

const CRLFCRLF = Buffer.from('\r\n\r\n')
const CRLF = Buffer.from('\r\n')

const State = { Head: 0, Body: 1, Chunked: 2 } as const

class Conn {
  readonly socket: net.Socket
  readonly pool: ConnPool
  handler: ResponseCallback | undefined = undefined
  dead = false
  private pending: Buffer | undefined = undefined
  private state: number = State.Head
  private status = 0
  private remaining = 0
  private closeAfter = false

  constructor (pool: ConnPool) {
    this.pool = pool
    this.socket = net.connect({ host: pool.host, port: pool.port, noDelay: true })
    this.socket.on('data', (chunk: Buffer) => this.onData(chunk))
    this.socket.on('error', () => this.onClose())
    this.socket.on('close', () => this.onClose())
  }

  send (req: Buffer, handler: ResponseCallback): void {
    this.handler = handler
    this.state = State.Head
    this.pending = undefined
    this.socket.write(req)
  }

  destroy (): void {
    this.dead = true
    this.handler = undefined
    this.socket.destroy()
  }

  private onClose (): void {
    if (this.dead) return
    this.dead = true
    this.pool.open--
    const handler = this.handler
    this.handler = undefined
    if (handler !== undefined) handler(0)
  }

  private complete (): void {
    const handler = this.handler
    this.handler = undefined
    this.pending = undefined
    if (this.closeAfter) {
      this.dead = true
      this.pool.open--
      this.socket.destroy()
    } else {
      this.pool.release(this)
    }
    if (handler !== undefined) handler(this.status)
  }

  private onData (chunk: Buffer): void {
    if (this.handler === undefined) return // unsolicited bytes on an idle connection: ignore
    let buf = this.pending === undefined ? chunk : Buffer.concat([this.pending, chunk])
    this.pending = undefined
    for (;;) {
      if (this.state === State.Head) {
        const end = buf.indexOf(CRLFCRLF)
        if (end < 0) { this.pending = buf; return }
        const emptyBody = this.parseHead(buf.toString('latin1', 0, end))
        buf = buf.subarray(end + 4)
        if (emptyBody) { this.complete(); return }
        continue
      }
      if (this.state === State.Body) {
        if (buf.length >= this.remaining) { this.complete(); return }
        this.remaining -= buf.length
        return
      }
      // chunked: [remaining bytes of current chunk + CRLF], then "size\r\n"
      if (this.remaining > 0) {
        if (buf.length < this.remaining) { this.remaining -= buf.length; return }
        buf = buf.subarray(this.remaining)
        this.remaining = 0
      }
      const eol = buf.indexOf(CRLF)
      if (eol < 0) { this.pending = buf; return }
      const size = parseInt(buf.toString('latin1', 0, eol), 16)
      if (!Number.isFinite(size)) { this.fail(); return }
      if (size === 0) {
        // last chunk; assume no trailers: "0\r\n\r\n"
        this.complete()
        return
      }
      buf = buf.subarray(eol + 2)
      this.remaining = size + 2
    }
  }

  /** Parses the status line and framing headers; true when there is no body to read. */
  private parseHead (head: string): boolean {
    // "HTTP/1.1 200 OK"
    this.status = parseInt(head.slice(9, 12), 10)
    const lower = head.toLowerCase()
    this.closeAfter = lower.includes('\r\nconnection: close')
    const cl = lower.indexOf('\r\ncontent-length:')
    if (cl >= 0) {
      this.state = State.Body
      const eol = lower.indexOf('\r\n', cl + 17)
      this.remaining = parseInt(eol < 0 ? lower.slice(cl + 17) : lower.slice(cl + 17, eol), 10) || 0
      return this.remaining === 0
    } else if (lower.includes('\r\ntransfer-encoding: chunked')) {
      this.state = State.Chunked
      this.remaining = 0
      return false
    } else {
      // no framing: body runs to connection close; treat as complete with no reuse
      this.state = State.Body
      this.remaining = 0
      this.closeAfter = true
      return true
    }
  }

  private fail (): void {
    this.socket.destroy()
  }
}

export class ConnPool {
  readonly host: string
  readonly port: number
  /** connections currently open */
  open = 0
  /** connections opened since creation */
  opened = 0
  private readonly idle: Conn[] = []
  private readonly hostHeader: string

  constructor (host: string, port: number) {
    this.host = host
    this.port = port
    this.hostHeader = `${host}:${port}`
  }

  /** Encodes a GET request once, to be reused for every send. */
  encode (path: string): Buffer {
    return Buffer.from(`GET ${path} HTTP/1.1\r\nHost: ${this.hostHeader}\r\nConnection: keep-alive\r\n\r\n`, 'latin1')
  }

  /** Sends a pre-encoded request on an idle connection (or a new one). Returns the connection, to abort it. */
  send (req: Buffer, handler: ResponseCallback): Conn {
    let conn = this.idle.pop()
    while (conn !== undefined && conn.dead) conn = this.idle.pop()
    if (conn === undefined) {
      conn = new Conn(this)
      this.open++
      this.opened++
    }
    conn.send(req, handler)
    return conn
  }

  /** Opens `n` connections and waits until they are connected, so that none is opened under load. */
  async warm (n: number): Promise<void> {
    const conns: Conn[] = []
    for (let i = 0; i < n; i++) {
      conns.push(new Conn(this))
      this.open++
      this.opened++
    }
    await Promise.all(conns.map(c => new Promise<void>(resolve => {
      c.socket.once('connect', () => resolve())
      c.socket.once('close', () => resolve())
    })))
    for (const c of conns) if (!c.dead) this.idle.push(c)
  }

  /** Aborts the request running on `conn` (the connection is closed; its callback is not called). */
  abort (conn: Conn): void {
    if (!conn.dead) this.open--
    conn.destroy()
  }

  release (conn: Conn): void {
    this.idle.push(conn)
  }

  close (): void {
    for (const c of this.idle) if (!c.dead) { this.open--; c.destroy() }
    this.idle.length = 0
  }
}

export type { Conn }
