// Options: the public option types and one pure resolveOptions() that fills every default, validates
// everything once at registration, and returns a frozen object the hot path only reads.

import createError from '@fastify/error'
import type { Meter } from '@opentelemetry/api'
import type { Registry } from 'prom-client'
import type { FastifyUnderPressureOptions } from '@fastify/under-pressure'
import type { ControllerSettings, Mode } from './admission.js'
import type { TurnSettings } from './turns.js'

export const InvalidOptionError = createError<[string, string, string]>(
  'FST_ERR_ADMISSION_INVALID_OPTION',
  'fastify-admission: invalid option "%s": expected %s, received %s',
  500,
  TypeError
)

export const MetricsConflictError = createError<[string]>(
  'FST_ERR_ADMISSION_METRICS_CONFLICT',
  'fastify-admission: the registry passed as "registry" already holds metrics named %s (another instance of the plugin?); give each instance its own registry or metricsPrefix',
  500,
  Error
)

export const MeterConflictError = createError(
  'FST_ERR_ADMISSION_METER_CONFLICT',
  'fastify-admission: the meter passed as "meter" already reports another instance of the plugin (their series would overwrite each other); give each instance its own meter, e.g. metrics.getMeter(\'admin\')',
  500,
  Error
)

export const InvalidRouteConfigError = createError<[string, string, string, string]>(
  'FST_ERR_ADMISSION_INVALID_ROUTE_CONFIG',
  'fastify-admission: invalid config.admission.%s on route %s: expected %s, received %s',
  500,
  TypeError
)

/** The @fastify/under-pressure ceilings passed through (its event-loop checks are not used for control). */
export type UnderPressureCeilings = Pick<FastifyUnderPressureOptions,
  'maxHeapUsedBytes' | 'maxRssBytes' | 'healthCheck' | 'healthCheckInterval' | 'sampleInterval'>

export interface AdmissionOptions {
  /**
   * `enforce` refuses requests over the limit; `observe` lets them through and counts them as
   * `would_reject`, for a safe rollout.
   * @defaultValue 'enforce'
   */
  mode?: Mode
  /**
   * Status code of a refusal.
   * @defaultValue 503
   */
  statusCode?: 503 | 429
  /**
   * How often the event-loop signals are sampled and the limit updated, milliseconds (10-10000).
   * @defaultValue 100
   */
  sampleInterval?: number
  /**
   * Nothing is refused for this long after the plugin starts, milliseconds. The loop-turn budget
   * protects a process from its first request without anything learned, so the default is none; a
   * grace lets a flood on a new instance queue work for its whole length.
   * @defaultValue 0
   */
  startupGrace?: number
  /**
   * The loop delay the controller steers to, milliseconds (1-1000). While every loop turn has run at
   * least this long for `congestionInterval` (a standing queue), a request read after its turn has run
   * this long is refused; while the concurrency limit binds, so is a request read after its turn has
   * run this long from its start, timers included. It bounds how long awaits, refusals and new
   * connections wait, whatever the handlers do (synchronous ones included). Lower: faster refusals and
   * awaits, fewer requests per turn.
   * @defaultValue 5
   */
  turnBudget?: number
  /**
   * How long the loop must stay busy (turns late, or no idle moment) before it counts as overloaded,
   * milliseconds (10-10000); a twentieth of it once in-flight has reached a learned limit. The accept
   * backlog needs 16 turns that each accepted a connection spanning a quarter of it, the cold surge
   * (a process that has not learned its capacity) 6 spanning a tenth. Shorter reacts
   * faster to a burst; longer refuses less when random arrivals below capacity bunch up.
   * @defaultValue 100
   */
  congestionInterval?: number
  /**
   * Event-loop utilisation the limit steers to while it refuses (0.5-1). Lower leaves idle moments
   * in which the loop accepts connections and answers refusals sooner, at the cost of throughput.
   * @defaultValue 0.98
   */
  targetUtilization?: number
  /**
   * Hard ceiling on requests in flight, enforced always (not only under load); 0 = none.
   * @defaultValue 0
   */
  maxInflight?: number
  /**
   * Hard ceiling on event-loop delay (99th percentile over the last sampling window), milliseconds:
   * every request is refused while it is exceeded, as @fastify/under-pressure does; 0 = none.
   * @defaultValue 0
   */
  maxEventLoopDelay?: number
  /**
   * Hard ceiling on event-loop utilisation over the last sampling window (0-1): every request is
   * refused while it is exceeded; 0 = none.
   * @defaultValue 0
   */
  maxEventLoopUtilization?: number
  /**
   * Limit used until capacity and baseline latency have been measured.
   * @defaultValue 50
   */
  initialLimit?: number
  /**
   * Floor of the adaptive concurrency limit.
   * @defaultValue 2
   */
  minLimit?: number
  /**
   * Ceiling of the adaptive concurrency limit.
   * @defaultValue 10000
   */
  maxLimit?: number
  /**
   * Queueing the limit allows, as a fraction of the requests' own latency (0-4). Lower trades a little
   * throughput for lower admitted latency under overload.
   * @defaultValue 0.25
   */
  headroom?: number
  /**
   * On `app.close()`, how long requests in flight (and open streams) may take to finish before their
   * connections are closed, milliseconds. New requests are refused from the start of the close.
   * @defaultValue 10000
   */
  drainTimeout?: number
  /**
   * Smallest Retry-After advertised, whole seconds.
   * @defaultValue 1
   */
  retryAfterMin?: number
  /**
   * Largest Retry-After advertised, whole seconds.
   * @defaultValue 30
   */
  retryAfterMax?: number
  /**
   * prom-client registry the metrics are registered in.
   * @defaultValue prom-client's global `register`
   */
  registry?: Registry
  /**
   * Prefix of every metric name (two instances in one process sharing a registry need different ones).
   * @defaultValue 'fastify_admission_'
   */
  metricsPrefix?: string
  /**
   * Path at which `registry` is served for Prometheus (GET), or `false` when the application exposes
   * metrics itself. Served only when no route of the application matches the path (an app's or
   * another plugin's own `/metrics` wins); never refused, never counted.
   * @defaultValue '/metrics'
   */
  metricsPath?: string | false
  /**
   * OpenTelemetry meter (`metrics.getMeter('my-api')` of `@opentelemetry/api`) on which the plugin also
   * reports its gauges, its request counter and its histograms, next to the Prometheus metrics. Its
   * callback is removed on close.
   * @defaultValue none
   */
  meter?: Meter
  /**
   * @fastify/under-pressure ceilings (heap, RSS, custom health check). under-pressure is registered,
   * in a context of its own, only when one is set, so an app's own instance (before or after) is
   * unaffected. Its verdict goes through this plugin's decision: same reply, counted by reason, and
   * nothing refused in observe mode. `false` is the same as none.
   * @defaultValue {}
   */
  underPressure?: UnderPressureCeilings | false
}

