// Lifecycle, routing, payload conversion and every error code by its real cause.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { writeFileSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { BridgeManager, started, rejection, gate, sleep } from './helpers.mjs'

test('construction: default, config object, YAML text, YAML file', async () => {
  for (const bridge of [
    new BridgeManager(),
    new BridgeManager(null),
    new BridgeManager({ bridge: { request_timeout: '2s' }, limits: { max_json_depth: 8 } }),
    BridgeManager.fromYaml('bridge:\n  request_timeout: 2\n'),
    BridgeManager.fromFile(
      (() => {
        const dir = mkdtempSync(join(tmpdir(), 'dreamos-node-'))
        const path = join(dir, 'bridge.yaml')
        writeFileSync(path, 'monitoring:\n  metrics_enabled: true\n')
        return path
      })(),
    ),
  ]) {
    assert.equal(bridge.isRunning, false)
    await bridge.initialize()
    await bridge.initialize() // idempotent
    assert.equal(bridge.isRunning, true)
    bridge.registerRoute('agents.echo', (m) => m.payload)
    assert.deepEqual(await bridge.route('agents.echo', { n: 1 }), { n: 1 })
    await bridge.shutdown()
    assert.equal(bridge.isRunning, false)
  }
})

test('CONFIG: unknown keys, bad values, bad YAML, missing file', () => {
  const cases = [
    () => new BridgeManager({ bridge: { max_conections: 3 } }),
    () => new BridgeManager({ bridge: { request_timeout: 'soon' } }),
    () => new BridgeManager({ nonsense: true }),
    () => BridgeManager.fromYaml('bridge: [1, 2'),
    () => BridgeManager.fromFile('/nonexistent/dreamos/bridge.yaml'),
    () => new BridgeManager({ bridge: { port: () => 1 } }),
  ]
  for (const make of cases) {
    assert.throws(make, (e) => {
      assert.ok(e instanceof Error)
      assert.equal(e.code, 'CONFIG', e.message)
      return true
    })
  }
  assert.throws(
    () => new BridgeManager({ bridge: { max_conections: 3 } }),
    (e) => e.message.includes('max_conections'),
  )
})

test('handlers: async and plain functions, message fields, headers, message-object form', async () => {
  const bridge = await started()
  const seen = []
  bridge.registerRoute('agents.async', async (msg) => {
    seen.push(msg)
    await sleep(1)
    return { echoed: msg.payload, headers: msg.headers }
  })
  bridge.registerRoute('agents.plain', (msg) => ({ n: msg.payload.n + 1 }))
  bridge.registerRoute('agents.void', () => {})
  bridge.registerRoute('agents.*', (msg) => `wildcard ${msg.destination}`)

  const reply = await bridge.route('agents.async', { a: [1, 'two', null, true] }, { headers: { 'x-trace': 't1' } })
  assert.deepEqual(reply, { echoed: { a: [1, 'two', null, true] }, headers: { 'x-trace': 't1' } })
  const msg = seen[0]
  assert.match(msg.id, /^[0-9a-f-]{36}$/)
  assert.equal(msg.destination, 'agents.async')
  assert.equal(msg.source, null)
  assert.equal(typeof msg.timestamp, 'number')
  assert.equal(msg.priority, 0)

  assert.deepEqual(await bridge.route('agents.plain', { n: 41 }), { n: 42 })
  assert.equal(await bridge.route('agents.void'), null)
  assert.equal(await bridge.route('agents.other', 1), 'wildcard agents.other')
  assert.deepEqual(
    await bridge.route({ destination: 'agents.async', payload: 7, headers: { h: 'v' }, priority: 3 }, { timeout: 5 }),
    { echoed: 7, headers: { h: 'v' } },
  )
  assert.equal(seen[1].priority, 3)
  assert.deepEqual(bridge.routes().sort(), ['agents.*', 'agents.async', 'agents.plain', 'agents.void'])
  assert.equal(bridge.unregisterRoute('agents.plain'), true)
  assert.equal(bridge.unregisterRoute('agents.plain'), false)
  assert.equal(await bridge.route('agents.plain', 1), 'wildcard agents.plain')
  await bridge.shutdown()
})

