// Node binding benchmark: each figure beside a peer measured in the same run.
//
//   1. an in-process JS handler through the bridge vs a plain Map dispatch
//      of the same async function (what an agent without a bridge would do);
//   2. a Rust-side echo through the bridge at 1,000 concurrent (goal:
//      at least 300,000 routes/s) vs the same Map dispatch;
//   3. an HTTP service on loopback at 32 concurrent through the bridge vs
//      fetch() doing the same requests (goal: at least as fast).
//
// Run with a release build: `make bench-node` (or `npm run build && node bench/node_route.mjs`).
import { spawn } from 'node:child_process'
import { createRequire } from 'node:module'

const { BridgeManager } = createRequire(import.meta.url)('../bindings-node/index.js')

const fmt = (n) => Math.round(n).toLocaleString('en-US')

/** Calls per second of `call(i)` with `concurrency` calls in flight, after a warm-up. */
async function rate(call, total, concurrency) {
  const run = async (n) => {
    let next = 0
    const lane = async () => {
      while (next < n) await call(next++)
    }
    await Promise.all(Array.from({ length: concurrency }, lane))
  }
  await run(Math.min(total / 10, 5000))
  const t0 = process.hrtime.bigint()
  await run(total)
  const secs = Number(process.hrtime.bigint() - t0) / 1e9
  return total / secs
}

function row(label, ours, peerLabel, peer, note = '') {
  console.log(
    `${label.padEnd(44)} ${fmt(ours).padStart(10)} /s   ${peerLabel.padEnd(26)} ${fmt(peer).padStart(10)} /s   ratio ${(ours / peer).toFixed(2)}${note}`,
  )
}

const bridge = new BridgeManager({ bridge: { queue_size: 100000 } })
await bridge.initialize()

// 1. In-process JS handler vs a Map dispatch of the same function.
const handler = async (msg) => ({ ok: true, n: msg.payload.n })
bridge.registerRoute('agents.work', handler)
const table = new Map([['agents.work', handler]])
for (const concurrency of [1, 100]) {
  const ours = await rate((i) => bridge.route('agents.work', { n: i }), 20000, concurrency)
  const peer = await rate(
    (i) => table.get('agents.work')({ id: i, destination: 'agents.work', payload: { n: i } }),
    200000,
    concurrency,
  )
  row(`JS handler via bridge, ${concurrency} concurrent`, ours, 'Map dispatch', peer)
}

// 2. Rust echo at 1,000 concurrent.
bridge.registerRustEcho('rust.echo')
{
  const ours = await rate((i) => bridge.route('rust.echo', { n: i }), 300000, 1000)
  const peer = await rate(
    (i) => table.get('agents.work')({ id: i, destination: 'agents.work', payload: { n: i } }),
    300000,
    1000,
  )
  row('Rust echo via bridge, 1000 concurrent', ours, 'Map dispatch (JS)', peer, `   goal >= 300,000/s: ${ours >= 300000 ? 'met' : 'NOT met'}`)
}

// 3. HTTP service on loopback, 32 concurrent, vs fetch. The echo server
// runs in its own process, so that it does not share this event loop with
// fetch (which would halve fetch's figure and flatter the bridge).
{
  const serverCode = `
    const { createServer } = require('node:http')
    const server = createServer((req, res) => {
      const chunks = []
      req.on('data', (c) => chunks.push(c))
      req.on('end', () => {
        const body = Buffer.concat(chunks)
        res.writeHead(200, { 'content-type': 'application/json' })
        res.end(body.length ? body : '{}')
      })
    })
    server.listen(0, '127.0.0.1', () => console.log(server.address().port))
    process.stdin.on('close', () => process.exit(0))
    process.stdin.resume()`
  const child = spawn(process.execPath, ['-e', serverCode], { stdio: ['pipe', 'pipe', 'inherit'] })
  const port = await new Promise((resolve, reject) => {
    child.stdout.once('data', (d) => resolve(Number(String(d).trim())))
    child.once('exit', (code) => reject(new Error(`the echo server exited (${code})`)))
  })
  const url = `http://127.0.0.1:${port}`
  const http = new BridgeManager({
    services: { echo: { url, timeout: '5s' } },
    routes: [{ pattern: 'services.echo.>', service: 'echo' }],
  })
  await http.initialize()
  let probe
  try {
    probe = await http.route('services.echo.run', { n: 1 })
  } catch (e) {
    probe = e
  }
  if (probe instanceof Error) {
    console.log(`HTTP service vs fetch: skipped, the bridge cannot reach HTTP services in this build (${probe.code}: ${probe.message})`)
  } else {
    const ours = await rate((i) => http.route('services.echo.run', { n: i }), 5000, 32)
    const peer = await rate(
      (i) =>
        fetch(`${url}/run`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ n: i }),
        }).then((r) => r.json()),
      5000,
      32,
    )
    row('HTTP service via bridge, 32 concurrent', ours, 'fetch (undici)', peer)
  }
  await http.shutdown()
  child.stdin.end()
}

await bridge.shutdown()
