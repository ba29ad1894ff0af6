// A warm-up of Node's process.nextTick, once per process, when the plugin registers.
//
// Every HTTP response goes through process.nextTick about nine times (stream and socket bookkeeping).
// Measured on Node 20.20.2 (2026-11-25, hello-world under wrk, a fresh process each time): a process
// runs nextTick at one of two speeds for its whole life, about 20 or about 280 ns a call (a CPU profile
// puts 13-16 % of a slow server's time in it, against about 1 %), so the whole server serves about a
// fifth less: 68-75 000 against 88-95 000 requests a second. Which speed a process gets is settled
// when the JIT compiles nextTick. Bare Fastify got the slow one in 32 of 41 processes (six runs); with
// this plugin registered and no warm-up, in 11 of 13 (two runs). Compiled at start-up after enough
// calls, nextTick got the fast speed in every process tried: 14 of 14 with this warm-up in the plugin,
// 42 of 42 more (bare, an empty hook, the plugin) with the same warm-up run by the benchmark before
// them, and 4 of 4 of a smaller server with 5000 or 10 000 calls, against 4 slow of 4 with 2000. The
// cause inside V8 is not known, and only Node 20 was measured: on other versions the warm-up does
// nothing.
// It changes nothing else: the callbacks do nothing, and the calls take 1-2 ms. Nothing waits for
// the ticks to run (a test runner that fakes nextTick would never run them): the calls are what the
// JIT counts.

/** Calls of process.nextTick at registration (2000 were not enough, 5000 were). */
export const NEXT_TICK_WARMUP = 10_000

let warmed = false

function noop (): void {}

/** The running Node's major version. */
export function nodeMajor (): number {
  return Number(process.versions.node.split('.')[0])
}

/** Calls process.nextTick NEXT_TICK_WARMUP times, on Node 20 and the first time only. */
export function warmNextTick (major = nodeMajor()): void {
  if (warmed || major !== 20) return
  warmed = true
  for (let i = 0; i < NEXT_TICK_WARMUP; i++) process.nextTick(noop)
}