/** Per-route settings: `{ config: { admission: { ... } } }`. */
export interface AdmissionRouteConfig {
  /**
   * Never refuse this route (health checks, readiness probes) and leave it out of the accounting.
   * @defaultValue false
   */
  exempt?: boolean
}

export interface ResolvedOptions {
  readonly mode: Mode
  readonly statusCode: 503 | 429
  readonly sampleInterval: number
  readonly startupGrace: number
  readonly turnBudget: number
  readonly congestionInterval: number
  readonly targetUtilization: number
  readonly maxInflight: number
  readonly maxEventLoopDelay: number
  readonly maxEventLoopUtilization: number
  readonly drainTimeout: number
  readonly initialLimit: number
  readonly minLimit: number
  readonly maxLimit: number
  readonly headroom: number
  readonly retryAfterMin: number
  readonly retryAfterMax: number
  readonly registry: Registry | undefined
  readonly metricsPrefix: string
  readonly metricsPath: string | false
  readonly meter: Meter | undefined
  readonly underPressure: Readonly<UnderPressureCeilings> | false
}

const KNOWN = new Set<string>([
  'mode', 'statusCode', 'sampleInterval', 'startupGrace', 'turnBudget', 'congestionInterval',
  'targetUtilization', 'maxInflight', 'maxEventLoopDelay', 'maxEventLoopUtilization', 'drainTimeout', 'initialLimit', 'minLimit', 'maxLimit',
  'headroom', 'retryAfterMin', 'retryAfterMax', 'registry', 'metricsPrefix', 'metricsPath', 'meter', 'underPressure'
])
const UNDER_PRESSURE_KNOWN = new Set<string>([
  'maxHeapUsedBytes', 'maxRssBytes', 'healthCheck', 'healthCheckInterval', 'sampleInterval'
])
// Fastify adds these to every plugin's options object.
const FASTIFY_OWN = new Set<string>(['prefix', 'logLevel', 'logSerializers'])
const METRIC_PREFIX = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/

function show (value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value)
  if (typeof value === 'function') return 'a function'
  if (value === null) return 'null'
  if (typeof value === 'object') return Array.isArray(value) ? 'an array' : 'an object'
  return String(value)
}

function integer (opts: Record<string, unknown>, name: string, fallback: number, min: number, max: number): number {
  const value = opts[name]
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new InvalidOptionError(name, `an integer from ${min} to ${max}`, show(value))
  }
  return value
}

