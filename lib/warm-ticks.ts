// A warm-up of Node's process.nextTick, once per process, when the plugin registers.
//
// Every HTTP response goes through process.nextTick about nine times (stream and socket bookkeeping).
// Measured on Node 20.20.2 (2026-11-25, hello-world under wrk, a fresh process each time): a process
// runs nextTick at one of two speeds for its whole life, about 20 or about 280 ns a call (a CPU profile
// puts 13-16 % of a slow server's time in it, against about 1 %), so the whole server serves about a
// fifth less: 68-75 000 against 88-95 000 requests a second. Which speed a process gets is settled
// when the JIT compiles nextTick. Bare Fastify got the slow one in 18 of 27 processes (four runs); with
// this plugin registered and no warm-up, in 11 of 13 (two runs). Compiled at start-up after enough
// calls, nextTick got the fast speed in every process tried: 14 of 14 with the plugin in two runs of
// `npm run bench -- --only hello`, and 4 of 4 of a smaller server with 5000 or 10 000 calls, against 4
// slow of 4 with 2000. The cause inside V8 is not known.
// It changes nothing else: the callbacks do nothing (1-2 ms at registration), and the ticks are
// drained before registration goes on.

/** Calls of process.nextTick at registration (2000 were not enough, 5000 were). */
export const NEXT_TICK_WARMUP = 10_000

let warmed = false

function noop (): void {}

/** Calls process.nextTick NEXT_TICK_WARMUP times, the first time only, and waits until they have run. */
export async function warmNextTick (): Promise<void> {
  if (warmed) return
  warmed = true
  for (let i = 0; i < NEXT_TICK_WARMUP; i++) process.nextTick(noop)
  await new Promise<void>(resolve => { process.nextTick(resolve) })
}
