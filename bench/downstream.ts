// A database stand-in in a process of its own, for handlers whose awaits are socket round trips as they
// are with a real driver (a timer's await resumes in the loop's timers phase; a query's reply is read in
// the poll phase, among the requests of clients, which is where the plugin measures a route's work).
//
//   node --import tsx bench/downstream.ts        prints {"port":N} once listening; exits when stdin closes
//
// Protocol: a line "<id> <ms>\n" is answered "<id>\n" after ms. The client (DownstreamPool) keeps a few
// connections and sends many queries on each, as drivers that pipeline do.
import net from 'node:net'
import { fileURLToPath } from 'node:url'

/** Connections of the pool in each server process. */
export const DOWNSTREAM_CONNECTIONS = 10

function serve (): void {
  const server = net.createServer(socket => {
    socket.setNoDelay(true)
    let rest = ''
    socket.setEncoding('latin1')
    socket.on('data', (chunk: string) => {
      const lines = (rest + chunk).split('\n')
      rest = lines.pop() ?? ''
      for (const line of lines) {
        const space = line.indexOf(' ')
        const id = line.slice(0, space)
        setTimeout(() => { if (!socket.destroyed) socket.write(id + '\n') }, Number(line.slice(space + 1)))
      }
    })
    socket.on('error', () => {})
  })
  server.listen(0, '127.0.0.1', () => {
    process.stdout.write(JSON.stringify({ port: (server.address() as net.AddressInfo).port }) + '\n')
  })
  process.stdin.resume()
  process.stdin.on('end', () => process.exit(0))
  process.stdin.on('error', () => process.exit(0))
}

/** The server's side: queries spread over a few connections, each answered by id. */
export class DownstreamPool {
  readonly #sockets: net.Socket[] = []
  readonly #pending = new Map<number, () => void>()
  #id = 0

  private constructor () {}

  static async connect (port: number, connections = DOWNSTREAM_CONNECTIONS): Promise<DownstreamPool> {
    const pool = new DownstreamPool()
    for (let i = 0; i < connections; i++) pool.#sockets.push(await pool.#open(port))
    return pool
  }

  /** Resolves when the stand-in answers, `ms` after it read the query. */
  async query (ms: number): Promise<void> {
    const id = ++this.#id
    const socket = this.#sockets[id % this.#sockets.length] as net.Socket
    await new Promise<void>(resolve => {
      this.#pending.set(id, resolve)
      socket.write(`${id} ${ms}\n`)
    })
  }

  close (): void {
    for (const socket of this.#sockets) socket.destroy()
  }

  async #open (port: number): Promise<net.Socket> {
    const socket = net.connect({ port, host: '127.0.0.1', noDelay: true })
    await new Promise<void>((resolve, reject) => { socket.once('connect', resolve).once('error', reject) })
    socket.setEncoding('latin1')
    let rest = ''
    socket.on('data', (chunk: string) => {
      const lines = (rest + chunk).split('\n')
      rest = lines.pop() ?? ''
      for (const line of lines) {
        const id = Number(line)
        const resolve = this.#pending.get(id)
        if (resolve !== undefined) {
          this.#pending.delete(id)
          resolve()
        }
      }
    })
    socket.unref()
    return socket
  }
}

// Run as a script, not bundled into the server.
const self = fileURLToPath(import.meta.url)
if (self.endsWith('downstream.ts') && self === process.argv[1]) serve()
