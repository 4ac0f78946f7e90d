dts-header.d.ts
/**
 * Which binding artifact the generated loader actually loaded: `'native'` for
 * a native addon, otherwise the `platformArchABI` of the WASI flavor. Every
 * flavor napi-rs can build is listed, because `NAPI_RS_NATIVE_LIBRARY_PATH`
 * can point the loader at a WASI artifact this package does not build itself.
 */
export declare const __napiBindingTarget: 'native' | 'wasm32-wasi' | 'wasm32-wasip1'

/** The bridge: one engine, shared by every clone and every call. */
export declare class BridgeManager {
  /**
   * A bridge from a config object with the YAML key names; without one, the
   * embedded default (in-process handlers only, no services, no security).
   */
  constructor(config?: BridgeConfig | null)
  /** A bridge from YAML text. */
  static fromYaml(text: string): BridgeManager
  /** A bridge from a YAML file. */
  static fromFile(path: string): BridgeManager
  /** Start the bridge; calls are refused with `SHUTDOWN` until this resolves. */
  initialize(): Promise<void>
  /**
   * Stop admitting, let in-flight work finish (for `grace` seconds, default
   * `bridge.shutdown_grace`), then fail what is left with `SHUTDOWN`.
   */
  shutdown(grace?: number | undefined | null): Promise<void>
  /** Is the bridge admitting messages? */
  get isRunning(): boolean
  /**
   * Route `pattern` to a JS function (plain or async). It receives the
   * message and returns the reply payload (or a Promise of it); a throw or
   * a rejection reaches the caller as `HANDLER_ERROR`.
   */
  registerRoute(pattern: string, handler: (message: Message) => Payload | Promise<Payload> | void | Promise<void>): void
  /** Remove the route with exactly this pattern; `true` if there was one. */
  unregisterRoute(pattern: string): boolean
  /** The registered patterns. */
  routes(): Array<string>
  /**
   * Benchmark and test aid: route `pattern` to a handler written in Rust
   * that replies with the request payload.
   */
  registerRustEcho(pattern: string): void
  /**
   * Request/reply: resolves with the reply payload, or rejects with an
   * `Error` whose `.code` says why. `timeout` is in seconds.
   */
  route(destinationOrMessage: string | MessageInit, payload?: Payload | RouteOptions, options?: RouteOptions): Promise<Payload>
  /**
   * Fire-and-forget: resolves with the message id once the message is
   * admitted; delivery (with retries) goes on in the background, and a
   * final failure lands in `deadLetters()`.
   */
  publish(destinationOrMessage: string | MessageInit, payload?: Payload | RouteOptions, options?: RouteOptions): Promise<string>
  /**
   * Exchange credentials (`{api_key}` or `{token}` for an OIDC JWT) for a
   * bridge token.
   */
  authenticate(credentials: Credentials): Promise<Token>
  /**
   * May the token's principal take `action` (default `route`) on
   * `resource`? Resolves `false` on a refusal; rejects `UNAUTHENTICATED`
   * for a bad token.
   */
  authorize(token: Token | string, resource: string, action?: 'route' | 'publish' | 'handle' | 'admin'): Promise<boolean>
  /** Revoke a token until it expires. */
  revoke(token: Token | string): Promise<void>
  /** A snapshot of every metric. */
  metrics(): Metrics
  /** Metrics in the Prometheus text format. */
  metricsText(): string
  /** Health of the bridge and of each service. */
  health(): Promise<Health>
  /** Failed publishes, oldest first. */
  deadLetters(): DeadLetter[]
  /** Deliver a dead letter again; it leaves the store on success. */
  replay(id: string): Promise<void>
}
export type JsBridgeManager = BridgeManager
