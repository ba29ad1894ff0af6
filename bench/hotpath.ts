// Hot-path overhead probe: server CPU time per hello-world request, bare Fastify against variants of
// the plugin's per-request work, each in its own pinned process, driven by wrk from the other core.
//   tsx bench/hotpath.ts [seconds]
// The variants run from an esbuild bundle of this file, not through tsx, and every one warms
// process.nextTick first: through tsx, or without the warm-up, a Node 20 process may run nextTick at
// its slow speed for its whole life (lib/warm-ticks.ts), and the variants would differ by that.
import { spawn, spawnSync } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import { warmNextTick } from '../lib/warm-ticks.js'

const variant = process.env.HOTPATH_VARIANT
if (variant !== undefined) {
  warmNextTick()
  const { default: Fastify } = await import('fastify')
  const app = Fastify()
  if (variant === 'admission') {
    const { default: admission } = await import('../lib/index.js')
    await app.register(admission, { metricsPath: false })
  } else if (variant === 'empty-hook') {
    app.addHook('onRequest', function emptyHook (_req, _reply, done) { done() })
  } else if (variant === 'close-listener') {
    const onClose = (): void => {}
    app.addHook('onRequest', function listen (_req, reply, done) { reply.raw.on('close', onClose); done() })
  }
  app.get('/hello', async () => ({ hello: 'world' }))
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  process.stdout.write(`${typeof address === 'object' && address !== null ? address.port : 0}\n`)
  process.stdin.resume()
  const startCpu = process.cpuUsage()
  process.stdin.on('data', () => {
    const cpu = process.cpuUsage(startCpu)
    process.stdout.write(`${cpu.user + cpu.system}\n`)
  })
  process.stdin.on('close', () => process.exit(0))
} else {
  const seconds = Number(process.argv[2] ?? 3)
  const { bundleScript } = await import('./proc.js')
  const bundle = await bundleScript(fileURLToPath(import.meta.url), 'hotpath')
  const variants = ['bare', 'admission', 'empty-hook', 'close-listener']
  const totals = new Map<string, number[]>()
  for (let round = 0; round < 3; round++) {
    for (const v of round % 2 === 0 ? variants : [...variants].reverse()) {
      const child = spawn('taskset', ['-c', '0', process.execPath, bundle], {
        env: { ...process.env, HOTPATH_VARIANT: v }, stdio: ['pipe', 'pipe', 'inherit']
      })
      const [line] = await once(child.stdout, 'data') as [Buffer]
      const port = Number(line.toString().trim())
      spawnSync('taskset', ['-c', '1', 'wrk', '-t1', '-c50', '-d1s', `http://127.0.0.1:${port}/hello`])
      child.stdin?.write('x')
      const [before] = await once(child.stdout, 'data') as [Buffer]
      const out = spawnSync('taskset', ['-c', '1', 'wrk', '-t1', '-c50', `-d${seconds}s`, `http://127.0.0.1:${port}/hello`], { encoding: 'utf8' }).stdout
      child.stdin?.write('x')
      const [after] = await once(child.stdout, 'data') as [Buffer]
      const requests = Number(/(\d+) requests in/.exec(out)?.[1] ?? NaN)
      const usPerRequest = (Number(after.toString()) - Number(before.toString())) / requests
      totals.set(v, [...(totals.get(v) ?? []), usPerRequest])
      child.stdin?.end()
      await once(child, 'exit')
    }
  }
  const bare = totals.get('bare') ?? []
  for (const [v, list] of totals) {
    const ratios = list.map((x, i) => (bare[i] ?? NaN) / x)
    console.log(`${v.padEnd(15)} ${list.map(x => x.toFixed(2)).join(' / ')} us CPU/request   throughput ratio vs bare ${ratios.map(r => r.toFixed(3)).join(' / ')}`)
  }
}
