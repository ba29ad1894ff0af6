// Permits held by admitted requests, tied to Node's HTTP objects (no Fastify): each one is given back
// exactly once, whatever happens to the request. Node tells us about most endings with the response's
// 'close' event; the cases it does not tell are checked at hold time and by sweep():
//   - the client left before admission (an earlier async hook was still awaiting): 'close' has already
//     fired and never fires again, so the state is checked when the permit is taken;
//   - a pipelined request queued behind another on a connection that died: its response never gets the
//     socket and never closes; sweep() finds it by its request's socket;
//   - a long-lived response (SSE, a streamed body, a hijacked reply writing to the raw response, a
//     websocket whose handler took the socket over) is not work in progress once established: sweep()
//     gives its permit back once its headers are out or its reply is hijacked.

import type { IncomingMessage, ServerResponse } from 'node:http'
import type { RouteCost } from './costs.js'

/** When the permit was taken (the clock's milliseconds). */
const kStart = Symbol('fastify-admission.start')
/** The reply's view the sweep needs, and whether the permit came from an observed decision. */
const kReply = Symbol('fastify-admission.reply')
const kObserved = Symbol('fastify-admission.observed')
/** The route's slot in the cost model. */
const kRoute = Symbol('fastify-admission.route')
/** Neighbours in the list of held permits; undefined once the permit is given back. */
const kPrev = Symbol('fastify-admission.prev')
const kNext = Symbol('fastify-admission.next')

interface Link {
  [kPrev]: Link | undefined
  [kNext]: Link | undefined
}

/** What the sweep reads of the framework's reply: true once it was sent or handed over (hijacked). */
export interface ReplyState {
  readonly sent: boolean
}

interface Held extends ServerResponse, Link {
  [kStart]: number
  [kReply]: ReplyState
  [kObserved]: boolean
  [kRoute]: RouteCost | undefined
}

/**
 * Told once per permit. `latencyMs` from admission to the end; `finished` = the response was sent in
 * full (a sample of the request's cost), false for aborts, streams and upgrades.
 */
export type ReleaseFn = (latencyMs: number, finished: boolean, observed: boolean, route: RouteCost | undefined) => void

export class Permits {
  /**
   * Sentinel of a circular doubly linked list threaded through the held responses themselves: taking
   * and giving back a permit are a few property writes (a Set cost ~80 ns per request here).
   */
  readonly #head: Link
  readonly #release: ReleaseFn
  readonly #now: () => number
  readonly #onClose: (this: Held) => void

  constructor (release: ReleaseFn, now: () => number) {
    this.#release = release
    this.#now = now
    const head = {} as Link
    head[kPrev] = head
    head[kNext] = head
    this.#head = head
    const permits = this
    // One listener shared by every response: no closure per request.
    this.#onClose = function admissionReleaseOnClose (this: Held): void {
      permits.#give(this, this.writableFinished)
    }
  }

  /**
   * Hold a permit (already counted by the decision) until the response ends. `startMs`: when it was
   * taken, on the clock (the decision's own reading, which saves one), else now.
   */
  hold (req: IncomingMessage, res: ServerResponse, reply: ReplyState, observed: boolean, route?: RouteCost, startMs?: number): void {
    if (res.destroyed || req.socket?.destroyed === true) {
      // A client already gone will never make 'close' fire again.
      this.#release(0, false, observed, route)
      return
    }
    const held = res as Held
    const head = this.#head
    const last = head[kPrev] as Link
    held[kStart] = startMs ?? this.#now()
    held[kReply] = reply
    held[kObserved] = observed
    held[kRoute] = route
    held[kPrev] = last
    held[kNext] = head
    last[kNext] = held
    head[kPrev] = held
    held.on('close', this.#onClose)
  }

  /**
   * Give back the permits whose end Node does not report: responses streaming with their headers out
   * (established, no longer work in progress) and pipelined responses still queued on a connection
   * that died. Cost: one pass over the held permits, called once per sampling window.
   */
  sweep (): void {
    const head = this.#head
    for (let link = head[kNext] as Link; link !== head;) {
      const res = link as Held
      link = res[kNext] as Link
      // Queued behind another response on a dead connection (ended or not, it never gets the socket and
      // never closes), or established: streaming with its headers out, or handed over (hijacked: SSE
      // written to the raw response, a websocket handler holding the upgraded socket).
      if ((res.socket === null && res.req?.socket?.destroyed === true) ||
        (!res.writableEnded && (res.headersSent || res[kReply].sent))) {
        this.#give(res, false)
      }
    }
  }

  /** Mark every response still unsent to close its connection when done (the server is draining). */
  closeConnectionsWhenDone (): void {
    const head = this.#head
    for (let link = head[kNext] as Link; link !== head; link = link[kNext] as Link) {
      const res = link as Held
      // HTTP/2 has no Connection header (the session is closed by the server instead).
      if (!res.headersSent && res.req.httpVersionMajor < 2) res.setHeader('connection', 'close')
    }
  }

  #give (res: Held, finished: boolean): void {
    const prev = res[kPrev]
    if (prev === undefined) return
    const next = res[kNext] as Link
    prev[kNext] = next
    next[kPrev] = prev
    res[kPrev] = undefined
    res[kNext] = undefined
    this.#release(this.#now() - res[kStart], finished, res[kObserved], res[kRoute])
  }
}
