// The ceilings @fastify/under-pressure watches well (heap, RSS, a custom health check), consulted by
// this plugin's decision instead of refusing on their own. under-pressure is registered only when a
// ceiling is asked for, in a child context of its own: its decorators cannot collide with an instance
// the application registers before or after this plugin, and its hook applies to no route.

import type { FastifyInstance } from 'fastify'
import underPressurePlugin from '@fastify/under-pressure'
import type { RejectReason } from './admission.js'
import type { UnderPressureCeilings } from './options.js'

export interface Ceilings {
  /** The reason to refuse now, or undefined when every ceiling holds. */
  veto (): RejectReason | undefined
}

/** Registers under-pressure for the ceilings asked for; undefined when none is (or `false`). */
export async function registerCeilings (fastify: FastifyInstance, ceilings: Readonly<UnderPressureCeilings> | false): Promise<Ceilings | undefined> {
  if (ceilings === false) return undefined
  const maxHeap = ceilings.maxHeapUsedBytes ?? 0
  const maxRss = ceilings.maxRssBytes ?? 0
  if (maxHeap === 0 && maxRss === 0 && ceilings.healthCheck === undefined) return undefined
  let watcher!: Pick<FastifyInstance, 'isUnderPressure' | 'memoryUsage'>
  await fastify.register(async function admissionCeilings (child) {
    await child.register(underPressurePlugin, { ...ceilings })
    watcher = child
  })
  return {
    veto () {
      // Every request asks; isUnderPressure() only compares numbers sampled on under-pressure's timer.
      if (!watcher.isUnderPressure()) return undefined
      const usage = watcher.memoryUsage()
      return maxHeap > 0 && usage.heapUsed > maxHeap ? 'heap' : maxRss > 0 && usage.rssBytes > maxRss ? 'rss' : 'health'
    }
  }
}