test('payloads: JSON values round-trip; Buffer and Uint8Array travel as bytes', async () => {
  const bridge = await started()
  bridge.registerRoute('agents.echo', (m) => m.payload)
  bridge.registerRustEcho('rust.echo')
  const values = [null, true, false, 0, -1.5, 2 ** 40, 'héllo ✓', [], {}, { nested: { list: [1, { x: 'y' }] } }]
  for (const dest of ['agents.echo', 'rust.echo']) {
    for (const v of values) assert.deepEqual(await bridge.route(dest, v), v)
    const buf = await bridge.route(dest, Buffer.from([0, 1, 2, 255]))
    assert.ok(Buffer.isBuffer(buf))
    assert.deepEqual([...buf], [0, 1, 2, 255])
    const u8 = await bridge.route(dest, new Uint8Array([9, 8, 7]))
    assert.deepEqual([...u8], [9, 8, 7])
    // JSON.stringify semantics: undefined members are left out, toJSON is honoured.
    assert.deepEqual(await bridge.route(dest, { a: undefined, b: 1 }), { b: 1 })
    assert.equal(await bridge.route(dest, new Date(0)), '1970-01-01T00:00:00.000Z')
  }
  await bridge.shutdown()
})

test('route(dest, payload) fast path: odd values give the same answer as the walk', async () => {
  const bridge = await started()
  bridge.registerRustEcho('rust.echo')
  // When a sibling (a Date) sends the payload to the walk, a getter is read
  // by the text form and once more by the walk (not a third time), and the
  // walk's read is what is sent.
  let reads = 0
  const reply = await bridge.route('rust.echo', {
    get a() {
      return ++reads
    },
    d: new Date(0),
  })
  assert.deepEqual(reply, { a: 2, d: '1970-01-01T00:00:00.000Z' })
  assert.equal(reads, 2)
  // An object that borrowed Array.prototype is an object, as the walk reads it.
  const fake = Object.setPrototypeOf({ length: 2, 0: 'x' }, Array.prototype)
  assert.deepEqual(await bridge.route('rust.echo', { fake }), { fake: { 0: 'x', length: 2 } })
  // A payload too long for one JSON string still rejects with INVALID_MESSAGE.
  const e = await rejection(bridge.route('rust.echo', { s: '\u0001'.repeat(1e8) }))
  assert.equal(e.code, 'INVALID_MESSAGE')
  // A getter that throws: the text form gives up, the walk rejects with
  // INVALID_MESSAGE naming it (never a synchronous throw).
  const g = await rejection(
    bridge.route('rust.echo', {
      get bad() {
        throw new Error('getter broke')
      },
    }),
  )
  assert.equal(g.code, 'INVALID_MESSAGE')
  assert.ok(g.message.includes('payload.bad could not be read: getter broke'), g.message)
  assert.equal(typeof bridge.__handle, 'undefined', 'the fast path handle is not public')
  assert.deepEqual(await bridge.route('rust.echo', { still: 'works' }), { still: 'works' })
  await bridge.shutdown()
})

