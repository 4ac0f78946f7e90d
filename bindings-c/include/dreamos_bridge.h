/*
 * dreamos-bridge C API: link the Dream.OS bridge engine from C.
 *
 * Conventions (see docs/c.md):
 *  - every fallible function returns a dreamos_status; DREAMOS_OK is 0;
 *    after a failure dreamos_last_error_message() says what was wrong;
 *  - outputs go through out-pointers and are written only on success;
 *  - strings are UTF-8, structured values JSON; every string the library
 *    returns through an out-pointer is freed with dreamos_string_free();
 *  - strings passed to callbacks are owned by the library and valid only
 *    during the callback;
 *  - *_free(NULL) is a no-op; no call ever unwinds a panic into C
 *    (DREAMOS_PANIC instead);
 *  - callbacks (handlers, completions) run on the library's threads,
 *    possibly concurrently: their user_data must be usable from any thread.
 */

#ifndef DREAMOS_BRIDGE_H
#define DREAMOS_BRIDGE_H

/* Generated with cbindgen:0.29.4 */

/* Generated from bindings-c/src by cbindgen: do not edit; run `make c-header`. */

#include <stdbool.h>
#include <stdint.h>

/**
 * The result of every fallible call: `DREAMOS_OK`, or why it failed.
 *
 * One value per error code of the engine (the same codes Python and Node
 * show as strings), plus `DREAMOS_NULL_PARAMETER` (a required pointer was
 * NULL) and `DREAMOS_PANIC` (a bug inside the library was caught at the
 * boundary). The numbers are stable. After a failure,
 * `dreamos_last_error_message()` says what was wrong and what to do.
 */
typedef enum {
  /**
   * Success.
   */
  DREAMOS_OK = 0,
  /**
   * The configuration is invalid; the message names the key path.
   */
  DREAMOS_CONFIG = 1,
  /**
   * Bad destination or pattern, malformed JSON, invalid UTF-8, oversize or too-deep payload.
   */
  DREAMOS_INVALID_MESSAGE = 2,
  /**
   * Bad credentials; token missing, malformed, expired or revoked.
   */
  DREAMOS_UNAUTHENTICATED = 3,
  /**
   * Authenticated, but not allowed this action on this destination.
   */
  DREAMOS_FORBIDDEN = 4,
  /**
   * No route matches the destination.
   */
  DREAMOS_ROUTE_NOT_FOUND = 5,
  /**
   * A rate limit was hit; the message says when to retry.
   */
  DREAMOS_RATE_LIMITED = 6,
  /**
   * Backpressure: the route's queue had no room within the deadline.
   */
  DREAMOS_QUEUE_FULL = 7,
  /**
   * The deadline passed.
   */
  DREAMOS_TIMEOUT = 8,
  /**
   * Connecting to a service failed after retries, its circuit is open, or it is down.
   */
  DREAMOS_SERVICE_UNAVAILABLE = 9,
  /**
   * A service answered with an error status.
   */
  DREAMOS_UPSTREAM_ERROR = 10,
  /**
   * An in-process handler failed (a C handler returned a status other than `DREAMOS_OK`).
   */
  DREAMOS_HANDLER_ERROR = 11,
  /**
   * The bridge is not running (not initialized yet, or shut down).
   */
  DREAMOS_SHUTDOWN = 12,
  /**
   * A bug in the bridge.
   */
  DREAMOS_INTERNAL = 13,
  /**
   * A pointer parameter that must not be NULL was NULL.
   */
  DREAMOS_NULL_PARAMETER = 14,
  /**
   * A panic inside the library was caught at the boundary (a bug); the call did nothing.
   */
  DREAMOS_PANIC = 15,
} dreamos_status;

/**
 * A bridge: one engine with its routes, limits, security and metrics.
 *
 * Opaque. Created by `dreamos_bridge_new` or `dreamos_bridge_from_file`,
 * released by `dreamos_bridge_free`. Every function taking a
 * `dreamos_bridge *` may be called from any thread, concurrently, except
 * `dreamos_bridge_free`, which must be the last call on it.
 */
