// Shared helpers for the node --test suites: every suite runs the real engine.
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
export const { BridgeManager } = require('../index.js')

/** A started bridge; `config` uses the YAML key names. */
export async function started(config) {
  const bridge = new BridgeManager(config)
  await bridge.initialize()
  return bridge
}

/** Resolves with the error the promise rejects with; fails if it resolves. */
export async function rejection(promise) {
  try {
    const value = await promise
    throw new Error(`expected a rejection, got ${JSON.stringify(value)}`)
  } catch (e) {
    if (e && typeof e.code === 'string') return e
    throw e
  }
}

/** A promise and its resolve function, to hold handlers open. */
export function gate() {
  let open
  const promise = new Promise((resolve) => {
    open = resolve
  })
  return { promise, open }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