test('plain JSON crosses as text exactly as the walk reads it (route(dest, payload) fast path)', async () => {
  const bridge = await started({ limits: { max_json_depth: 4 } })
  bridge.registerRustEcho('rust.echo')
  bridge.registerRoute('agents.echo', (m) => m.payload)
  let reads = 0
  const withGetter = {
    get g() {
      reads++
      return 'got'
    },
  }
  class Point {
    constructor() {
      this.x = 1
    }
  }
  const cases = [
    [{ f: 0.1 + 0.2, big: 2 ** 60, neg: -0, e: 1e-7, huge: 1e300 }, { f: 0.1 + 0.2, big: 2 ** 60, neg: 0, e: 1e-7, huge: 1e300 }],
    [{ s: 'quote " backslash \\ nl \n tab \t nul \u0000 é ✓ 😀 \u2028' }, null],
    [{ lone: 'a\ud800b', low: '\udc00' }, { lone: 'a\ufffdb', low: '\ufffd' }],
    // a hole at index 2 (a sparse array), written without the `[1, , 2]` literal
    [Object.assign(new Array(4), { 0: 1, 1: undefined, 3: 'x' }), [1, null, null, 'x']],
    [{ a: undefined, b: [undefined], c: null }, { b: [null], c: null }],
    [Object.assign(Object.create(null), { k: 1 }), { k: 1 }],
    [{ __proto__: null, ['__proto__']: { polluted: true } }, null],
    [{ 10: 'ten', 2: 'two', z: 'z', a: 'a' }, null],
    [new Point(), { x: 1 }],
    [{ when: new Date(0) }, { when: '1970-01-01T00:00:00.000Z' }],
    [{ t: { toJSON: () => 'custom' } }, { t: 'custom' }],
    [withGetter, { g: 'got' }],
    [{ d: [[[1]]] }, null],
  ]
  for (const dest of ['rust.echo', 'agents.echo']) {
    for (const [i, [input, expected]] of cases.entries()) {
      const reply = await bridge.route(dest, input)
      const want = expected ?? JSON.parse(JSON.stringify(input))
      assert.deepEqual(reply, want, `${dest}, case ${i}`)
      assert.deepEqual(Object.keys(reply), Object.keys(want), `${dest}, case ${i}: key order`)
    }
  }
  assert.equal(reads, 2, 'a getter is read once per route()')
  const polluted = await bridge.route('rust.echo', JSON.parse('{"__proto__": {"polluted": true}}'))
  assert.equal(Object.getPrototypeOf(polluted), Object.prototype, 'a "__proto__" key stays a plain property')
  assert.equal({}.polluted, undefined)
  // Past the depth limit the walk names the problem, on every path.
  for (const dest of ['rust.echo', 'agents.echo']) {
    const e = await rejection(bridge.route(dest, { a: { b: { c: { d: { e: 1 } } } } }))
    assert.equal(e.code, 'INVALID_MESSAGE')
    assert.ok(e.message.includes('payload.a.b.c.d'), e.message)
    const f = await rejection(bridge.route(dest, { ok: 1, bad: [1, () => 2] }))
    assert.ok(f.message.includes('payload.bad[1] is a function'), f.message)
  }
  // Refusals and routes that must wait still come back as Promises.
  assert.equal((await rejection(bridge.route('nowhere.at.all', { n: 1 }))).code, 'ROUTE_NOT_FOUND')
  assert.equal((await rejection(bridge.route('bad..subject', { n: 1 }))).code, 'INVALID_MESSAGE')
  assert.ok(bridge.route('rust.echo', { n: 1 }) instanceof Promise)
  assert.equal(bridge.route.name, 'route')
  // Each bridge keeps its own handle on the fast path.
  const other = await started()
  other.registerRoute('rust.echo', (m) => ({ from: 'other', n: m.payload.n }))
  assert.deepEqual(await other.route('rust.echo', { n: 7 }), { from: 'other', n: 7 })
  assert.deepEqual(await bridge.route('rust.echo', { n: 7 }), { n: 7 })
  await other.shutdown()
  assert.equal((await rejection(other.route('rust.echo', { n: 1 }))).code, 'SHUTDOWN')
  assert.throws(() => BridgeManager.prototype.route.call({}, 'rust.echo', { n: 1 }))
  await bridge.shutdown()
  assert.equal((await rejection(bridge.route('rust.echo', { n: 1 }))).code, 'SHUTDOWN')
})

