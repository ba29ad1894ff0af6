import Fastify, { type FastifyInstance } from 'fastify'
import { Registry } from 'prom-client'
import admission, { kAdmissionController, type AdmissionOptions, type AdmissionSnapshot } from '../../lib/index.js'
import type { AdmissionController } from '../../lib/admission.js'

export interface Gate {
  /** Resolves the handler's wait. */
  open: () => void
  wait: Promise<void>
}

export function gate (): Gate {
  let open!: () => void
  const wait = new Promise<void>(resolve => { open = resolve })
  return { open, wait }
}

/**
 * A Fastify app with the plugin on a fresh registry, sampling effectively off (the test closes the
 * windows itself through the controller), and no startup grace.
 */
export async function build (t: { teardown: (fn: () => unknown) => void }, opts: AdmissionOptions = {}): Promise<{ app: FastifyInstance, controller: AdmissionController, registry: Registry }> {
  const registry = new Registry()
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(admission, { registry, startupGrace: 0, sampleInterval: 10_000, ...opts })
  return { app, controller: app[kAdmissionController], registry }
}

/**
 * An app whose limit of 1 is enforced and held: GET /slow waits for the gate, and one such request is
 * in flight (`holding`), so the next ones are refused until the gate opens.
 */
export async function holdingTheLimit (t: { teardown: (fn: () => unknown) => void }, opts: AdmissionOptions = {}): Promise<{ app: FastifyInstance, controller: AdmissionController, gate: Gate, holding: Promise<unknown> }> {
  const { app, controller } = await build(t, { minLimit: 1, maxLimit: 1, initialLimit: 1, ...opts })
  const g = gate()
  app.get('/slow', async () => { await g.wait; return 'ok' })
  await app.ready()
  saturate(controller)
  const holding = app.inject('/slow')
  await turns(10)
  return { app, controller, gate: g, holding }
}

/** Close a window in which the loop was saturated: the limit is enforced from now on. */
export function saturate (controller: AdmissionController, now = 1e9): void {
  controller.onWindow({ durationMs: 100, elu: 1, delayP99Ms: 5 }, now)
}

/** Resolve after the event loop had a few turns (inject's response handling included). */
export function turns (n = 3): Promise<void> {
  return new Promise(resolve => {
    const step = (left: number): void => { left === 0 ? resolve() : setImmediate(step, left - 1) }
    step(n)
  })
}

/** The plugin's snapshot; throws when the app did not register the plugin. */
export function snapshot (app: FastifyInstance): AdmissionSnapshot {
  const snap = app.admission
  if (snap === undefined) throw new Error('fastify-admission is not registered on this app')
  return snap
}
