// 10,000 concurrent routes: each answered exactly once, with its own reply,
// and the metrics add up.
import { test } from 'node:test'
import assert from 'node:assert/strict'

import { started, sleep } from './helpers.mjs'

const N = 10_000

for (const kind of ['async JS handler', 'plain JS handler', 'Rust handler']) {
  test(`${N} concurrent routes through a ${kind}, each answered once`, async () => {
    const bridge = await started({ bridge: { queue_size: N } })
    const calls = new Map()
    if (kind === 'Rust handler') {
      bridge.registerRustEcho('agents.work')
    } else if (kind === 'async JS handler') {
      bridge.registerRoute('agents.work', async (m) => {
        calls.set(m.payload.i, (calls.get(m.payload.i) ?? 0) + 1)
        if (m.payload.i % 7 === 0) await sleep(1)
        return { i: m.payload.i, sq: m.payload.i * m.payload.i }
      })
    } else {
      bridge.registerRoute('agents.work', (m) => {
        calls.set(m.payload.i, (calls.get(m.payload.i) ?? 0) + 1)
        return { i: m.payload.i, sq: m.payload.i * m.payload.i }
      })
    }
    const before = bridge.metrics()
    const replies = await Promise.all(
      Array.from({ length: N }, (_, i) => bridge.route('agents.work', { i }, { timeout: 60 })),
    )
    for (let i = 0; i < N; i++) {
      if (kind === 'Rust handler') assert.deepEqual(replies[i], { i })
      else assert.deepEqual(replies[i], { i, sq: i * i })
    }
    if (kind !== 'Rust handler') {
      assert.equal(calls.size, N)
      for (const [, count] of calls) assert.equal(count, 1)
    }
    const after = bridge.metrics()
    if (after.totals) {
      assert.equal(after.totals.accepted - (before.totals?.accepted ?? 0), N)
      assert.equal(after.totals.ok - (before.totals?.ok ?? 0), N)
      assert.equal(after.totals.failed, 0)
      assert.equal(after.totals.rejected, 0)
      assert.equal(after.totals.in_flight, 0)
    }
    await bridge.shutdown()
  })
}

test('concurrent mixed outcomes are each counted once', async () => {
  const bridge = await started()
  bridge.registerRoute('mixed.ok', (m) => m.payload)
  bridge.registerRoute('mixed.fail', async () => {
    throw new Error('no')
  })
  const jobs = []
  for (let i = 0; i < 3000; i++) {
    const dest = ['mixed.ok', 'mixed.fail', 'mixed.none'][i % 3]
    jobs.push(bridge.route(dest, i).then((v) => ['ok', v], (e) => [e.code, i]))
  }
  const results = await Promise.all(jobs)
  const count = (code) => results.filter(([c]) => c === code).length
  assert.equal(count('ok'), 1000)
  assert.equal(count('HANDLER_ERROR'), 1000)
  assert.equal(count('ROUTE_NOT_FOUND'), 1000)
  const m = bridge.metrics()
  if (m.totals) {
    assert.equal(m.totals.accepted, 3000)
    assert.equal(m.totals.ok, 1000)
    assert.equal(m.totals.failed, 1000)
    assert.equal(m.totals.rejected, 1000)
    assert.equal(m.totals.errors.HANDLER_ERROR, 1000)
    assert.equal(m.totals.errors.ROUTE_NOT_FOUND, 1000)
  }
  await bridge.shutdown()
})