typedef struct dreamos_bridge dreamos_bridge;

/**
 * Called once when an asynchronous call completes.
 *
 * `status` is `DREAMOS_OK` and `reply_json_or_error` the reply as JSON, or
 * `status` is the failure and `reply_json_or_error` its message. The string
 * is owned by the library and valid only during the callback: copy it to
 * keep it. Runs on one of the library's threads (never the caller's), possibly
 * on several at once for concurrent calls; keep it short. It may call back
 * into the library.
 */
typedef void (*dreamos_completion_fn)(void *user_data,
                                      dreamos_status status,
                                      const char *reply_json_or_error);

/**
 * A message handler written in C.
 *
 * Called with the `user_data` given to `dreamos_bridge_register_route`, the
 * message as a JSON object (`id`, `destination`, `payload`, `headers`,
 * `source`, `timestamp`, `priority`) that is owned by the library and valid
 * only during the call, and an out-pointer for the reply.
 *
 * Return `DREAMOS_OK` and set `*reply_json_out` to a JSON text allocated with
 * `malloc` (the library frees it with `free`; leaving it NULL replies
 * `null`). Any other status fails the call with `DREAMOS_HANDLER_ERROR`,
 * and the string in `*reply_json_out`, if set, becomes the error message.
 *
 * Runs on one of the library's threads (its blocking pool), possibly on
 * several threads at once: `user_data` must be safe to use from any thread.
 */
typedef dreamos_status (*dreamos_handler_fn)(void *user_data,
                                             const char *message_json,
                                             char **reply_json_out);

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

/**
 * Create a bridge from YAML configuration text (the keys of the YAML file,
 * DESIGN.md section 7), or from the embedded default (in-process handlers
 * only, no services, no security) when `config_yaml_or_null` is NULL.
 *
 * On success `*out` receives a new bridge, which the caller owns and
 * releases with `dreamos_bridge_free`. The bridge does not admit messages
 * until `dreamos_bridge_initialize`. An invalid configuration is
 * `DREAMOS_CONFIG` and the last error message names the key path
 * (`bridge.max_connections: expected an integer, got "many"`).
 *
 * # Safety
 * `config_yaml_or_null` is NULL or a NUL-terminated string; `out` is a
 * writable pointer.
 */
dreamos_status dreamos_bridge_new(const char *config_yaml_or_null, dreamos_bridge **out);

/**
 * Create a bridge from a YAML configuration file. As `dreamos_bridge_new`;
 * an unreadable file is `DREAMOS_CONFIG`. The path is taken as bytes (it
 * need not be UTF-8).
 *
 * # Safety
 * `path` is a NUL-terminated string; `out` is a writable pointer.
 */
dreamos_status dreamos_bridge_from_file(const char *path, dreamos_bridge **out);

/**
 * Start the bridge: it begins admitting messages. Calling it again on a
 * running bridge does nothing; on a shut-down bridge it is `DREAMOS_SHUTDOWN`.
 *
 * # Safety
 * `b` is a live bridge.
 */
dreamos_status dreamos_bridge_initialize(const dreamos_bridge *b);

/**
 * Shut the bridge down gracefully: stop admitting, let in-flight calls
 * finish within `bridge.shutdown_grace`, then answer what is left with
 * `DREAMOS_SHUTDOWN`. Blocks until done. Calling it twice is harmless; the
 * bridge cannot be restarted (create a new one).
 *
 * # Safety
 * `b` is a live bridge.
 */
dreamos_status dreamos_bridge_shutdown(const dreamos_bridge *b);

/**
 * Shut the bridge down (as `dreamos_bridge_shutdown`, if still running) and
 * release it. Blocks until every handler call and completion callback of this
 * bridge has returned (those running on the calling thread excepted), so
 * that after it returns the library no longer uses any `user_data` given to
 * it. NULL is a no-op. `b` must not be used afterwards. In a child forked
 * after the library started its threads it returns at once and leaks the
 * handle (nothing of it can run there; waiting would hang forever).
 *
 * # Safety
 * `b` is NULL or a live bridge that no other thread is using.
 */
