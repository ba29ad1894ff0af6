// Boot-time check that the admission decision is the first onRequest hook of every route, so that a
// refused request does not pay for the application's own hooks (auth, sessions). Fastify runs hooks in
// the order they were added; it has no public way to list a route's hooks other than printRoutes(), so
// this reads its output. If that output changes shape, the check finds nothing and stays silent.

import type { FastifyInstance } from 'fastify'

const ON_REQUEST_LINE = /\(onRequest\) (\[.*\])\s*$/

/** Names of the hooks that run before `hookName` on at least one route, in first-seen order. */
export function hooksBeforeAdmission (fastify: FastifyInstance, hookName: string): string[] {
  const ours = `${hookName}()`
  const before = new Set<string>()
  let tree: string
  try {
    tree = fastify.printRoutes({ includeMeta: ['onRequest'], commonPrefix: false })
  } catch {
    return []
  }
  for (const line of tree.split('\n')) {
    const match = ON_REQUEST_LINE.exec(line)
    if (match === null) continue
    let names: unknown[]
    try {
      names = JSON.parse(match[1] as string)
    } catch {
      continue
    }
    const at = names.indexOf(ours)
    for (let i = 0; i < at; i++) before.add(String(names[i]))
  }
  return [...before]
}
