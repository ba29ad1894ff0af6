import t from 'tap'
import net from 'node:net'
import type { AddressInfo } from 'node:net'
import Fastify from 'fastify'
import { Registry } from 'prom-client'
import { metrics } from '@opentelemetry/api'
import admission, { InvalidOptionError, kAdmissionController, resolveOptions } from '../lib/index.js'
import { snapshot } from './helpers/app.js'

/** mulberry32: a small seeded PRNG, so that a failure can be replayed with its seed. */
function prng (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6D2B79F5) >>> 0
    let x = Math.imul(a ^ (a >>> 15), 1 | a)
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

const seed = Number(process.env.FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31))
t.comment(`seed=${seed} (replay with FUZZ_SEED=${seed})`)

const KEYS = [
  'mode', 'statusCode', 'sampleInterval', 'startupGrace', 'drainTimeout', 'initialLimit', 'minLimit', 'maxLimit',
  'headroom', 'retryAfterMin', 'retryAfterMax', 'registry', 'metricsPrefix', 'metricsPath', 'meter', 'underPressure',
  'unknownOption', 'limit', 'constructor'
]
const VALUES: unknown[] = [
  undefined, null, 0, -0, 1, 2, 30, 100, 503, 429, 1.5, -1, -100, NaN, Infinity, -Infinity, 1e12, Number.MAX_SAFE_INTEGER,
  '', '1', 'enforce', 'observe', 'shed', '/metrics', 'no-slash', 'a b', 'fastify_x_', true, false, [], [1], {},
  { maxHeapUsedBytes: 1e12 }, { maxHeapUsedBytes: -1 }, { healthCheck: 'x' }, { bogus: 1 }, () => 1, Symbol('s'),
  new Registry(), 10n, metrics.getMeter('fuzz'), { createHistogram: () => ({}) }
]

t.test(`options fuzz: a valid frozen result or a coded error naming a given option, never anything else (seed ${seed})`, async t => {
  const random = prng(seed)
  const pick = <T>(list: readonly T[]): T => list[Math.floor(random() * list.length)] as T
  let valid = 0
  let invalid = 0
  for (let i = 0; i < 2000; i++) {
    const input: Record<string, unknown> = {}
    const n = Math.floor(random() * 4)
    for (let k = 0; k < n; k++) input[pick(KEYS)] = pick(VALUES)
    try {
      const resolved = resolveOptions(input)
      valid++
      if (!Object.isFrozen(resolved) || resolved.minLimit > resolved.maxLimit ||
        !(resolved.initialLimit >= resolved.minLimit && resolved.initialLimit <= resolved.maxLimit)) {
        t.fail(`inconsistent result for ${String(Object.keys(input))} (seed ${seed}, case ${i})`)
      }
    } catch (err) {
      invalid++
      const e = err as { code?: string, message?: string }
      if (!(err instanceof InvalidOptionError) || e.code !== 'FST_ERR_ADMISSION_INVALID_OPTION' ||
        !Object.keys(input).some(key => e.message?.includes(`"${key}`) === true)) {
        t.fail(`unexpected error ${String(e.code)}: ${String(e.message)} (seed ${seed}, case ${i})`)
      }
    }
  }
  t.ok(valid > 100 && invalid > 100, `both kinds exercised: ${valid} valid, ${invalid} invalid`)
})

t.test(`options fuzz through app.ready(): bad options fail the boot with the coded error and leave nothing running (seed ${seed})`, async t => {
  const random = prng(seed + 1)
  const pick = <T>(list: readonly T[]): T => list[Math.floor(random() * list.length)] as T
  for (let i = 0; i < 40; i++) {
    const input: Record<string, unknown> = { registry: new Registry(), [pick(KEYS)]: pick(VALUES) }
    if (input.registry === undefined || input.registry === null) delete input.registry
    const app = Fastify()
    let expected: unknown
    try { resolveOptions(input) } catch (err) { expected = err }
    app.register(admission, input)
    try {
      await app.ready()
      t.equal(expected, undefined, `boots only with valid options (seed ${seed}, case ${i})`)
    } catch (err) {
      t.equal((err as { code?: string }).code, (expected as { code?: string } | undefined)?.code ?? 'none', `case ${i}`)
    }
    await app.close()
  }
})

function exchange (port: number, raw: string): Promise<string> {
  return new Promise(resolve => {
    const s = net.connect(port, '127.0.0.1')
    let data = ''
    s.on('data', (d: Buffer) => { data += d.toString('latin1') })
    s.on('error', () => resolve(data))
    s.on('close', () => resolve(data))
    s.write(raw, 'latin1')
    setTimeout(() => s.destroy(), 3000).unref()
  })
}

t.test('absurd headers, huge URLs and odd methods: no exception in a hook, no new metric series', async t => {
  const registry = new Registry()
  const app = Fastify()
  t.teardown(() => app.close())
  const errors: unknown[] = []
  app.setErrorHandler((err, _request, reply) => { errors.push(err); return reply.code(500).send('error') })
  await app.register(admission, { registry, startupGrace: 0, sampleInterval: 10_000 })
  app.get('/items/:id', async () => 'ok')
  await app.listen({ port: 0, host: '127.0.0.1' })
  const port = (app.server.address() as AddressInfo).port
  const before = (await registry.metrics()).split('\n').length
  const random = prng(seed + 2)
  const longPath = '/items/' + 'x'.repeat(8000)
  const requests = [
    `GET ${longPath} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
    `GET /${'%'.repeat(3000)}?${'a=1&'.repeat(2000)} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
    `GET /items/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n${Array.from({ length: 500 }, (_, i) => `x-h${i}: ${'v'.repeat(20)}`).join('\r\n')}\r\n\r\n`,
    `GET /items/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nx-big: ${'b'.repeat(70_000)}\r\n\r\n`,
    'GET /items/\u00ff\u00fe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
    'PROPFIND /items/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
    'GET /metrics/../metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
    'GET //metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
    ...Array.from({ length: 200 }, () => `GET /items/${Math.floor(random() * 1e9)}?q=${Math.floor(random() * 1e9)} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`)
  ]
  for (const raw of requests) {
    const reply = await exchange(port, raw)
    t.notMatch(reply, /^HTTP\/1\.1 5/, `no 5xx for ${raw.slice(0, 40)}...`)
  }
  t.same(errors, [], 'the error handler never ran')
  const after = (await registry.metrics()).split('\n').length
  t.equal(after, before, 'label cardinality does not grow with URLs or headers')
  t.equal(snapshot(app).inflight, 0)
  t.ok(app[kAdmissionController].totals.admitted >= 200)
})
