// Token flows with security on: API key → token, token object or string,
// UNAUTHENTICATED / FORBIDDEN by their real causes, revocation, the
// per-principal rate limit.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'

import { BridgeManager, started, rejection } from './helpers.mjs'

const PLANNER_KEY = 'dk_planner_test_5d1c0e7a93'
const OPS_KEY = 'dk_ops_test_b0a4f7e21c'
const sha256 = (s) => createHash('sha256').update(s).digest('hex')

function config(extra = {}) {
  return {
    bridge: { rate_limit_mode: 'reject' },
    security: {
      auth_type: 'token',
      token_expiry: 600,
      signing_keys: [{ id: 'k1', secret: 'node-test-signing-secret-0123456789abcdef' }],
      api_keys: [
        { principal: 'planner', sha256: sha256(PLANNER_KEY), roles: ['agent'] },
        { principal: 'ops', sha256: sha256(OPS_KEY), roles: ['admin'] },
      ],
      roles: {
        agent: { route: ['agents.*', 'services.>'], publish: ['events.>'], deny: ['agents.admin'] },
        admin: { admin: ['>'] },
      },
      ...extra,
    },
  }
}

// Until the security module is merged, authenticate() is a stub that
// refuses everything; these flows then have nothing to run against.
async function securityReady() {
  const b = new BridgeManager(config())
  try {
    await b.authenticate({ api_key: PLANNER_KEY })
    return true
  } catch (e) {
    return !/not implemented/.test(e.message)
  }
}
const skip = (await securityReady()) ? false : 'the security module is not merged into this branch yet'

async function bridgeWithHandlers(extra) {
  const bridge = await started(config(extra))
  bridge.registerRoute('agents.*', (m) => ({ from: m.source, got: m.payload }))
  bridge.registerRoute('events.>', () => null)
  return bridge
}

test('authenticate → token; route with the token object or its string', { skip }, async () => {
  const bridge = await bridgeWithHandlers()
  const token = await bridge.authenticate({ api_key: PLANNER_KEY })
  assert.equal(typeof token.value, 'string')
  assert.equal(token.principal, 'planner')
  assert.deepEqual(token.roles, ['agent'])
  const now = Date.now() / 1000
  assert.ok(token.expiresAt > now + 500 && token.expiresAt <= now + 601, String(token.expiresAt))

  assert.deepEqual(await bridge.route('agents.summarize', 'x', { token }), { from: 'planner', got: 'x' })
  assert.deepEqual(await bridge.route('agents.summarize', 'y', { token: token.value }), { from: 'planner', got: 'y' })
  assert.deepEqual(await bridge.route({ destination: 'agents.summarize', payload: 'z' }, { token }), {
    from: 'planner',
    got: 'z',
  })
  assert.match(await bridge.publish('events.audit', { a: 1 }, { token }), /^[0-9a-f-]{36}$/)
  await bridge.shutdown()
})

test('UNAUTHENTICATED: bad key, no token, garbage token, malformed credentials', { skip }, async () => {
  const bridge = await bridgeWithHandlers()
  for (const creds of [{ api_key: 'dk_wrong' }, { api_key: '' }, {}, 'just a string', { api_key: 5 }, null]) {
    const e = await rejection(bridge.authenticate(creds))
    assert.equal(e.code, 'UNAUTHENTICATED', JSON.stringify(creds))
    assert.ok(!e.message.includes(PLANNER_KEY))
  }
  assert.equal((await rejection(bridge.route('agents.x', 1))).code, 'UNAUTHENTICATED')
  assert.equal((await rejection(bridge.route('agents.x', 1, { token: 'not.a.jwt' }))).code, 'UNAUTHENTICATED')
  assert.equal((await rejection(bridge.route('agents.x', 1, { token: { value: 42 } }))).code, 'UNAUTHENTICATED')
  assert.equal((await rejection(bridge.publish('events.x', 1, { token: '' }))).code, 'UNAUTHENTICATED')
  assert.equal((await rejection(bridge.authorize('garbage', 'agents.x'))).code, 'UNAUTHENTICATED')
  await bridge.shutdown()
})

test('FORBIDDEN: outside the role, denied, wrong action; authorize() answers false', { skip }, async () => {
  const bridge = await bridgeWithHandlers()
  const token = await bridge.authenticate({ api_key: PLANNER_KEY })
  bridge.registerRoute('tools.search', () => 1)
  for (const [call, dest] of [
    ['route', 'tools.search'], // no role grants it
    ['route', 'agents.admin'], // denied
    ['publish', 'agents.x'], // route granted, publish not
  ]) {
    const e = await rejection(bridge[call](dest, 1, { token }))
    assert.equal(e.code, 'FORBIDDEN', `${call} ${dest}: ${e.message}`)
  }
  assert.equal(await bridge.authorize(token, 'agents.summarize'), true)
  assert.equal(await bridge.authorize(token.value, 'agents.admin'), false)
  assert.equal(await bridge.authorize(token, 'events.audit', 'publish'), true)
  assert.equal(await bridge.authorize(token, 'agents.x', 'publish'), false)
  const admin = await bridge.authenticate({ api_key: OPS_KEY })
  assert.equal(await bridge.authorize(admin, 'tools.search'), true)
  assert.equal(await bridge.route('tools.search', 1, { token: admin }), 1)
  await bridge.shutdown()
})

test('revoke: a revoked token is refused, a fresh one works', { skip }, async () => {
  const bridge = await bridgeWithHandlers()
  const token = await bridge.authenticate({ api_key: PLANNER_KEY })
  assert.deepEqual((await bridge.route('agents.a', 1, { token })).got, 1)
  await bridge.revoke(token)
  assert.equal((await rejection(bridge.route('agents.a', 1, { token }))).code, 'UNAUTHENTICATED')
  assert.equal((await rejection(bridge.route('agents.a', 1, { token: token.value }))).code, 'UNAUTHENTICATED')
  const fresh = await bridge.authenticate({ api_key: PLANNER_KEY })
  assert.deepEqual((await bridge.route('agents.a', 2, { token: fresh })).got, 2)
  await bridge.shutdown()
})

test('RATE_LIMITED: security.rate_limit per principal, with retryAfter', { skip }, async () => {
  const bridge = await bridgeWithHandlers({ rate_limit: '2/min', rate_limit_burst: 2 })
  const planner = await bridge.authenticate({ api_key: PLANNER_KEY })
  const ops = await bridge.authenticate({ api_key: OPS_KEY })
  await bridge.route('agents.a', 1, { token: planner })
  await bridge.route('agents.a', 2, { token: planner })
  const e = await rejection(bridge.route('agents.a', 3, { token: planner }))
  assert.equal(e.code, 'RATE_LIMITED')
  assert.ok(e.retryAfter > 0 && e.retryAfter <= 60, String(e.retryAfter))
  // Another principal has its own budget.
  assert.equal((await bridge.route('agents.a', 4, { token: ops })).got, 4)
  await bridge.shutdown()
})
