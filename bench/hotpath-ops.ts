// Costs of the single operations the plugin's hook does per request, on real node:http objects:
// a clock read, a 'close' listener on a response, symbol-keyed properties on it. Best of 40 rounds of
// 5000 fresh responses each (ns per operation), run pinned: `taskset -c 0 npx tsx bench/hotpath-ops.ts`.
import { IncomingMessage, ServerResponse } from 'node:http'
import { Socket } from 'node:net'
import { performance } from 'node:perf_hooks'

const N = 5000
const ROUNDS = 40
const socket = new Socket()
const keys = [Symbol('a'), Symbol('b'), Symbol('c'), Symbol('d'), Symbol('e')]
const noop = (): void => {}
let sink = 0

type Res = ServerResponse & Record<symbol, unknown>

function response (): Res {
  const res = new ServerResponse(new IncomingMessage(socket)) as Res
  // Node adds a 'finish' listener of its own to every response it serves.
  res.on('finish', noop)
  return res
}

const operations: Record<string, (res: Res) => void> = {
  'nothing (loop overhead)': () => {},
  'performance.now()': () => { sink += performance.now() },
  "res.on('close', fn)": (res) => { res.on('close', noop) },
  'five symbol properties': (res) => {
    res[keys[0] as symbol] = 1
    res[keys[1] as symbol] = res
    res[keys[2] as symbol] = false
    res[keys[3] as symbol] = res
    res[keys[4] as symbol] = res
  }
}

const best: Record<string, number> = {}
for (let round = 0; round < ROUNDS; round++) {
  for (const [name, op] of Object.entries(operations)) {
    const objects = Array.from({ length: N }, response)
    const start = performance.now()
    for (let i = 0; i < N; i++) op(objects[i] as Res)
    const ns = (performance.now() - start) * 1e6 / N
    best[name] = Math.min(best[name] ?? Infinity, ns)
  }
}
for (const [name, ns] of Object.entries(best)) console.log(`${name.padEnd(26)} ${ns.toFixed(0).padStart(5)} ns`)
if (sink === 0) console.log('(clock read nothing)')