/** A number from `min` to 1 (or 0 when `min` is 0: the ceiling is off). */
function fraction (opts: Record<string, unknown>, name: string, fallback: number, min: number): number {
  const value = opts[name]
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !(value >= min && value <= 1)) {
    throw new InvalidOptionError(name, `a number from ${min} to 1`, show(value))
  }
  return value
}

function oneOf<T> (opts: Record<string, unknown>, name: string, allowed: readonly T[]): T {
  const value = opts[name]
  if (value === undefined) return allowed[0] as T
  if (!allowed.includes(value as T)) {
    throw new InvalidOptionError(name, `one of ${allowed.map(show).join(', ')}`, show(value))
  }
  return value as T
}

function isRegistry (value: unknown): value is Registry {
  return typeof value === 'object' && value !== null &&
    typeof (value as Registry).registerMetric === 'function' && typeof (value as Registry).metrics === 'function'
}

const METER_METHODS = ['createObservableGauge', 'createObservableCounter', 'createHistogram',
  'addBatchObservableCallback', 'removeBatchObservableCallback'] as const

function isMeter (value: unknown): value is Meter {
  return typeof value === 'object' && value !== null &&
    METER_METHODS.every(method => typeof (value as Meter)[method] === 'function')
}

function resolveUnderPressure (value: unknown): UnderPressureCeilings | false {
  if (value === undefined) return Object.freeze({})
  if (value === false) return false
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new InvalidOptionError('underPressure', 'an object or false', show(value))
  }
  const up = value as Record<string, unknown>
  for (const key of Object.keys(up)) {
    if (!UNDER_PRESSURE_KNOWN.has(key)) {
      throw new InvalidOptionError(`underPressure.${key}`, `one of ${[...UNDER_PRESSURE_KNOWN].join(', ')}`, 'an unknown option')
    }
  }
  for (const key of ['maxHeapUsedBytes', 'maxRssBytes', 'healthCheckInterval', 'sampleInterval']) {
    const v = up[key]
    if (v !== undefined && !(typeof v === 'number' && Number.isFinite(v) && v > 0)) {
      throw new InvalidOptionError(`underPressure.${key}`, 'a positive number', show(v))
    }
  }
  if (up.healthCheck !== undefined && typeof up.healthCheck !== 'function') {
    throw new InvalidOptionError('underPressure.healthCheck', 'a function', show(up.healthCheck))
  }
  if (up.healthCheck !== undefined && up.healthCheckInterval === undefined) {
    throw new InvalidOptionError('underPressure.healthCheckInterval', 'a positive number when healthCheck is set', 'undefined')
  }
  return Object.freeze({ ...up }) as UnderPressureCeilings
}

/** A shedding episode ends after this long without refusals, ms. */
const QUIET_MS = 1000

/** The controller's settings for resolved options (the plugin and the simulator build it alike). */
export function controllerSettingsOf (opts: ResolvedOptions): ControllerSettings {
  return {
    mode: opts.mode,
    minLimit: opts.minLimit,
    maxLimit: opts.maxLimit,
    initialLimit: opts.initialLimit,
    headroom: opts.headroom,
    busyTarget: opts.targetUtilization,
    maxInflight: opts.maxInflight,
    maxDelayMs: opts.maxEventLoopDelay,
    maxUtilization: opts.maxEventLoopUtilization,
    graceMs: opts.startupGrace,
    retryAfter: { min: opts.retryAfterMin, max: opts.retryAfterMax },
    quietMs: QUIET_MS
  }
}

/** The loop turns' settings for resolved options. */
export function turnSettingsOf (opts: ResolvedOptions): TurnSettings {
  return { budgetMs: opts.turnBudget, intervalMs: opts.congestionInterval }
}

