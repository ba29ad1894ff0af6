// A scripted event loop for the pure tests of lib/turns.ts: time advances only when a test says the
// loop worked or waited, and a turn ends only when the test ends it.
import type { TurnClock } from '../../lib/turns.js'

export interface FakeLoop {
  clock: TurnClock
  /** The loop runs callbacks for `ms`. */
  work: (ms: number) => void
  /** The loop waits for I/O for `ms`. */
  wait: (ms: number) => void
  /** The check phase: runs what was scheduled for the end of the turn. */
  endTurn: () => void
  readonly now: number
}

export function fakeLoop (): FakeLoop {
  let now = 1000
  let idle = 50
  let atEnd: Array<() => void> = []
  return {
    clock: {
      now: () => now,
      idle: () => idle,
      atTurnEnd: callback => { atEnd.push(callback) }
    },
    work: ms => { now += ms },
    wait: ms => { now += ms; idle += ms },
    endTurn: () => {
      const callbacks = atEnd
      atEnd = []
      for (const callback of callbacks) callback()
    },
    get now () { return now }
  }
}
