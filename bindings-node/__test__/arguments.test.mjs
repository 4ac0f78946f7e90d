// Arguments of the wrong type: every throw and every rejection carries a
// DESIGN.md `.code`, as for any other bad input, and methods that return a
// Promise reject instead of throwing.
import { test } from 'node:test'
import assert from 'node:assert/strict'

import { BridgeManager, started } from './helpers.mjs'

/** Asserts `f()` throws synchronously with `code`. */
function throwsCode(what, f, code) {
  assert.throws(f, (e) => {
    assert.ok(e instanceof Error, `${what}: threw ${e}`)
    assert.equal(e.code, code, `${what}: ${e.code} ${e.message}`)
    return true
  })
}

/** Asserts `f()` returns a Promise (no throw) that rejects with `code`. */
async function rejectsCode(what, f, code) {
  let p
  try {
    p = f()
  } catch (e) {
    assert.fail(`${what} threw (${e.code}: ${e.message}) instead of returning a rejected Promise`)
  }
  assert.ok(p instanceof Promise, `${what} did not return a Promise`)
  await assert.rejects(p, (e) => {
    assert.ok(e instanceof Error, `${what}: rejected with ${e}`)
    assert.equal(e.code, code, `${what}: ${e.code} ${e.message}`)
    return true
  })
}

test('synchronous methods throw INVALID_MESSAGE or CONFIG for wrong argument types', async () => {
  const bridge = await started()
  throwsCode('registerRoute(5, fn)', () => bridge.registerRoute(5, () => 1), 'INVALID_MESSAGE')
  throwsCode('registerRoute()', () => bridge.registerRoute(), 'INVALID_MESSAGE')
  throwsCode("registerRoute('x.y', 'nofn')", () => bridge.registerRoute('x.y', 'nofn'), 'INVALID_MESSAGE')
  throwsCode("registerRoute('x.y')", () => bridge.registerRoute('x.y'), 'INVALID_MESSAGE')
  throwsCode('unregisterRoute(undefined)', () => bridge.unregisterRoute(undefined), 'INVALID_MESSAGE')
  throwsCode('unregisterRoute({})', () => bridge.unregisterRoute({}), 'INVALID_MESSAGE')
  throwsCode('registerRustEcho(5)', () => bridge.registerRustEcho(5), 'INVALID_MESSAGE')
  throwsCode('fromYaml(undefined)', () => BridgeManager.fromYaml(undefined), 'CONFIG')
  throwsCode('fromYaml(5)', () => BridgeManager.fromYaml(5), 'CONFIG')
  throwsCode('fromFile(null)', () => BridgeManager.fromFile(null), 'CONFIG')
  throwsCode('fromFile({})', () => BridgeManager.fromFile({}), 'CONFIG')
  assert.match(
    (() => {
      try {
        bridge.registerRoute('x.y', 'nofn')
      } catch (e) {
        return e.message
      }
    })(),
    /handler must be a function/,
  )
  // The bridge still works, and the rejected registrations left nothing behind.
  assert.deepEqual(bridge.routes(), [])
  bridge.registerRoute('agents.echo', (m) => m.payload)
  assert.equal(await bridge.route('agents.echo', 7), 7)
  assert.equal(bridge.unregisterRoute('agents.echo'), true)
  await bridge.shutdown()
})

test('Promise methods reject with a code for wrong argument types, never throw', async () => {
  const bridge = await started()
  await rejectsCode('replay(5)', () => bridge.replay(5), 'INVALID_MESSAGE')
  await rejectsCode('replay()', () => bridge.replay(), 'INVALID_MESSAGE')
  await rejectsCode("authorize('t', 5)", () => bridge.authorize('t', 5), 'INVALID_MESSAGE')
  await rejectsCode("authorize('t', 'agents.x', 5)", () => bridge.authorize('t', 'agents.x', 5), 'INVALID_MESSAGE')
  await rejectsCode("shutdown('x')", () => bridge.shutdown('x'), 'INVALID_MESSAGE')
  await rejectsCode('shutdown(-1)', () => bridge.shutdown(-1), 'INVALID_MESSAGE')
  await rejectsCode('connect(5)', () => BridgeManager.connect(5), 'CONFIG')
  await rejectsCode('connect()', () => BridgeManager.connect(), 'CONFIG')
  assert.equal(bridge.isRunning, true)
  await bridge.shutdown(null)
  assert.equal(bridge.isRunning, false)
})
