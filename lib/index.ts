// Fastify glue: option resolution at registration, one global onRequest hook that decides for every
// route of the app (declared before or after the plugin), the permits, the sampler timer, the ceilings
// of @fastify/under-pressure, the metrics path, and the drain on close.

import { channel } from 'node:diagnostics_channel'
import type { EventEmitter } from 'node:events'
import type { IncomingMessage, Server, ServerResponse } from 'node:http'
import type { Http2Session } from 'node:http2'
import { performance } from 'node:perf_hooks'
import type {
  FastifyBaseLogger, FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest, HookHandlerDoneFunction,
  RouteOptions
} from 'fastify'
import fp from 'fastify-plugin'
import type { RouteCost } from './costs.js'
import {
  AdmissionController, DEFAULT_CLASS, type AdmissionSnapshot, type SheddingEvent
} from './admission.js'
import { registerCeilings } from './ceilings.js'
import { bothRecorders, Histograms, type Recorder } from './histogram.js'
import { hooksBeforeAdmission } from './hook-order.js'
import { registerMetrics } from './metrics.js'
import { registerOpenTelemetry, type OtelHandle } from './otel.js'
import {
  controllerSettingsOf, resolveOptions, resolveRouteConfig, turnSettingsOf, type AdmissionOptions, type AdmissionRouteConfig
} from './options.js'
import { Permits } from './permits.js'
import { RouteConfigReader } from './route-config.js'
import { DELAY_RESOLUTION_MS, LoopMonitor } from './signals.js'
import { warmNextTick } from './warm-ticks.js'
import { LoopTurns } from './turns.js'

export type { AdmissionOptions, AdmissionRouteConfig, UnderPressureCeilings } from './options.js'
export { InvalidOptionError, InvalidRouteConfigError, MeterConflictError, MetricsConflictError, resolveOptions } from './options.js'
export type { AdmissionSnapshot, Mode, RejectReason, WindowReport } from './admission.js'
export { AdmissionController } from './admission.js'

