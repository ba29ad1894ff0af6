// The config object of the route a request matched, read on every request by the admission hook.
// Fastify's public `request.routeOptions` builds a new object of a dozen fields on each access (40-70 ns
// here); the config lives on Fastify's per-route context, an own symbol-keyed property of the request.
// That symbol is not exported, so it is found once, on the first request, and only used when the
// object under it holds exactly the config routeOptions returns. Otherwise routeOptions stays the way.

import type { FastifyRequest } from 'fastify'

export type ConfigHolder = Record<PropertyKey, unknown>

export class RouteConfigReader {
  /** undefined: not looked for yet; null: not found (routeOptions is used). */
  #key: symbol | null | undefined

  read (request: FastifyRequest): ConfigHolder {
    const key = this.#key
    if (key !== undefined && key !== null) {
      return ((request as unknown as Record<symbol, { config: ConfigHolder }>)[key] as { config: ConfigHolder }).config
    }
    const config = request.routeOptions.config as unknown as ConfigHolder
    if (key === undefined) this.#key = findKey(request, config)
    return config
  }
}

function findKey (request: FastifyRequest, config: ConfigHolder): symbol | null {
  const own = request as unknown as Record<symbol, unknown>
  for (const key of Object.getOwnPropertySymbols(request)) {
    const value = own[key]
    if (typeof value === 'object' && value !== null && (value as { config?: unknown }).config === config) return key
  }
  return null
}