/** Validate and complete the options; throws a FST_ERR_ADMISSION_INVALID_OPTION naming the bad one. */
export function resolveOptions (input: unknown): ResolvedOptions {
  if (input === undefined || input === null) input = {}
  if (typeof input !== 'object' || Array.isArray(input)) {
    throw new InvalidOptionError('options', 'an object', show(input))
  }
  const opts = input as Record<string, unknown>
  for (const key of Object.keys(opts)) {
    if (!KNOWN.has(key) && !FASTIFY_OWN.has(key)) {
      throw new InvalidOptionError(key, 'a known option (see the README options table)', 'an unknown option')
    }
  }

  const mode = oneOf<Mode>(opts, 'mode', ['enforce', 'observe'])
  const statusCode = oneOf<503 | 429>(opts, 'statusCode', [503, 429])
  const sampleInterval = integer(opts, 'sampleInterval', 100, 10, 10_000)
  const startupGrace = integer(opts, 'startupGrace', 0, 0, 600_000)
  const turnBudget = integer(opts, 'turnBudget', 5, 1, 1000)
  const congestionInterval = integer(opts, 'congestionInterval', 100, 10, 10_000)
  const targetUtilization = fraction(opts, 'targetUtilization', 0.98, 0.5)
  const maxInflight = integer(opts, 'maxInflight', 0, 0, 10_000_000)
  const maxEventLoopDelay = integer(opts, 'maxEventLoopDelay', 0, 0, 600_000)
  const maxEventLoopUtilization = fraction(opts, 'maxEventLoopUtilization', 0, 0)
  const drainTimeout = integer(opts, 'drainTimeout', 10_000, 0, 3_600_000)
  const minLimit = integer(opts, 'minLimit', 2, 1, 1_000_000)
  const maxLimit = integer(opts, 'maxLimit', 10_000, 1, 1_000_000)
  if (maxLimit < minLimit) {
    throw new InvalidOptionError('maxLimit', `an integer >= minLimit (${minLimit})`, show(maxLimit))
  }
  const initialLimit = integer(opts, 'initialLimit', Math.min(Math.max(50, minLimit), maxLimit), minLimit, maxLimit)
  const headroom = opts.headroom === undefined ? 0.25 : opts.headroom
  if (typeof headroom !== 'number' || !(headroom >= 0 && headroom <= 4)) {
    throw new InvalidOptionError('headroom', 'a number from 0 to 4', show(headroom))
  }
  const retryAfterMin = integer(opts, 'retryAfterMin', 1, 1, 86_400)
  const retryAfterMax = integer(opts, 'retryAfterMax', Math.max(30, retryAfterMin), retryAfterMin, 86_400)

  const registry = opts.registry
  if (registry !== undefined && !isRegistry(registry)) {
    throw new InvalidOptionError('registry', 'a prom-client Registry', show(registry))
  }
  const metricsPrefix = opts.metricsPrefix === undefined ? 'fastify_admission_' : opts.metricsPrefix
  if (typeof metricsPrefix !== 'string' || (metricsPrefix !== '' && !METRIC_PREFIX.test(metricsPrefix))) {
    throw new InvalidOptionError('metricsPrefix', 'a Prometheus metric name prefix ([a-zA-Z_:][a-zA-Z0-9_:]*)', show(metricsPrefix))
  }
  const metricsPath = opts.metricsPath === undefined ? '/metrics' : opts.metricsPath
  if (metricsPath !== false && (typeof metricsPath !== 'string' || !metricsPath.startsWith('/'))) {
    throw new InvalidOptionError('metricsPath', 'a path starting with "/" or false', show(metricsPath))
  }
  const meter = opts.meter
  if (meter !== undefined && !isMeter(meter)) {
    throw new InvalidOptionError('meter', 'an OpenTelemetry Meter', show(meter))
  }
  const underPressure = resolveUnderPressure(opts.underPressure)

  return Object.freeze({
    mode,
    statusCode,
    sampleInterval,
    startupGrace,
    turnBudget,
    congestionInterval,
    targetUtilization,
    maxInflight,
    maxEventLoopDelay,
    maxEventLoopUtilization,
    drainTimeout,
    initialLimit,
    minLimit,
    maxLimit,
    headroom,
    retryAfterMin,
    retryAfterMax,
    registry,
    metricsPrefix,
    metricsPath,
    meter,
    underPressure
  })
}

export type ResolvedRouteConfig = Readonly<Required<AdmissionRouteConfig>>

/** Validate one route's `config.admission`; `route` names the route in the error. */
export function resolveRouteConfig (input: unknown, route: string): ResolvedRouteConfig {
  if (input === undefined) return NOT_EXEMPT
  if (typeof input !== 'object' || input === null || Array.isArray(input)) {
    throw new InvalidRouteConfigError('', route, 'an object', show(input))
  }
  const cfg = input as Record<string, unknown>
  for (const key of Object.keys(cfg)) {
    if (key !== 'exempt') throw new InvalidRouteConfigError(key, route, 'a known key (exempt)', 'an unknown key')
  }
  if (cfg.exempt === undefined || cfg.exempt === false) return NOT_EXEMPT
  if (cfg.exempt === true) return EXEMPT
  throw new InvalidRouteConfigError('exempt', route, 'a boolean', show(cfg.exempt))
}

const NOT_EXEMPT = Object.freeze({ exempt: false })
const EXEMPT = Object.freeze({ exempt: true })
