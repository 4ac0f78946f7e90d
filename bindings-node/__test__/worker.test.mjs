// Worker threads and process exit, each in a child process so that a crash
// or a hang shows up as an exit code or a timeout instead of killing the runner.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'

const addon = fileURLToPath(new URL('../index.js', import.meta.url))

function run(source, timeoutMs = 30_000) {
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', source], {
    env: { ...process.env, DREAMOS_ADDON: addon },
    encoding: 'utf8',
    timeout: timeoutMs,
  })
  return { code: r.status, signal: r.signal, out: r.stdout, err: r.stderr, timedOut: r.error?.code === 'ETIMEDOUT' }
}

test('the process exits by itself after shutdown(), with JS handlers still registered', () => {
  const r = run(`
    import { createRequire } from 'node:module'
    const { BridgeManager } = createRequire(import.meta.url)(process.env.DREAMOS_ADDON)
    const bridge = new BridgeManager()
    await bridge.initialize()
    bridge.registerRoute('agents.a', async (m) => m.payload)
    bridge.registerRoute('agents.b', (m) => m.payload)
    bridge.registerRustEcho('agents.c')
    for (const d of ['agents.a', 'agents.b', 'agents.c']) await bridge.route(d, 1)
    await bridge.shutdown()
    console.log('shut down')
  `)
  assert.equal(r.timedOut, false, 'the process did not exit')
  assert.equal(r.code, 0, r.err)
  assert.match(r.out, /shut down/)
})

test('a pending route keeps the process alive until it is answered', () => {
  const r = run(`
    import { createRequire } from 'node:module'
    const { BridgeManager } = createRequire(import.meta.url)(process.env.DREAMOS_ADDON)
    const bridge = new BridgeManager()
    await bridge.initialize()
    bridge.registerRoute('slow.never', () => new Promise(() => {}))
    // Nothing but the bridge keeps the loop alive: the TIMEOUT must still arrive.
    const e = await bridge.route('slow.never', 1, { timeout: 0.2 }).catch((e) => e)
    console.log('answered', e.code)
    await bridge.shutdown(0)
  `)
  assert.equal(r.timedOut, false)
  assert.equal(r.code, 0, r.err)
  assert.match(r.out, /answered TIMEOUT/)
})

test('a bridge that is never shut down does not keep the process alive', () => {
  const r = run(`
    import { createRequire } from 'node:module'
    const { BridgeManager } = createRequire(import.meta.url)(process.env.DREAMOS_ADDON)
    const bridge = new BridgeManager()
    await bridge.initialize()
    bridge.registerRoute('agents.a', (m) => m.payload)
    console.log(await bridge.route('agents.a', 'done'))
  `)
  assert.equal(r.timedOut, false)
  assert.equal(r.code, 0, r.err)
  assert.match(r.out, /done/)
})

test('terminating a worker with promises in flight neither crashes nor hangs', () => {
  const r = run(`
    import { Worker } from 'node:worker_threads'
    const src = \`
      const { parentPort } = require('node:worker_threads')
      const { BridgeManager } = require(process.env.DREAMOS_ADDON)
      ;(async () => {
        const bridge = new BridgeManager()
        await bridge.initialize()
        bridge.registerRoute('slow.never', () => new Promise(() => {}))
        bridge.registerRoute('slow.later', (m) => new Promise((r) => setTimeout(() => r(m.payload), 50)))
        bridge.registerRustEcho('fast.echo')
        for (let i = 0; i < 500; i++) {
          bridge.route('slow.never', i, { timeout: 30 }).catch(() => {})
          bridge.route('slow.later', i, { timeout: 30 }).catch(() => {})
          bridge.route('fast.echo', i).catch(() => {})
          bridge.publish('slow.later', i).catch(() => {})
        }
        const ok = await bridge.route('fast.echo', 'ready')
        parentPort.postMessage(ok)
      })()
    \`
    for (let round = 0; round < 3; round++) {
      const w = new Worker(src, { eval: true, execArgv: [] })
      const msg = await new Promise((resolve, reject) => { w.once('message', resolve); w.once('error', reject) })
      if (msg !== 'ready') throw new Error('worker said ' + msg)
      await w.terminate()
    }
    // The addon still works on the main thread after the workers are gone.
    import { createRequire } from 'node:module'
    const { BridgeManager } = createRequire(import.meta.url)(process.env.DREAMOS_ADDON)
    const bridge = new BridgeManager()
    await bridge.initialize()
    bridge.registerRoute('agents.a', (m) => m.payload)
    console.log('main', await bridge.route('agents.a', 'alive'))
    await bridge.shutdown()
  `)
  assert.equal(r.timedOut, false, 'hung')
  assert.equal(r.signal, null, `crashed: ${r.signal} ${r.err}`)
  assert.equal(r.code, 0, r.err)
  assert.match(r.out, /main alive/)
})

test('a worker that shuts its bridge down exits on its own', () => {
  const r = run(`
    import { Worker } from 'node:worker_threads'
    const src = \`
      const { BridgeManager } = require(process.env.DREAMOS_ADDON)
      ;(async () => {
        const bridge = new BridgeManager()
        await bridge.initialize()
        bridge.registerRoute('agents.a', async (m) => m.payload)
        await bridge.route('agents.a', 1)
        await bridge.shutdown()
      })()
    \`
    const w = new Worker(src, { eval: true, execArgv: [] })
    const code = await new Promise((resolve) => w.once('exit', resolve))
    console.log('worker exit', code)
  `)
  assert.equal(r.timedOut, false, 'hung')
  assert.equal(r.code, 0, r.err)
  assert.match(r.out, /worker exit 0/)
})
