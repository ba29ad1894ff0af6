// Fastify glue: option resolution at registration, the per-route onRequest admission hook, permit
// release on the raw response's 'close', the sampler timer, under-pressure wiring, metrics route.

import type { ServerResponse } from 'node:http'
import { performance } from 'node:perf_hooks'
import type {
  FastifyPluginAsync, FastifyReply, FastifyRequest, HookHandlerDoneFunction,
  onRequestHookHandler, RouteOptions
} from 'fastify'
import fp from 'fastify-plugin'
import underPressurePlugin, { type FastifyUnderPressureOptions } from '@fastify/under-pressure'
import {
  AdmissionController, DEFAULT_CLASS, type AdmissionSnapshot, type RejectReason, type SheddingEvent
} from './admission.js'
import { registerMetrics, type MetricsHandle } from './metrics.js'
import { resolveOptions, resolveRouteConfig, type AdmissionOptions, type AdmissionRouteConfig } from './options.js'
import { LoopMonitor } from './signals.js'

export type { AdmissionOptions, AdmissionRouteConfig, UnderPressureCeilings } from './options.js'
export { InvalidOptionError, InvalidRouteConfigError, resolveOptions } from './options.js'
export type { AdmissionSnapshot, Mode, RejectReason } from './admission.js'
export { AdmissionController } from './admission.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** Read-only snapshot of fastify-admission's state; each access returns a fresh frozen object. */
    readonly admission: AdmissionSnapshot
  }
  interface FastifyContextConfig {
    /** fastify-admission settings for this route. */
    admission?: AdmissionRouteConfig
  }
}

/**
 * The plugin's controller on the Fastify instance, for tests and advanced integrations that drive the
 * sampling windows themselves (with a long `sampleInterval`).
 */
export const kAdmissionController = Symbol.for('fastify-admission.controller')

/** Code of the refusal body. */
export const OVERLOADED_CODE = 'FST_ERR_ADMISSION_OVERLOADED'

/** Resolution of the event-loop delay histogram, milliseconds. */
const DELAY_RESOLUTION_MS = 10
/** A shedding episode ends after this long without refusals. */
const QUIET_MS = 1000
/** At most one "shedding started" log line per this long. */
const LOG_INTERVAL_MS = 10_000

/** When the permit was taken (performance.now()); NaN once it is given back. */
const kStart = Symbol('fastify-admission.start')

interface TrackedResponse extends ServerResponse {
  [kStart]: number
}

/** Reason of an under-pressure refusal; its event-loop checks are never enabled by this plugin. */
function underPressureReason (type: string): RejectReason {
  return type === 'heapUsedBytes' ? 'heap' : type === 'rssBytes' ? 'rss' : 'health'
}

const plugin: FastifyPluginAsync<AdmissionOptions> = async function fastifyAdmission (fastify, rawOptions) {
  const opts = resolveOptions(rawOptions)
  const monitor = new LoopMonitor(DELAY_RESOLUTION_MS)
  const controller = new AdmissionController({
    mode: opts.mode,
    minLimit: opts.minLimit,
    maxLimit: opts.maxLimit,
    initialLimit: opts.initialLimit,
    headroom: opts.headroom,
    graceMs: opts.startupGrace,
    retryAfter: { min: opts.retryAfterMin, max: opts.retryAfterMax },
    quietMs: QUIET_MS
  }, performance.now(), { onShedding: logShedding, recentElu: monitor.recentElu.bind(monitor) })
  let metrics: MetricsHandle
  try {
    metrics = registerMetrics(controller, opts.metricsPrefix, opts.registry)
  } catch (err) {
    monitor.stop()
    throw err
  }
  const statusCode = opts.statusCode
  const refusalBody = JSON.stringify({
    statusCode,
    code: OVERLOADED_CODE,
    error: statusCode === 503 ? 'Service Unavailable' : 'Too Many Requests',
    message: 'Server is overloaded, retry later'
  })

  function refuse (reply: FastifyReply): FastifyReply {
    return reply
      .code(statusCode)
      .header('retry-after', controller.retryAfter.value())
      .header('content-type', 'application/json; charset=utf-8')
  }

  // Released exactly once, when the raw response closes: after it is sent, or when the client aborts.
  function admissionReleaseOnClose (this: TrackedResponse): void {
    const start = this[kStart]
    if (Number.isNaN(start)) return
    this[kStart] = NaN
    controller.release(performance.now() - start, this.writableFinished)
  }

  function admissionOnRequest (_request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction): void {
    if (controller.acquire(DEFAULT_CLASS) === 'rejected') {
      refuse(reply).send(refusalBody)
      return
    }
    const res = reply.raw as TrackedResponse
    res[kStart] = performance.now()
    res.on('close', admissionReleaseOnClose)
    done()
  }

  let lastStartLog = -Infinity
  let startLogged = false
  function logShedding (event: NonNullable<SheddingEvent>, now: number): void {
    const verb = opts.mode === 'observe' ? 'would shed' : 'shedding'
    if (event.type === 'start') {
      startLogged = now - lastStartLog >= LOG_INTERVAL_MS
      if (!startLogged) return
      lastStartLog = now
      fastify.log.warn({ admission: event }, `fastify-admission: ${verb} started`)
    } else if (startLogged) {
      fastify.log.warn({ admission: event }, `fastify-admission: ${verb} stopped`)
    }
  }

  function admissionSample (): void {
    controller.onWindow(monitor.read(), performance.now())
  }
  const timer = setInterval(admissionSample, opts.sampleInterval)
  timer.unref()

  fastify.decorate(kAdmissionController, controller)
  fastify.decorate('admission', {
    getter () {
      return controller.snapshot()
    }
  })

  fastify.addHook('onRoute', function admissionOnRoute (route: RouteOptions) {
    const config = resolveRouteConfig(route.config?.admission, `${String(route.method)} ${route.url}`)
    if (config.exempt) return
    const existing = route.onRequest
    route.onRequest = existing === undefined
      ? [admissionOnRequest]
      : [admissionOnRequest as onRequestHookHandler].concat(existing)
  })

  fastify.addHook('onClose', async function admissionOnClose () {
    clearInterval(timer)
    monitor.stop()
    metrics.unregister()
  })

  if (opts.metricsPath !== false) {
    const registry = metrics.registry
    fastify.get(opts.metricsPath, {
      config: { admission: { exempt: true } },
      logLevel: 'warn'
    }, async function admissionMetricsRoute (_request, reply) {
      reply.header('content-type', registry.contentType)
      return await registry.metrics()
    })
  }

  if (opts.underPressure !== false && !fastify.hasDecorator('memoryUsage')) {
    // A payload returned by the pressure handler is sent by under-pressure, which then stops the request
    // there (its typings say void; its runtime and our tests say payload). Sending it ourselves and
    // returning nothing would let the request go on while an async onSend hook is still running.
    function admissionPressureHandler (request: FastifyRequest, reply: FastifyReply, type: string): string | undefined {
      if (request.routeOptions.config.admission?.exempt === true) return undefined
      controller.refuse(underPressureReason(type))
      refuse(reply)
      return refusalBody
    }
    await fastify.register(underPressurePlugin, {
      ...opts.underPressure,
      pressureHandler: admissionPressureHandler as unknown as FastifyUnderPressureOptions['pressureHandler']
    })
  }
}

declare module 'fastify' {
  interface FastifyInstance {
    [kAdmissionController]: AdmissionController
  }
}

/** fastify-admission: adaptive admission control and overload protection. */
export const admission = fp(plugin, { fastify: '5.x', name: 'fastify-admission' })
export default admission
