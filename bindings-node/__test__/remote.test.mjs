// BridgeManager.connect: agents sharing one real `dreamos-bridge serve`.
//
// Each test starts the server binary (built by `make test-node`, or here with
// cargo if it is missing) on 127.0.0.1 port 0 with a temporary YAML config and
// reads the port from its `listening on` line.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, mkdtempSync, writeFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createInterface } from 'node:readline'
import { createServer } from 'node:net'

import { BridgeManager, rejection, sleep } from './helpers.mjs'

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')
const AGENT = 'dk_node_agent_0123456789'
const AGENT2 = 'dk_node_agent2_0123456789'
const ADMIN = 'dk_node_admin_0123456789'
const SERVICE = 'dk_node_service_0123456789'
const sha = (k) => createHash('sha256').update(k).digest('hex')

function serverBinary() {
  if (process.env.DREAMOS_BRIDGE_BIN) return process.env.DREAMOS_BRIDGE_BIN
  const target = process.env.CARGO_TARGET_DIR || join(ROOT, 'target')
  const bin = join(target, 'debug', 'dreamos-bridge')
  if (!existsSync(bin)) {
    const r = spawnSync('cargo', ['build', '-q', '-p', 'dreamos-bridge-server'], { cwd: ROOT, stdio: 'inherit' })
    assert.equal(r.status, 0, 'cargo build of the server failed')
  }
  return bin
}

const CONFIG = `bridge:
  host: 127.0.0.1
  port: 0
  rate_limit_mode: reject
monitoring:
  log_level: WARN
security:
  auth_type: token
  token_expiry: 600
  signing_keys:
    - id: k1
      secret: node-remote-test-signing-secret-0123456789
  api_keys:
    - {principal: agent, sha256: ${sha(AGENT)}, roles: [agent]}
    - {principal: agent2, sha256: ${sha(AGENT2)}, roles: [agent]}
    - {principal: ops, sha256: ${sha(ADMIN)}, roles: [admin]}
    - {principal: svc, sha256: ${sha(SERVICE)}, roles: [service]}
  roles:
    agent: {route: ["agents.>", "ext.>", "limited.>"], publish: ["agents.>"], deny: ["agents.secret"]}
    service: {handle: ["ext.>"]}
    admin: {admin: [">"]}
routes:
  - pattern: limited.echo
    rate_limit: 1/min
    burst: 1
`

const TLS_DIR = join(ROOT, 'testdata', 'tls')