declare module 'fastify' {
  interface FastifyInstance {
    /**
     * Read-only snapshot of fastify-admission's state; each access returns a fresh frozen object.
     * Undefined on an app that did not register the plugin.
     */
    readonly admission?: AdmissionSnapshot
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

/**
 * Diagnostics channel (`node:diagnostics_channel`) on which every app with the plugin publishes a
 * WindowReport at the end of each sampling window: what the window saw and what the controller decided.
 * Nothing is built or sent while no one subscribes.
 */
export const WINDOW_CHANNEL = 'fastify-admission:window'
const windowChannel = channel(WINDOW_CHANNEL)

/** Code of the refusal body. */
export const OVERLOADED_CODE = 'FST_ERR_ADMISSION_OVERLOADED'

/** At most one "shedding started" log line per this long. */
const LOG_INTERVAL_MS = 10_000

/**
 * What the plugin keeps per route, cached on the route's own config object: its resolved
 * `config.admission` and its slot in the cost model.
 */
const kRoute = Symbol('fastify-admission.route')
interface RouteEntry { readonly exempt: boolean, readonly cost: RouteCost }
type RouteConfigHolder = Record<PropertyKey, unknown> & { [kRoute]?: RouteEntry }

/** On the raw request once decided: whether Fastify's request logging should skip it. */
const kSkipLog = Symbol('fastify-admission.skip-log')
type Marked = IncomingMessage & { [kSkipLog]?: boolean }

/**
 * For Fastify's `disableRequestLogging` (or a log controller's `isLogDisabled`): skips the request
 * logging of refused requests, and, while this process is shedding, the "incoming request" line that
 * Fastify writes before the decision is known. Admitted requests keep their completion and error
 * lines. Shedding start and stop are still logged (warn).
 */
export function skipRequestLogWhileShedding (request: FastifyRequest): boolean {
  const decided = (request.raw as Marked)[kSkipLog]
  if (decided !== undefined) return decided
  return (request.server as FastifyInstance & { [kAdmissionController]?: AdmissionController })[kAdmissionController]?.shedding === true
}

function loopIdleMs (): number {
  return performance.nodeTiming.idleTime
}

function closeSocketOfResponse (this: ServerResponse): void {
  this.req.socket.destroy()
}

const plugin: FastifyPluginAsync<AdmissionOptions> = async function fastifyAdmission (fastify, rawOptions) {
  const opts = resolveOptions(rawOptions)
  warmNextTick()
  const turns = new LoopTurns(turnSettingsOf(opts), { now: performance.now.bind(performance), idle: loopIdleMs, atTurnEnd: setImmediate })
  const controller = new AdmissionController(controllerSettingsOf(opts), performance.now(), { onShedding: logShedding, turns, now: performance.now.bind(performance), windows: windowChannel })
  const histograms = new Histograms()
  // Also OpenTelemetry's histograms once its instruments are registered (below).
  let recorder: Recorder = histograms
  const permits = new Permits(function admissionRelease (latencyMs, finished, observed, route) {
    controller.release(latencyMs, finished, observed, route)
    recorder.request('admitted', latencyMs / 1000)
  }, performance.now.bind(performance))
  // Everything that can fail comes before the monitor and the timer start: a failed boot leaves
  // nothing running.
  const metrics = registerMetrics(controller, histograms, opts.metricsPrefix, opts.registry, fastify.log)
  try {
    fastify.decorate(kAdmissionController, controller)
    fastify.decorate('admission', {
      getter () {
        return controller.snapshot()
      }
    })
  } catch (err) {
    metrics.unregister()
    throw err
  }
  // In a child context of its own: its decorators cannot collide with an instance the app registers
  // before or after, and its verdict goes through this plugin's decision.
  const ceilings = await registerCeilings(fastify, opts.underPressure)
  // Last of what can fail: a failed boot leaves no callback on the app's meter. A meter another
  // instance reports on fails the boot.
  let otel: OtelHandle | undefined
  try {
    otel = opts.meter === undefined ? undefined : registerOpenTelemetry(opts.meter, controller)
  } catch (err) {
    metrics.unregister()
    throw err
  }
  if (otel !== undefined) recorder = bothRecorders(histograms, otel.recorder)

  const statusCode = opts.statusCode
  const refusalBody = JSON.stringify({
    statusCode,
    code: OVERLOADED_CODE,
    error: statusCode === 503 ? 'Service Unavailable' : 'Too Many Requests',
    message: 'Server is overloaded, retry later'
  })
  // Refusals and scrapes do not write Fastify's "request completed" info line.
  const quietLog: FastifyBaseLogger = fastify.log.child({}, { level: 'warn' })
  // Cleared when the application has a route of its own at this path, whatever its method or
  // constraints (an internal-host-only /metrics must not be answered for every other host).
  let metricsPath = opts.metricsPath
  const routeConfigs = new RouteConfigReader()

  function admissionOnRequest (request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction): void {
    const holder = routeConfigs.read(request) as RouteConfigHolder
    const route = holder[kRoute] ?? routeOf(holder, request)
    const raw = request.raw as Marked
    if (route.exempt) {
      raw[kSkipLog] = false
      done()
      return
    }
    if (metricsPath !== false && request.is404 && isMetricsRequest(request)) {
      serveMetrics(reply)
      return
    }
    const outcome = controller.acquire(DEFAULT_CLASS, undefined, ceilings?.veto(), route.cost)
    raw[kSkipLog] = outcome === 'rejected'
    if (outcome === 'rejected') {
      // Timed here: Fastify keeps no start time without a logger or an onResponse hook (its elapsedTime
      // reads 0 then).
      const refusedAt = performance.now()
      reply.log = quietLog
      reply
        .code(statusCode)
        .header('retry-after', controller.retryAfter.value())
        .header('content-type', 'application/json; charset=utf-8')
      if (controller.draining && raw.httpVersionMajor < 2) reply.header('connection', 'close')
      if ((raw as IncomingMessage & { upgrade?: boolean }).upgrade === true) {
        // A refused upgrade: nothing else owns this socket (the websocket plugin's own hooks may not have
        // run), so it is closed once the refusal is out.
        reply.header('connection', 'close')
        reply.raw.once('finish', closeSocketOfResponse)
      }
      reply.send(refusalBody)
      recorder.request('rejected', (performance.now() - refusedAt) / 1000)
      return
    }
    // An admission read the clock (the turns' readAt); an observed refusal may not have (a ceiling's).
    permits.hold(raw, reply.raw, reply, outcome === 'observed', route.cost, outcome === 'admitted' ? turns.readAt : undefined)
    done()
  }

  // A route declared after registration is validated in onRoute (fails at boot); one declared before
  // (an unawaited register) at its first request.
  function routeOf (holder: RouteConfigHolder, request: FastifyRequest): RouteEntry {
    const config = resolveRouteConfig(holder.admission, `${request.method} ${String(holder.url ?? request.url)}`)
    // An exempt route holds no permit: it needs no cost of its own.
    const route: RouteEntry = { exempt: config.exempt, cost: config.exempt ? controller.costs.shared : controller.costs.register() }
    holder[kRoute] = route
    return route
  }

  function isMetricsRequest (request: FastifyRequest): boolean {
    const url = request.url
    const query = url.indexOf('?')
    return (query === -1 ? url : url.slice(0, query)) === metricsPath && request.method === 'GET'
  }

  function serveMetrics (reply: FastifyReply): void {
    reply.log = quietLog
    metrics.text().then(
      text => reply.header('content-type', metrics.contentType).send(text),
      err => reply.send(err)
    )
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

  const monitor = new LoopMonitor(DELAY_RESOLUTION_MS, function admissionLoopDelay (seconds) {
    recorder.loopDelay(seconds)
  })
  function admissionSample (): void {
    permits.sweep()
    controller.onWindow(monitor.read(), performance.now())
  }
  const timer = setInterval(admissionSample, opts.sampleInterval)
  timer.unref()

  fastify.addHook('onRequest', admissionOnRequest)
  const onConnection = (): void => { turns.connection() }
  fastify.server.on('connection', onConnection)

  function yieldMetricsPath (): void {
    fastify.log.info({ path: metricsPath }, 'fastify-admission: the application has its own route at the metrics path; the plugin does not serve it')
    metricsPath = false
  }

  fastify.addHook('onRoute', function admissionOnRoute (route: RouteOptions) {
    resolveRouteConfig(route.config?.admission, `${String(route.method)} ${route.url}`)
    if (metricsPath !== false && route.url === metricsPath) yieldMetricsPath()
  })

  fastify.addHook('onReady', function admissionCheckHookOrder (done) {
    // Routes declared before the plugin were not seen by onRoute (constrained ones are not found here).
    const path = metricsPath
    if (path !== false && fastify.supportedMethods.some(method => fastify.hasRoute({ method, url: path }))) yieldMetricsPath()
    const before = hooksBeforeAdmission(fastify, admissionOnRequest.name)
    if (before.length > 0) {
      fastify.log.warn({ hooks: before },
        'fastify-admission: onRequest hooks run before the admission decision, so refused requests still pay for them; register fastify-admission before the plugins that add them')
    }
    done()
  })

  // HTTP/2 servers have no closeAllConnections(): their sessions are tracked to be closed at the deadline.
  const server = fastify.server as Partial<Server> & EventEmitter
  const sessions = new Set<Http2Session>()
  if (typeof server.closeAllConnections !== 'function') {
    server.on('session', function admissionTrackSession (session: Http2Session) {
      sessions.add(session)
      session.once('close', () => sessions.delete(session))
    })
  }
  let drainTimer: NodeJS.Timeout | undefined
  fastify.addHook('preClose', function admissionDrain (done) {
    controller.draining = true
    permits.closeConnectionsWhenDone()
    // In-flight requests (and open streams) get until the deadline; then their connections close, so
    // that close() ends even when a handler hangs or an SSE client stays.
    drainTimer = setTimeout(function admissionDrainDeadline () {
      server.closeAllConnections?.()
      for (const session of sessions) session.destroy()
    }, opts.drainTimeout)
    drainTimer.unref()
    done()
  })

  fastify.addHook('onClose', function admissionOnClose (_instance, done) {
    fastify.server.removeListener('connection', onConnection)
    clearTimeout(drainTimer)
    clearInterval(timer)
    monitor.stop()
    metrics.unregister()
    otel?.stop()
    done()
  })
}

declare module 'fastify' {
  interface FastifyInstance {
    [kAdmissionController]: AdmissionController
  }
}

/** fastify-admission: adaptive admission control and overload protection. */
export const admission = fp(plugin, { fastify: '5.x', name: 'fastify-admission' })
export default admission
