// Nothing per call or per registration outlives it: handler references and
// waits on handler Promises are counted by a test hook (`__testLeftovers()`:
// [Promises this thread still waits for, handler references not deleted]),
// so these tests see a leak exactly instead of guessing it from memory use.
import { test } from 'node:test'
import assert from 'node:assert/strict'

import { started, rejection, sleep } from './helpers.mjs'

/** Polls `f` (deletions land on this thread's event loop soon after) until it gives 0. */
async function settlesToZero(f) {
  let left = f()
  for (let i = 0; i < 500 && left !== 0; i++) {
    await sleep(10)
    left = f()
  }
  return left
}

test('unregistered and replaced handlers leave no reference to their function behind', async () => {
  const bridge = await started()
  const refs = () => bridge.__testLeftovers()[1]
  const before = refs()
  for (let i = 0; i < 50; i++) {
    const seen = []
    bridge.registerRoute(`agents.h${i}`, (m) => {
      seen.push(m.payload)
      return m.payload
    })
    assert.ok(refs() >= before + 1)
    // Called here on its own thread, and through the engine from a tokio thread.
    assert.equal(await bridge.route(`agents.h${i}`, i), i)
    await bridge.publish(`agents.h${i}`, -i - 1)
    for (let t = 0; t < 500 && seen.length < 2; t++) await sleep(5)
    assert.deepEqual(seen, [i, -i - 1])
    assert.equal(bridge.unregisterRoute(`agents.h${i}`), true)
  }
  bridge.registerRoute('agents.same', () => 1)
  bridge.registerRoute('agents.same', () => 2)
  assert.equal(await bridge.route('agents.same'), 2)
  bridge.unregisterRoute('agents.same')
  assert.equal(await settlesToZero(() => refs() - before), 0)
  await bridge.shutdown()
})

test('a call that timed out or was shut down no longer waits for its handler Promise', async () => {
  const bridge = await started()
  const waiting = () => bridge.__testLeftovers()[0]
  bridge.registerRoute('agents.never', () => new Promise(() => {}))
  bridge.registerRoute('agents.later', (m) => new Promise((r) => setTimeout(() => r(m.payload), 20)))
  const before = waiting()
  const timedOut = await Promise.all(
    Array.from({ length: 20 }, () => rejection(bridge.route('agents.never', 1, { timeout: 0.05 }))),
  )
  assert.deepEqual(new Set(timedOut.map((e) => e.code)), new Set(['TIMEOUT']))
  assert.equal(waiting() - before, 0)
  // A Promise that settles in time is still answered.
  assert.equal(await bridge.route('agents.later', 5, { timeout: 30 }), 5)
  assert.equal(waiting() - before, 0)
  // Calls still waiting when shutdown gives up are failed, and forgotten too.
  const pending = rejection(bridge.route('agents.never', 1, { timeout: 60 }))
  assert.equal(waiting() - before, 1)
  await bridge.shutdown(0)
  assert.equal((await pending).code, 'SHUTDOWN')
  assert.equal(await settlesToZero(() => waiting() - before), 0)
})