test('INVALID_MESSAGE: bad subjects, non-JSON values, huge and deep payloads, bad headers', async () => {
  const bridge = await started({ limits: { max_payload_bytes: 64 * 1024, max_json_depth: 16 } })
  bridge.registerRustEcho('agents.echo')
  const cyclic = { a: 1 }
  cyclic.self = cyclic
  let deep = 1
  for (let i = 0; i < 40; i++) deep = [deep]
  const bad = [
    ['a..b', 1, undefined, 'empty token'],
    ['agents.*', 1, undefined, ''],
    ['agents.echo x', 1, undefined, ''],
    ['', 1, undefined, ''],
    ['agents.echo', { f() {} }, undefined, 'function'],
    ['agents.echo', Symbol('s'), undefined, 'Symbol'],
    ['agents.echo', { n: 10n }, undefined, 'BigInt'],
    ['agents.echo', cyclic, undefined, 'refers to itself'],
    ['agents.echo', NaN, undefined, 'NaN'],
    ['agents.echo', 'x'.repeat(100 * 1024), undefined, 'limit'],
    ['agents.echo', Buffer.alloc(100 * 1024), undefined, 'limit'],
    ['agents.echo', deep, undefined, 'deeper'],
    ['agents.echo', { raw: Buffer.from('x') }, undefined, 'binary'],
    ['agents.echo', 1, { headers: { 'x-h': 'a\r\nInjected: 1' } }, 'CR, LF'],
    ['agents.echo', 1, { headers: { 'x-h': 'a\nb' } }, 'CR, LF'],
    ['agents.echo', 1, { headers: { 'bad name': 'v' } }, 'not valid'],
    ['agents.echo', 1, { headers: { 'x-h': 5 } }, 'string'],
    ['agents.echo', 1, { timeout: -1 }, 'seconds'],
    ['agents.echo', 1, { timeout: 'soon' }, 'seconds'],
    [42, 1, undefined, 'destination'],
  ]
  for (const [dest, payload, opts, text] of bad) {
    for (const call of [bridge.route.bind(bridge), bridge.publish.bind(bridge)]) {
      const e = await rejection(call(dest, payload, opts))
      assert.ok(e instanceof Error)
      assert.equal(e.code, 'INVALID_MESSAGE', `${String(dest)}: ${e.message}`)
      assert.ok(e.message.includes(text), `${JSON.stringify(e.message)} should mention ${text}`)
    }
  }
  assert.throws(() => bridge.registerRoute('a..b', () => 1), (e) => e.code === 'INVALID_MESSAGE')
  assert.throws(() => bridge.registerRoute('agents.>.x', () => 1), (e) => e.code === 'INVALID_MESSAGE')
  // The bridge keeps working after bad input.
  assert.equal(await bridge.route('agents.echo', 'still fine'), 'still fine')
  await bridge.shutdown()
})

test('ROUTE_NOT_FOUND', async () => {
  const bridge = await started()
  bridge.registerRoute('agents.a', () => 1)
  const e = await rejection(bridge.route('agents.b', {}))
  assert.equal(e.code, 'ROUTE_NOT_FOUND')
  assert.ok(e.message.includes('agents.b'))
  assert.equal((await rejection(bridge.publish('tools.x', {}))).code, 'ROUTE_NOT_FOUND')
  await bridge.shutdown()
})

test('HANDLER_ERROR: throw, reject, non-Error rejection, non-JSON reply', async () => {
  const bridge = await started()
  bridge.registerRoute('h.throw', () => {
    throw new Error('boom: sync')
  })
  bridge.registerRoute('h.reject', async () => {
    await sleep(1)
    throw new TypeError('boom: async')
  })
  bridge.registerRoute('h.rejectstr', () => Promise.reject('plain string'))
  bridge.registerRoute('h.badreply', () => ({ fn: () => 1 }))
  bridge.registerRoute('h.ok', () => 'ok')
  for (const [dest, text] of [
    ['h.throw', 'boom: sync'],
    ['h.reject', 'boom: async'],
    ['h.rejectstr', 'plain string'],
    ['h.badreply', 'function'],
  ]) {
    const e = await rejection(bridge.route(dest, null))
    assert.equal(e.code, 'HANDLER_ERROR')
    assert.ok(e.message.includes(text), e.message)
  }
  assert.equal(await bridge.route('h.ok'), 'ok')
  await bridge.shutdown()
})

test('TIMEOUT: a handler that never answers', async () => {
  const bridge = await started()
  bridge.registerRoute('slow.never', () => new Promise(() => {}))
  const e = await rejection(bridge.route('slow.never', 1, { timeout: 0.05 }))
  assert.equal(e.code, 'TIMEOUT')
  await bridge.shutdown(0.1)
})

test('QUEUE_FULL: max_concurrency 1, queue_size 1', async () => {
  const bridge = await started({ routes: [{ pattern: 'slow.q', max_concurrency: 1, queue_size: 1 }] })
  const g = gate()
  let calls = 0
  bridge.registerRoute('slow.q', async (m) => {
    calls++
    await g.promise
    return m.payload
  })
  const first = bridge.route('slow.q', 1, { timeout: 10 })
  const second = bridge.route('slow.q', 2, { timeout: 10 })
  await sleep(20)
  const e = await rejection(bridge.route('slow.q', 3, { timeout: 0.1 }))
  assert.equal(e.code, 'QUEUE_FULL')
  g.open()
  assert.deepEqual(await Promise.all([first, second]), [1, 2])
  assert.equal(calls, 2)
  await bridge.shutdown()
})