void dreamos_bridge_free(dreamos_bridge *b);

/**
 * Check credentials and issue a bridge token.
 *
 * `credentials_json` is `{"api_key": "..."}` or `{"token": "<OIDC JWT>"}`.
 * On success `*token_out` receives the token string (a JWT) to pass to the
 * other calls; free it with `dreamos_string_free`. Wrong credentials are
 * `DREAMOS_UNAUTHENTICATED`; malformed JSON is `DREAMOS_INVALID_MESSAGE`.
 *
 * # Safety
 * `b` is a live bridge; `credentials_json` a NUL-terminated string;
 * `token_out` a writable pointer.
 */
dreamos_status dreamos_bridge_authenticate(const dreamos_bridge *b,
                                           const char *credentials_json,
                                           char **token_out);

/**
 * Whether the token's principal may route (request/reply) to `resource`.
 * On success `*allowed_out` is true or false; an invalid or expired token is
 * `DREAMOS_UNAUTHENTICATED`. With security off everything is allowed.
 *
 * # Safety
 * `b` is a live bridge; `token` and `resource` NUL-terminated strings;
 * `allowed_out` a writable pointer.
 */
dreamos_status dreamos_bridge_authorize(const dreamos_bridge *b,
                                        const char *token,
                                        const char *resource,
                                        bool *allowed_out);

/**
 * Request/reply: deliver `payload_json` to `destination` and wait for the
 * reply.
 *
 * `token_or_null` is the caller's token (required when security is on).
 * `timeout_ms` bounds the wait; 0 means the route's or the configured
 * default (`bridge.request_timeout`). On success `*reply_json_out` receives
 * the reply as JSON; free it with `dreamos_string_free`.
 *
 * Blocks the calling thread. It may be called from a handler or completion
 * callback (a library thread): the wait then hands that thread's other work
 * to the remaining threads, so it does not deadlock, but it holds a thread
 * for the whole call — prefer `dreamos_bridge_route_async` there.
 *
 * # Safety
 * `b` is a live bridge; `token_or_null` NULL or a NUL-terminated string;
 * `destination` and `payload_json` NUL-terminated strings; `reply_json_out`
 * a writable pointer.
 */
dreamos_status dreamos_bridge_route(const dreamos_bridge *b,
                                    const char *token_or_null,
                                    const char *destination,
                                    const char *payload_json,
                                    uint32_t timeout_ms,
                                    char **reply_json_out);

/**
 * Request/reply without blocking: returns at once, and `cb` is called
 * exactly once with the outcome, on a library thread (see
 * `dreamos_completion_fn`), with `user_data` passed through.
 *
 * Arguments are checked first: if this returns anything but `DREAMOS_OK`
 * (NULL pointer, invalid UTF-8, malformed JSON) `cb` is never called.
 * Everything the engine decides (route not found, timeout, handler error, ...)
 * arrives through `cb`. Arguments are copied; they need not outlive the call.
 * `cb` may run before this function has returned (on another thread).
 *
 * # Safety
 * As `dreamos_bridge_route`; `cb` and `user_data` must be usable from any thread
 * until `cb` has been called.
 */
dreamos_status dreamos_bridge_route_async(const dreamos_bridge *b,
                                          const char *token_or_null,
                                          const char *destination,
                                          const char *payload_json,
                                          uint32_t timeout_ms,
                                          dreamos_completion_fn cb,
                                          void *user_data);

/**
 * Fire-and-forget: admit `payload_json` for `destination` and return at
 * once; the bridge delivers it in the background, with retries, and keeps
 * it in the dead-letter store if delivery finally fails. On success
 * `*message_id_out` receives the message id (a UUID string); free it with
 * `dreamos_string_free`.
 *
 * # Safety
 * As `dreamos_bridge_route`.
 */
dreamos_status dreamos_bridge_publish(const dreamos_bridge *b,
                                      const char *token_or_null,
                                      const char *destination,
                                      const char *payload_json,
                                      char **message_id_out);

