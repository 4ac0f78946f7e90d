// A Dream.OS agent on the bridge, from Node: security on, an API key
// exchanged for a token, an in-process tool, request/reply, a publish, a
// refused destination, and the metrics the bridge recorded.
//
//   npm install            # builds the addon and links `dreamos-bridge`
//   node examples/agent.mjs
import { createHash, randomBytes } from 'node:crypto'
import { BridgeManager } from 'dreamos-bridge'

// The bridge stores only the SHA-256 of an API key, never the key itself.
const apiKey = process.env.DREAMOS_API_KEY ?? `dk_live_${randomBytes(12).toString('hex')}`
const bridge = new BridgeManager({
  bridge: { request_timeout: '5s' },
  security: {
    auth_type: 'token',
    token_expiry: 3600,
    rate_limit: 1000,
    signing_keys: [{ id: 'k1', secret: process.env.DREAMOS_TOKEN_KEY ?? randomBytes(32).toString('hex') }],
    api_keys: [{ principal: 'planner', sha256: createHash('sha256').update(apiKey).digest('hex'), roles: ['agent'] }],
    roles: {
      agent: { route: ['agents.*'], publish: ['events.>'], deny: ['agents.admin'] },
    },
  },
})
await bridge.initialize()

// An in-process tool: plain and async functions both work.
bridge.registerRoute('agents.summarize', async (msg) => ({
  summary: msg.payload.text.slice(0, 40),
  words: msg.payload.text.split(/\s+/).length,
  for: msg.source,
}))
bridge.registerRoute('agents.admin', () => 'never reached')
const audit = []
bridge.registerRoute('events.>', (msg) => {
  audit.push(msg.payload)
})

const token = await bridge.authenticate({ api_key: apiKey })
console.log(`authenticated as ${token.principal} (roles: ${token.roles.join(', ')}), token expires at ${new Date(token.expiresAt * 1000).toISOString()}`)

const reply = await bridge.route(
  'agents.summarize',
  { text: 'The bridge authenticates, authorizes, rate-limits and routes every call an agent makes.' },
  { token, timeout: 2 },
)
console.log('reply:', reply)

const id = await bridge.publish('events.audit', { action: 'summarize', by: token.principal }, { token })
console.log('published', id)

try {
  await bridge.route('agents.admin', {}, { token })
} catch (e) {
  console.log(`refused as expected: ${e.code}: ${e.message}`)
}

await bridge.shutdown() // drains the publish before returning
console.log('audit log:', audit)
const m = bridge.metrics()
console.log('metrics:', JSON.stringify(m.totals ?? m, null, 2))