test('RATE_LIMITED: a route rate limit in reject mode carries retryAfter', async () => {
  const bridge = await started({
    bridge: { rate_limit_mode: 'reject' },
    routes: [{ pattern: 'limited.x', rate_limit: '1/min', burst: 1 }],
  })
  bridge.registerRustEcho('limited.x')
  assert.equal(await bridge.route('limited.x', 1), 1)
  const e = await rejection(bridge.route('limited.x', 2))
  assert.equal(e.code, 'RATE_LIMITED')
  assert.equal(typeof e.retryAfter, 'number')
  assert.ok(e.retryAfter > 0 && e.retryAfter <= 60, String(e.retryAfter))
  await bridge.shutdown()
})

test('SHUTDOWN: before initialize, in flight past the grace period, and after', async () => {
  const bridge = new BridgeManager()
  bridge.registerRoute('slow.never', () => new Promise(() => {}))
  bridge.registerRustEcho('agents.echo')
  assert.equal((await rejection(bridge.route('agents.echo', 1))).code, 'SHUTDOWN')
  await bridge.initialize()
  const inFlight = rejection(bridge.route('slow.never', 1, { timeout: 30 }))
  await sleep(20)
  await bridge.shutdown(0.05)
  assert.equal((await inFlight).code, 'SHUTDOWN')
  assert.equal((await rejection(bridge.route('agents.echo', 1))).code, 'SHUTDOWN')
  assert.equal((await rejection(bridge.publish('agents.echo', 1))).code, 'SHUTDOWN')
  assert.equal((await rejection(bridge.initialize())).code, 'SHUTDOWN')
  await bridge.shutdown() // twice is harmless
  assert.equal((await bridge.health()).status, 'down')
})

test('publish, dead letters and replay', async () => {
  const bridge = await started({ bridge: { retry_attempts: 0, retry_delay: '10ms' } })
  const got = []
  let failing = true
  bridge.registerRoute('events.audit', (m) => {
    if (failing) throw new Error('audit store offline')
    got.push(m.payload)
  })
  const id = await bridge.publish('events.audit', { n: 1 })
  assert.match(id, /^[0-9a-f-]{36}$/)
  let letters = []
  for (let i = 0; i < 200 && letters.length === 0; i++) {
    await sleep(10)
    letters = bridge.deadLetters()
  }
  assert.equal(letters.length, 1)
  assert.equal(letters[0].id, id)
  assert.equal(letters[0].error.code, 'HANDLER_ERROR')
  assert.ok(letters[0].error.message.includes('audit store offline'))
  assert.deepEqual(letters[0].message.payload, { n: 1 })
  assert.equal(letters[0].attempts, 1)

  // Replaying while it still fails puts it back; after the fix it leaves the store.
  assert.equal((await rejection(bridge.replay(id))).code, 'HANDLER_ERROR')
  assert.equal(bridge.deadLetters().length, 1)
  failing = false
  await bridge.replay(id)
  assert.deepEqual(got, [{ n: 1 }])
  assert.deepEqual(bridge.deadLetters(), [])
  assert.equal((await rejection(bridge.replay(id))).code, 'INVALID_MESSAGE')
  assert.equal((await rejection(bridge.replay('not-a-uuid'))).code, 'INVALID_MESSAGE')

  // A successful publish is delivered in the background.
  await bridge.publish({ destination: 'events.audit', payload: 'second' })
  for (let i = 0; i < 200 && got.length < 2; i++) await sleep(5)
  assert.deepEqual(got, [{ n: 1 }, 'second'])
  await bridge.shutdown()
})

test('observability: metrics(), metricsText(), health()', async () => {
  const bridge = await started()
  bridge.registerRustEcho('agents.echo')
  await bridge.route('agents.echo', 1)
  await rejection(bridge.route('agents.none', 1))
  const m = bridge.metrics()
  assert.equal(typeof m, 'object')
  assert.equal(typeof bridge.metricsText(), 'string')
  if (m.totals) {
    assert.equal(m.totals.accepted, 2)
    assert.equal(m.totals.ok, 1)
    assert.equal(m.totals.rejected, 1)
    assert.equal(m.totals.errors.ROUTE_NOT_FOUND, 1)
    assert.ok(bridge.metricsText().includes('# TYPE'))
  }
  const h = await bridge.health()
  assert.equal(h.status, 'up')
  assert.deepEqual(h.services, {})
  await bridge.shutdown()
})