/**
 * Route every destination matching `pattern` (`agents.summarize`,
 * `agents.*`, `tools.>`) to a C handler, replacing any route with the same
 * pattern. Limits come from a `routes` entry with the same pattern and no
 * service. A bad pattern is `DREAMOS_INVALID_MESSAGE`.
 *
 * `handler` is called with `user_data` on library threads, concurrently
 * (see `dreamos_handler_fn`). Replacing or unregistering the route stops new
 * calls from reaching it, but calls admitted before (publishes still being
 * retried among them) may start the handler after that returns: only
 * `dreamos_bridge_free` returning ends its use of `user_data`.
 *
 * # Safety
 * `b` is a live bridge; `pattern` a NUL-terminated string; `handler` a valid
 * function; `user_data` usable from any thread until `dreamos_bridge_free(b)`
 * has returned.
 */
dreamos_status dreamos_bridge_register_route(const dreamos_bridge *b,
                                             const char *pattern,
                                             dreamos_handler_fn handler,
                                             void *user_data);

/**
 * Remove the route with exactly this pattern. Calls already admitted on it
 * still complete, running its handler, possibly after this returns (its
 * `user_data` must live until `dreamos_bridge_free`). No such route is
 * `DREAMOS_ROUTE_NOT_FOUND`.
 *
 * # Safety
 * `b` is a live bridge; `pattern` a NUL-terminated string.
 */
dreamos_status dreamos_bridge_unregister_route(const dreamos_bridge *b, const char *pattern);

/**
 * Route `pattern` to a handler inside the library that replies with the
 * payload it receives. For benchmarks and tests: it measures the bridge
 * without a C handler's thread hop.
 *
 * # Safety
 * `b` is a live bridge; `pattern` a NUL-terminated string.
 */
dreamos_status dreamos_bridge_register_echo(const dreamos_bridge *b, const char *pattern);

/**
 * A snapshot of every metric as JSON (counters, latencies, queue depths per
 * route, service and principal). Free `*out` with `dreamos_string_free`.
 *
 * # Safety
 * `b` is a live bridge; `out` a writable pointer.
 */
dreamos_status dreamos_bridge_metrics_json(const dreamos_bridge *b, char **out);

/**
 * The metrics in the Prometheus text format. Free `*out` with
 * `dreamos_string_free`.
 *
 * # Safety
 * `b` is a live bridge; `out` a writable pointer.
 */
dreamos_status dreamos_bridge_metrics_text(const dreamos_bridge *b, char **out);

/**
 * Health of the bridge and each service as JSON:
 * `{"status": "up"|"degraded"|"down", "services": {...}}`. Free `*out` with
 * `dreamos_string_free`.
 *
 * # Safety
 * `b` is a live bridge; `out` a writable pointer.
 */
dreamos_status dreamos_bridge_health_json(const dreamos_bridge *b, char **out);

/**
 * Release a string the library returned through an out-pointer. NULL is a
 * no-op. Do not pass strings from anywhere else (and not the strings given
 * to callbacks, `dreamos_last_error_message` or `dreamos_status_name`,
 * which the library owns).
 *
 * # Safety
 * `s` is NULL or a string from this library not yet freed.
 */
void dreamos_string_free(char *s);

/**
 * The calling thread's last error message: what went wrong in this
 * thread's most recent failed call, and what to do. An empty string after
 * a call that succeeded. Never NULL. The string is owned by the library and
 * stays valid until the thread's next call to a function that returns a
 * `dreamos_status`; copy it to keep it.
 */
const char *dreamos_last_error_message(void);

/**
 * The name of a status without its prefix (`"RATE_LIMITED"`, the code
 * string Python and Node show), or `"UNKNOWN"` for a value that is not a
 * `dreamos_status`. A static string: never freed.
 */
const char *dreamos_status_name(int status);

/**
 * The library's version (`"0.1.0"`). A static string: never freed.
 */
const char *dreamos_version(void);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* DREAMOS_BRIDGE_H */