/** Start the server (over TLS with the test certificate when `tls`); resolves with {url, stop}. */
async function startServer({ tls = false } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'dreamos-remote-'))
  const cfg = join(dir, 'bridge.yaml')
  const tlsKeys = `bridge:\n  tls: {cert: ${join(TLS_DIR, 'localhost.cert.pem')}, key: ${join(TLS_DIR, 'localhost.key.pem')}}\n`
  writeFileSync(cfg, tls ? CONFIG.replace('bridge:\n', tlsKeys) : CONFIG)
  const child = spawn(serverBinary(), ['serve', '--config', cfg, '--echo', 'agents.echo', '--echo', 'limited.echo'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stderr = ''
  child.stderr.on('data', (d) => {
    stderr += d
  })
  const url = await new Promise((resolveUrl, reject) => {
    const lines = createInterface({ input: child.stdout })
    const timer = setTimeout(() => reject(new Error(`the server did not start: ${stderr}`)), 60_000)
    lines.on('line', (line) => {
      const at = line.indexOf('listening on ')
      if (at >= 0) {
        clearTimeout(timer)
        resolveUrl(line.slice(at + 'listening on '.length).trim())
      }
    })
    child.on('exit', (code) => reject(new Error(`the server exited (${code}): ${stderr}`)))
  })
  const stop = async () => {
    if (child.exitCode === null) {
      const exited = new Promise((r) => child.once('exit', r))
      child.kill('SIGTERM')
      await exited
    }
    rmSync(dir, { recursive: true, force: true })
  }
  return { url, stop }
}

test('route, publish, authenticate and health through the server', async () => {
  const server = await startServer()
  try {
    const bridge = await BridgeManager.connect(server.url, { api_key: AGENT })
    assert.equal(bridge.token.principal, 'agent')
    assert.deepEqual(await bridge.route('agents.echo', { x: [1, 2.5, null] }), { x: [1, 2.5, null] })
    const bytes = await bridge.route('agents.echo', Buffer.from([0, 1, 255]))
    assert.ok(Buffer.isBuffer(bytes))
    assert.deepEqual([...bytes], [0, 1, 255])
    assert.equal(await bridge.route({ destination: 'agents.echo', payload: 'm', headers: { h: 'v' } }), 'm')
    assert.match(await bridge.publish('agents.echo', 1), /^[0-9a-f-]{36}$/)
    const admin = await bridge.authenticate({ api_key: ADMIN })
    assert.deepEqual([admin.principal, admin.roles], ['ops', ['admin']])
    assert.equal((await bridge.health()).status, 'up')
    await bridge.close()
    assert.equal(bridge.isClosed, true)
    assert.equal((await rejection(bridge.route('agents.echo', 1))).code, 'SHUTDOWN')
  } finally {
    await server.stop()
  }
})

test('errors reject with the codes of a local bridge', async () => {
  const server = await startServer()
  try {
    const bridge = await BridgeManager.connect(server.url, { api_key: AGENT })
    assert.equal((await rejection(bridge.route('agents.nobody', 1))).code, 'ROUTE_NOT_FOUND')
    assert.equal((await rejection(bridge.route('agents.secret', 1))).code, 'FORBIDDEN')
    assert.equal((await rejection(bridge.route('bad..subject', 1))).code, 'INVALID_MESSAGE')
    assert.equal((await rejection(bridge.route('agents.echo', 1, { token: 'nope' }))).code, 'UNAUTHENTICATED')
    assert.equal((await rejection(bridge.metrics())).code, 'FORBIDDEN')
    await bridge.route('limited.echo', 1)
    const limited = await rejection(bridge.route('limited.echo', 2))
    assert.equal(limited.code, 'RATE_LIMITED')
    assert.ok(limited.retryAfter > 1 && limited.retryAfter <= 60, String(limited.retryAfter))
    assert.equal((await rejection(BridgeManager.connect(server.url, { api_key: 'dk_wrong' }))).code, 'UNAUTHENTICATED')
    await bridge.close()
  } finally {
    await server.stop()
  }
  const gone = await rejection(BridgeManager.connect(server.url, { api_key: AGENT }, { timeout: 2 }))
  assert.equal(gone.code, 'SERVICE_UNAVAILABLE')
})

test('a JS handler registered remotely answers another agent', async () => {
  const server = await startServer()
  try {
    const service = await BridgeManager.connect(server.url, { api_key: SERVICE })
    await service.registerRoute('ext.js.>', async (msg) => {
      if (msg.destination === 'ext.js.fail') throw new Error('tool broke')
      if (msg.destination === 'ext.js.slow') await sleep(5000)
      return { echo: msg.payload, from: msg.source, headers: msg.headers }
    })
    await service.registerRoute('ext.plain', (msg) => msg.payload * 2)
    assert.deepEqual(service.routes().sort(), ['ext.js.>', 'ext.plain'])
    assert.equal((await rejection(service.registerRoute('agents.mine', () => 1))).code, 'FORBIDDEN')

    const agent = await BridgeManager.connect(server.url, { api_key: AGENT })
    assert.deepEqual(await agent.route('ext.js.sum', [1, 2], { headers: { k: 'v' } }), {
      echo: [1, 2],
      from: 'agent',
      headers: { k: 'v' },
    })
    assert.equal(await agent.route('ext.plain', 21), 42)
    const failed = await rejection(agent.route('ext.js.fail', 0))
    assert.equal(failed.code, 'HANDLER_ERROR')
    assert.match(failed.message, /tool broke/)
    assert.equal((await rejection(agent.route('ext.js.slow', 0, { timeout: 0.3 }))).code, 'TIMEOUT')
    const replies = await Promise.all(Array.from({ length: 10 }, (_, i) => agent.route('ext.js.n', i)))
    assert.deepEqual(
      replies.map((r) => r.echo),
      Array.from({ length: 10 }, (_, i) => i),
    )
    assert.equal(service.unregisterRoute('ext.plain'), true)
    let code
    for (let i = 0; i < 200 && code !== 'ROUTE_NOT_FOUND'; i++) {
      code = (await agent.route('ext.plain', 1).catch((e) => e)).code
      if (code !== 'ROUTE_NOT_FOUND') await sleep(10)
    }
    assert.equal(code, 'ROUTE_NOT_FOUND')
    await agent.close()
    await service.close()
  } finally {
    await server.stop()
  }
})

test('maxConnections bounds the calls the server handles at once', async () => {
  const server = await startServer()
  try {
    const service = await BridgeManager.connect(server.url, { api_key: SERVICE })
    let inFlight = 0
    let peak = 0
    const waiters = { pair: [], crowd: [] }
    const wake = (name) => waiters[name].splice(0).forEach((w) => w())
    // Resolves when `name` happens, or after `ms` (the waits only hold calls
    // open; nothing below depends on how long they took).
    const until = (name, ms) =>
      new Promise((r) => {
        waiters[name].push(r)
        setTimeout(r, ms).unref()
      })
    let pairSeen = false
    let crowdSeen = false
    await service.registerRoute('ext.slow.>', async (msg) => {
      inFlight++
      peak = Math.max(peak, inFlight)
      if (inFlight >= 2 && !pairSeen) {
        pairSeen = true
        wake('pair')
      }
      if (inFlight >= 3 && !crowdSeen) {
        crowdSeen = true
        wake('crowd')
      }
      try {
        // A call waits for a second one (two at once must be allowed), then
        // gives a third the chance to show up (it must not).
        if (!pairSeen) await until('pair', 10_000)
        if (!crowdSeen) await until('crowd', 200)
        return msg.payload
      } finally {
        inFlight--
      }
    })

    const agent = await BridgeManager.connect(server.url, { api_key: AGENT }, { maxConnections: 2 })
    const replies = await Promise.all(Array.from({ length: 10 }, (_, i) => agent.route('ext.slow.n', i, { timeout: 60 })))
    assert.deepEqual(
      replies,
      Array.from({ length: 10 }, (_, i) => i),
    )
    assert.equal(peak, 2, `${peak} calls reached the handler at once with maxConnections: 2`)

    for (const bad of [0, -1, 2.5, '2', true, 2 ** 64]) {
      const e = await rejection(BridgeManager.connect(server.url, { api_key: AGENT }, { maxConnections: bad }))
      assert.equal(e.code, 'INVALID_MESSAGE', `maxConnections: ${bad}`)
      assert.match(e.message, /options\.maxConnections must be a positive integer/)
    }
    await agent.close()
    await service.close()
  } finally {
    await server.stop()
  }
})

test('two agent processes share one server-side rate limit', async () => {
  const server = await startServer()
  try {
    const first = await BridgeManager.connect(server.url, { api_key: AGENT })
    assert.equal(await first.route('limited.echo', 'first'), 'first')
    // A second Node process, with its own principal, meets the same limit.
    const script = `
      const { BridgeManager } = require(${JSON.stringify(join(ROOT, 'bindings-node', 'index.js'))})
      ;(async () => {
        const b = await BridgeManager.connect(process.argv[1], { api_key: process.argv[2] })
        try { console.log('ok', await b.route('limited.echo', 'second')) }
        catch (e) { console.log(e.code, e.retryAfter) }
        await b.close()
      })()`
    const out = spawnSync(process.execPath, ['-e', script, server.url, AGENT2], { encoding: 'utf8', timeout: 60_000 })
    assert.equal(out.status, 0, out.stderr)
    const [code, retryAfter] = out.stdout.trim().split(/\s+/)
    assert.equal(code, 'RATE_LIMITED')
    assert.ok(Number(retryAfter) > 1)
    const admin = await BridgeManager.connect(server.url, { api_key: ADMIN })
    const m = await admin.metrics()
    assert.deepEqual([m.routes['limited.echo'].ok, m.routes['limited.echo'].rate_limited], [1, 1])
    assert.ok('agent' in m.principals && 'agent2' in m.principals)
    await first.close()
    await admin.close()
  } finally {
    await server.stop()
  }
})

test('over TLS: calls and a served JS handler work with caFile, and trust is required', async () => {
  const server = await startServer({ tls: true })
  try {
    assert.match(server.url, /^https:\/\//)
    const caFile = join(TLS_DIR, 'localhost.cert.pem')
    // Without the CA the self-signed server is not trusted.
    const untrusted = await rejection(BridgeManager.connect(server.url, { api_key: SERVICE }, { timeout: 5 }))
    assert.equal(untrusted.code, 'SERVICE_UNAVAILABLE')
    // A CA file that is not there is a configuration error, before any connection.
    const missing = await rejection(BridgeManager.connect(server.url, { api_key: SERVICE }, { caFile: '/nonexistent/ca.pem' }))
    assert.equal(missing.code, 'CONFIG')
    assert.match(missing.message, /ca_file/)
    const service = await BridgeManager.connect(server.url, { api_key: SERVICE }, { caFile })
    await service.registerRoute('ext.tls', (msg) => ({ over: 'wss', got: msg.payload }))
    const agent = await BridgeManager.connect(server.url, { api_key: AGENT }, { caFile })
    assert.deepEqual(await agent.route('ext.tls', 3), { over: 'wss', got: 3 })
    await agent.close()
    await service.close()
  } finally {
    await server.stop()
  }
})

test('connect() timeout bounds the whole connect, also a server that accepts and never answers', async () => {
  // A TCP listener that takes connections and never says a word.
  const sockets = []
  const silent = createServer((s) => sockets.push(s))
  await new Promise((r) => silent.listen(0, '127.0.0.1', r))
  const url = `http://127.0.0.1:${silent.address().port}`
  try {
    for (const credentials of [{ api_key: AGENT }, null]) {
      // Far below the client's 60 s request timeout, far above 0.5 s: no timing claim.
      const outcome = await Promise.race([
        BridgeManager.connect(url, credentials, { timeout: 0.5 }).then(
          () => 'connected',
          (e) => e,
        ),
        new Promise((r) => setTimeout(() => r('still waiting after 20 s'), 20_000).unref()),
      ])
      assert.ok(outcome instanceof Error, `credentials ${JSON.stringify(credentials)}: ${outcome}`)
      assert.equal(outcome.code, 'TIMEOUT', outcome.message)
      assert.match(outcome.message, /did not answer within 0\.5s/)
    }
  } finally {
    sockets.forEach((s) => s.destroy())
    await new Promise((r) => silent.close(r))
  }
})

/** Run `body` in a child Node process with `b`, a RemoteBridge connected as SERVICE; resolves with its result. */
function child(server, body, timeout = 20_000) {
  const script = `
    const { BridgeManager } = require(${JSON.stringify(join(ROOT, 'bindings-node', 'index.js'))})
    ;(async () => {
      const b = await BridgeManager.connect(process.argv[1], { api_key: process.argv[2] })
      ${body}
    })()`
  const r = spawnSync(process.execPath, ['-e', script, server.url, SERVICE], { encoding: 'utf8', timeout })
  return { code: r.status, out: r.stdout, err: r.stderr, timedOut: r.error?.code === 'ETIMEDOUT' }
}

test('a RemoteBridge keeps Node alive only while it serves routes', async () => {
  const server = await startServer()
  try {
    // A refused registration: nothing is served, nothing holds the process.
    const refused = child(server, `
      try { await b.registerRoute('agents.mine', () => 1) } catch (e) { console.log('refused', e.code) }`)
    assert.equal(refused.timedOut, false, 'the process did not exit after a refused registerRoute')
    assert.equal(refused.code, 0, refused.err)
    assert.match(refused.out, /refused FORBIDDEN/)

    // Registered, then its only route unregistered: the process ends by itself.
    const unregistered = child(server, `
      await b.registerRoute('ext.child.a', () => 1)
      await b.registerRoute('ext.child.b', () => 2)
      console.log('first', b.unregisterRoute('ext.child.a'))
      console.log('last', b.unregisterRoute('ext.child.b'))`)
    assert.equal(unregistered.timedOut, false, 'the process did not exit once no route was served')
    assert.equal(unregistered.code, 0, unregistered.err)
    assert.match(unregistered.out, /first true\nlast true/)

    // While a route is served the process stays up: an unref'd timer only
    // fires if something else keeps the event loop running.
    const serving = child(server, `
      await b.registerRoute('ext.child.c', () => 3)
      setTimeout(() => { console.log('still serving'); b.close() }, 300).unref()`)
    assert.equal(serving.timedOut, false, 'the process did not exit after close()')
    assert.equal(serving.code, 0, serving.err)
    assert.match(serving.out, /still serving/)
  } finally {
    await server.stop()
  }
})

test('RemoteBridge methods reject or throw with a code for wrong argument types', async () => {
  const server = await startServer()
  try {
    const bridge = await BridgeManager.connect(server.url, { api_key: SERVICE })
    for (const [what, call] of [
      ['registerRoute(5, fn)', () => bridge.registerRoute(5, () => 1)],
      ["registerRoute('ext.x', 'nofn')", () => bridge.registerRoute('ext.x', 'nofn')],
    ]) {
      let p
      assert.doesNotThrow(() => {
        p = call()
      }, what)
      const e = await rejection(p)
      assert.equal(e.code, 'INVALID_MESSAGE', `${what}: ${e.message}`)
    }
    assert.throws(
      () => bridge.unregisterRoute(5),
      (e) => e.code === 'INVALID_MESSAGE',
    )
    assert.deepEqual(bridge.routes(), [])
    await bridge.close()
  } finally {
    await server.stop()
  }
})

test('a served handler whose Promise never settles is not waited for after the call gave up', async () => {
  const server = await startServer()
  try {
    // The Promises this thread waits for (a test hook; any bridge of the thread reports them).
    const waiting = () => new BridgeManager().__testLeftovers()[0]
    const service = await BridgeManager.connect(server.url, { api_key: SERVICE })
    let calls = 0
    await service.registerRoute('ext.never', () => {
      calls++
      return new Promise(() => {})
    })
    const agent = await BridgeManager.connect(server.url, { api_key: AGENT })
    const before = waiting()
    const codes = await Promise.all(
      Array.from({ length: 5 }, () => rejection(agent.route('ext.never', 1, { timeout: 0.3 })).then((e) => e.code)),
    )
    assert.deepEqual(codes, Array(5).fill('TIMEOUT'))
    assert.equal(calls, 5)
    // The serving side gives up at the same deadline; its clean-up lands on this thread's loop.
    let left = waiting() - before
    for (let i = 0; i < 500 && left !== 0; i++) {
      await sleep(10)
      left = waiting() - before
    }
    assert.equal(left, 0, 'Promises still waited for after their calls timed out')
    await agent.close()
    await service.close()
  } finally {
    await server.stop()
  }
})