test('security off: authorize allows everything', async () => {
  const bridge = await started()
  assert.equal(await bridge.authorize('anything', 'agents.x'), true)
  assert.equal((await rejection(bridge.authorize('t', 'agents.x', 'fly'))).code, 'INVALID_MESSAGE')
  await bridge.shutdown()
})

test('a toJSON() that throws is INVALID_MESSAGE and leaves the bridge working', async () => {
  const bridge = await started()
  bridge.registerRustEcho('agents.echo')
  const bad = {
    toJSON() {
      throw new Error('nope')
    },
  }
  const e = await rejection(bridge.route('agents.echo', { inner: bad }))
  assert.equal(e.code, 'INVALID_MESSAGE')
  assert.ok(e.message.includes('toJSON'))
  assert.equal(await bridge.route('agents.echo', 'ok'), 'ok')
  await bridge.shutdown()
})

test('a getter or Proxy trap that throws rejects with INVALID_MESSAGE, never a synchronous throw', async () => {
  const bridge = await started()
  bridge.registerRoute('agents.echo', (m) => m.payload)
  const bad = {
    get x() {
      throw new Error('getter boom')
    },
  }
  const trap = new Proxy(
    {},
    {
      ownKeys() {
        throw new Error('proxy boom')
      },
    },
  )
  const cases = [
    [() => bridge.route('agents.echo', bad), 'payload.x could not be read: getter boom'],
    [() => bridge.route({ destination: 'agents.echo', payload: bad }), 'getter boom'],
    [() => bridge.route('agents.echo', { a: [1, bad] }), 'payload.a[1].x could not be read: getter boom'],
    [() => bridge.route('agents.echo', trap), 'proxy boom'],
    [
      () =>
        bridge.route(
          'agents.echo',
          {},
          {
            get token() {
              throw new Error('opt boom')
            },
          },
        ),
      'options.token could not be read: opt boom',
    ],
    [() => bridge.publish('agents.echo', bad), 'getter boom'],
    [
      () =>
        bridge.route('agents.echo', {
          get x() {
            throw 'a thrown string'
          },
        }),
      'a thrown string',
    ],
  ]
  for (const [call, text] of cases) {
    const p = call()
    assert.ok(p instanceof Promise, `expected a Promise for ${text}`)
    const e = await rejection(p)
    assert.equal(e.code, 'INVALID_MESSAGE')
    assert.ok(e.message.includes(text), `${e.message} should include ${text}`)
  }
  assert.deepEqual(await bridge.route('agents.echo', { ok: 1 }), { ok: 1 })
  await bridge.shutdown()
})

test('a panic in an engine future rejects with INTERNAL instead of leaving the Promise pending', async () => {
  const bridge = await started()
  // Without the guard the Promise never settles and keeps Node alive: the
  // race turns that into a failure here instead of a hung test run.
  let timer
  const hung = new Promise((resolve) => {
    timer = setTimeout(() => resolve('still pending'), 30_000)
  })
  const outcome = await Promise.race([rejection(bridge.__testPanic()), hung])
  clearTimeout(timer)
  assert.notEqual(outcome, 'still pending')
  assert.equal(outcome.code, 'INTERNAL')
  assert.ok(outcome.message.includes('panicked'))
  bridge.registerRustEcho('agents.echo')
  assert.equal(await bridge.route('agents.echo', 'ok'), 'ok')
  await bridge.shutdown()
})

test('TIMEOUT: a shorter deadline after a longer one still fires first; answers beat deadlines', async () => {
  const bridge = await started()
  const g = gate()
  bridge.registerRoute('slow.gated', () => g.promise)
  bridge.registerRoute('slow.never', () => new Promise(() => {}))
  const long = bridge.route('slow.gated', 1, { timeout: 30 })
  const short = rejection(bridge.route('slow.never', 2, { timeout: 0.05 }))
  assert.equal((await short).code, 'TIMEOUT')
  g.open('answered')
  assert.equal(await long, 'answered')
  await bridge.shutdown()
})
