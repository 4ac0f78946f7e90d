// Type-level test of index.d.ts (napi-generated, plus dts-header.d.ts): the
// public API used as README.md and docs/node.md show it, checked by
// `tsc --strict` in `make lint-node`. It is never run. Each
// `@ts-expect-error` is a misuse the declarations must refuse; tsc fails if
// one is accepted.
import {
  BridgeManager,
  RemoteBridge,
  type BridgeError,
  type ConnectOptions,
  type Credentials,
  type DeadLetter,
  type ErrorCode,
  type Health,
  type Message,
  type Metrics,
  type Payload,
  type RouteOptions,
  type Token,
} from 'dreamos-bridge'

declare const yamlText: string
declare function sleep(ms: number): Promise<void>
declare function report(status: number | undefined, body: string | undefined): void

export async function local(): Promise<void> {
  const bridge: BridgeManager = BridgeManager.fromYaml(yamlText)
  const fromFile: BridgeManager = BridgeManager.fromFile('bridge.yaml')
  const embedded = new BridgeManager()
  const configured = new BridgeManager({
    bridge: { request_timeout: 5 },
    security: { auth_type: 'token', api_keys: [{ principal: 'planner', sha256: '00', roles: ['agent'] }] },
    routes: [{ pattern: 'agents.*', rate_limit: '100/s' }],
    limits: { max_json_depth: 64 },
  })
  await bridge.initialize()
  const running: boolean = bridge.isRunning

  bridge.registerRoute('agents.summarize', async (msg: Message) => {
    const text = (msg.payload as { text: string }).text
    const from: string | null = msg.source
    return { summary: text.slice(0, 80), from, at: msg.timestamp, id: msg.id, headers: msg.headers }
  })
  bridge.registerRoute('agents.plain', (msg) => msg.payload)
  bridge.registerRoute('agents.nothing', () => {})
  bridge.registerRustEcho('rust.echo')
  const removed: boolean = bridge.unregisterRoute('agents.plain')
  const patterns: string[] = bridge.routes()

  const token: Token = await bridge.authenticate({ api_key: 'dk_live_example' })
  const viaJwt: Token = await bridge.authenticate({ token: 'eyJ...' })
  const expires: number = token.expiresAt + viaJwt.expiresAt
  const opts: RouteOptions = { token, timeout: 2, headers: { 'x-trace': '1' }, priority: 5 }
  const reply: Payload = await bridge.route('agents.summarize', { text: '...' }, opts)
  const same: Payload = await bridge.route({ destination: 'agents.summarize', payload: { text: '...' } }, { timeout: 2 })
  const bytes: Payload = await bridge.route('rust.echo', new Uint8Array([1, 2, 3]), { token: token.value })
  const id: string = await bridge.publish('events.audit', { by: token.principal }, { token })
  const allowed: boolean = await bridge.authorize(token, 'agents.admin')
  const mayPublish: boolean = await bridge.authorize(token.value, 'events.x', 'publish')
  await bridge.revoke(token)

  const metrics: Metrics = bridge.metrics()
  const rateLimited: number = metrics.totals.rate_limited + metrics.totals.errors.RATE_LIMITED
  const text: string = bridge.metricsText()
  const health: Health = await bridge.health()
  const status: 'up' | 'degraded' | 'down' = health.status
  const letters: DeadLetter[] = bridge.deadLetters()
  for (const letter of letters) {
    const code: ErrorCode = letter.error.code
    if (code === 'UPSTREAM_ERROR') await bridge.replay(letter.id)
  }

  try {
    await bridge.route('services.weather.current', { city: 'Paris' }, { token })
  } catch (e) {
    const err = e as BridgeError
    if (err.code === 'RATE_LIMITED') await sleep((err.retryAfter ?? 1) * 1000)
    else if (err.code === 'UPSTREAM_ERROR') report(err.status, err.body)
    else throw e
  }
  await bridge.shutdown()
  await bridge.shutdown(0.5)
  void [fromFile, embedded, configured, running, removed, patterns, expires, reply, same, bytes, id]
  void [allowed, mayPublish, rateLimited, text, status]

  // @ts-expect-error: credentials are {api_key} or {token}
  await bridge.authenticate({ apiKey: 'dk_live_example' })
  // @ts-expect-error: timeout is a number of seconds
  await bridge.route('agents.summarize', null, { timeout: '2s' })
  // @ts-expect-error: the action is one of route, publish, handle, admin
  await bridge.authorize(token, 'agents.x', 'delete')
  // @ts-expect-error: a payload is JSON or bytes, never a function
  await bridge.route('agents.summarize', () => 1)
  // @ts-expect-error: not an error code
  const wrong: ErrorCode = 'NOT_A_CODE'
  void wrong
}

export async function remote(credentials: Credentials): Promise<void> {
  const bridge: RemoteBridge = await BridgeManager.connect('http://127.0.0.1:8000', credentials)
  const anonymous = await BridgeManager.connect('http://127.0.0.1:8000')
  const options: ConnectOptions = { timeout: 10, caFile: 'ca.pem', maxConnections: 8 }
  const tuned = await BridgeManager.connect('https://bridge.example:8443', null, options)
  const reply: Payload = await bridge.route('tools.search.web', { q: 'rust' }, { timeout: 10 })
  const id: string = await bridge.publish({ destination: 'events.audit', payload: { ok: true } })
  await bridge.registerRoute('agents.planner.>', async (msg: Message) => ({ plan: msg.payload }))
  const removed: boolean = bridge.unregisterRoute('agents.planner.>')
  const patterns: string[] = bridge.routes()
  const token: Token | null = bridge.token
  const url: string = bridge.url
  const closed: boolean = bridge.isClosed
  const other: Token = await bridge.authenticate({ api_key: 'dk_example_other' })
  const metrics: Metrics = await bridge.metrics()
  const health: Health = await bridge.health()
  await bridge.close()
  await anonymous.close()
  await tuned.close()
  void [reply, id, removed, patterns, token, url, closed, other, metrics, health]

  // @ts-expect-error: connect options are {timeout, caFile, maxConnections}
  await BridgeManager.connect('http://127.0.0.1:8000', null, { retries: 3 })
  // @ts-expect-error: maxConnections is a number
  await BridgeManager.connect('http://127.0.0.1:8000', null, { maxConnections: '8' })
  // @ts-expect-error: a RemoteBridge's metrics are a Promise (they come from the server)
  const sync: Metrics = bridge.metrics()
  void sync
}
