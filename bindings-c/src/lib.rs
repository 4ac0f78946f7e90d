//! # dreamos-bridge C API
//!
//! `libdreamos_bridge` (`.so` and `.a`) and `include/dreamos_bridge.h`,
//! generated from this crate by cbindgen. The conventions are rustls-ffi's:
//! an opaque `dreamos_bridge`, a `dreamos_status` returned by every fallible
//! call, outputs written through out-pointers only on success, `*_free(NULL)`
//! a no-op, and a panic boundary on every entry point.
//!
//! This crate only converts: C strings to Rust values, engine results to
//! statuses and JSON, and C function pointers to handlers. The engine is the
//! `dreamos-bridge` crate.

#![allow(non_camel_case_types)]

mod convert;
mod handler;
mod runtime;
mod status;

use std::ffi::{CStr, c_char, c_int, c_void};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::Duration;

use bridge_core::{Action, BridgeManager, CallOptions, Credentials, Message, Payload, handler_fn};
use futures_util::FutureExt;

use crate::convert::{json_arg, opt_str_arg, out_arg, str_arg, to_c_string, write_string};
pub use crate::handler::dreamos_handler_fn;
use crate::handler::{Activity, CHandler, RawHandlerFnPtr, UserData};
pub use crate::status::dreamos_status;
use crate::status::dreamos_status::*;
use crate::status::{FfiError, FfiResult, guard, guard_void};

/// A bridge: one engine with its routes, limits, security and metrics.
///
/// Opaque. Created by `dreamos_bridge_new` or `dreamos_bridge_from_file`,
/// released by `dreamos_bridge_free`. Every function taking a
/// `dreamos_bridge *` may be called from any thread, concurrently, except
/// `dreamos_bridge_free`, which must be the last call on it.
pub struct dreamos_bridge {
    bridge: BridgeManager,
    activity: Arc<Activity>,
}

/// Called once when an asynchronous call completes.
///
/// `status` is `DREAMOS_OK` and `reply_json_or_error` the reply as JSON, or
/// `status` is the failure and `reply_json_or_error` its message. The string
/// is owned by the library and valid only during the callback: copy it to
/// keep it. Runs on one of the library's threads (never the caller's), possibly
/// on several at once for concurrent calls; keep it short. It may call back
/// into the library.
pub type dreamos_completion_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, status: dreamos_status, reply_json_or_error: *const c_char)>;

/// The bridge behind a pointer argument.
///
/// # Safety
/// `b` is NULL or a pointer from `dreamos_bridge_new`/`_from_file` not yet freed.
unsafe fn bridge_arg<'a>(b: *const dreamos_bridge) -> FfiResult<&'a dreamos_bridge> {
    // SAFETY: the caller promises a live bridge or NULL.
    unsafe { b.as_ref() }.ok_or_else(|| FfiError::null("b"))
}

fn new_bridge(bridge: BridgeManager, out: *mut *mut dreamos_bridge) {
    let boxed = Box::new(dreamos_bridge { bridge, activity: Arc::new(Activity::default()) });
    // SAFETY: `out` was checked non-NULL by the caller of this helper.
    unsafe { *out = Box::into_raw(boxed) };
}

// ---------------------------------------------------------------------------
// Lifecycle.

/// Create a bridge from YAML configuration text (the keys of the YAML file,
/// DESIGN.md section 7), or from the embedded default (in-process handlers
/// only, no services, no security) when `config_yaml_or_null` is NULL.
///
/// On success `*out` receives a new bridge, which the caller owns and
/// releases with `dreamos_bridge_free`. The bridge does not admit messages
/// until `dreamos_bridge_initialize`. An invalid configuration is
/// `DREAMOS_CONFIG` and the last error message names the key path
/// (`bridge.max_connections: expected an integer, got "many"`).
///
/// # Safety
/// `config_yaml_or_null` is NULL or a NUL-terminated string; `out` is a
/// writable pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dreamos_bridge_new(
    config_yaml_or_null: *const c_char,
    out: *mut *mut dreamos_bridge,
) -> dreamos_status {
    guard(|| {
        let out = out_arg(out, "out")?;
        let yaml = unsafe { opt_str_arg(config_yaml_or_null, "config_yaml_or_null", DREAMOS_CONFIG) }?;
        let yaml = yaml.map(str::to_owned);
        let bridge = runtime::in_context(move || match yaml {
            None => Ok(BridgeManager::new_default()),
            Some(text) => BridgeManager::from_yaml(&text),
        })??;
        new_bridge(bridge, out);
        Ok(())
    })
}

/// Create a bridge from a YAML configuration file. As `dreamos_bridge_new`;
/// an unreadable file is `DREAMOS_CONFIG`. The path is taken as bytes (it
/// need not be UTF-8).
///
/// # Safety
/// `path` is a NUL-terminated string; `out` is a writable pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dreamos_bridge_from_file(
    path: *const c_char,
    out: *mut *mut dreamos_bridge,
) -> dreamos_status {
    guard(|| {
        let out = out_arg(out, "out")?;
        if path.is_null() {
            return Err(FfiError::null("path"));
        }
        // SAFETY: non-NULL and NUL-terminated by contract.
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(unsafe { CStr::from_ptr(path) }.to_bytes()));
        let path = path.to_owned();
        new_bridge(runtime::in_context(move || BridgeManager::from_file(path))??, out);
        Ok(())
    })
}

/// Start the bridge: it begins admitting messages. Calling it again on a
/// running bridge does nothing; on a shut-down bridge it is `DREAMOS_SHUTDOWN`.
///
/// # Safety
/// `b` is a live bridge.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dreamos_bridge_initialize(b: *const dreamos_bridge) -> dreamos_status {
    guard(|| {
        let bridge = unsafe { bridge_arg(b) }?.bridge.clone();
        runtime::block_on(async move { bridge.initialize().await })??;
        Ok(())
    })
}

/// Shut the bridge down gracefully: stop admitting, let in-flight calls
/// finish within `bridge.shutdown_grace`, then answer what is left with
/// `DREAMOS_SHUTDOWN`. Blocks until done. Calling it twice is harmless; the
/// bridge cannot be restarted (create a new one).
///
/// # Safety
/// `b` is a live bridge.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dreamos_bridge_shutdown(b: *const dreamos_bridge) -> dreamos_status {
    guard(|| {
        let bridge = unsafe { bridge_arg(b) }?.bridge.clone();
        runtime::block_on(async move { bridge.shutdown().await })?;
        Ok(())
    })
}

/// Shut the bridge down (as `dreamos_bridge_shutdown`, if still running) and
/// release it. Blocks until every handler call and completion callback of this
/// bridge has returned (those running on the calling thread excepted), so
/// that after it returns the library no longer uses any `user_data` given to
/// it. NULL is a no-op. `b` must not be used afterwards. In a child forked
/// after the library started its threads it returns at once and leaks the
/// handle (nothing of it can run there; waiting would hang forever).
///
/// # Safety
/// `b` is NULL or a live bridge that no other thread is using.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dreamos_bridge_free(b: *mut dreamos_bridge) {
    guard_void(|| {
        if b.is_null() {
            return;
        }
        // In a child forked after the runtime started, shutting down cannot
        // run and a call pending at fork() never finishes (its thread stayed
        // in the parent), so waiting for idle would hang forever; dropping
        // the bridge could block on a lock some parent thread held at fork().
        // The handle is leaked instead: the child's memory ends with it.
        if runtime::forked_child() {
            return;
        }
        // SAFETY: a pointer from Box::into_raw in new_bridge, freed once here.
        let owned = unsafe { Box::from_raw(b) };
        let bridge = owned.bridge.clone();
        // Whatever becomes of the shutdown, the wait for this bridge's
        // callbacks happens: the caller frees their user_data next.
        let shutdown = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = runtime::block_on(async move { bridge.shutdown().await });
        }));
        owned.activity.wait_idle();
        drop(owned);
        if let Err(panic) = shutdown {
            std::panic::resume_unwind(panic);
        }
    })
}

// ---------------------------------------------------------------------------
// Security.

/// Check credentials and issue a bridge token.
///
/// `credentials_json` is `{"api_key": "..."}` or `{"token": "<OIDC JWT>"}`.
/// On success `*token_out` receives the token string (a JWT) to pass to the
/// other calls; free it with `dreamos_string_free`. Wrong credentials are
/// `DREAMOS_UNAUTHENTICATED`; malformed JSON is `DREAMOS_INVALID_MESSAGE`.
///
/// # Safety
/// `b` is a live bridge; `credentials_json` a NUL-terminated string;
/// `token_out` a writable pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dreamos_bridge_authenticate(
    b: *const dreamos_bridge,
    credentials_json: *const c_char,
    token_out: *mut *mut c_char,
) -> dreamos_status {
    guard(|| {
        let bridge = unsafe { bridge_arg(b) }?;
        let out = out_arg(token_out, "token_out")?;
        let creds = Credentials::from_json(&unsafe { json_arg(credentials_json, "credentials_json") }?)?;
        let token = bridge.bridge.authenticate(&creds)?;
        unsafe { write_string(out, to_c_string(token.value)?) };
        Ok(())
    })
}

/// Whether the token's principal may route (request/reply) to `resource`.
/// On success `*allowed_out` is true or false; an invalid or expired token is
/// `DREAMOS_UNAUTHENTICATED`. With security off everything is allowed.
///
/// # Safety
/// `b` is a live bridge; `token` and `resource` NUL-terminated strings;
/// `allowed_out` a writable pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dreamos_bridge_authorize(
    b: *const dreamos_bridge,
    token: *const c_char,
    resource: *const c_char,
    allowed_out: *mut bool,
) -> dreamos_status {
    guard(|| {
        let bridge = unsafe { bridge_arg(b) }?;
        let out = out_arg(allowed_out, "allowed_out")?;
        let token = unsafe { str_arg(token, "token", DREAMOS_UNAUTHENTICATED) }?;
        let resource = unsafe { str_arg(resource, "resource", DREAMOS_INVALID_MESSAGE) }?;
        let allowed = bridge.bridge.authorize(token, Action::Route, resource)?;
        // SAFETY: checked non-NULL above.
        unsafe { *out = allowed };
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// The message flow.

/// The message and options of a route or publish call, from C arguments.
///
/// # Safety
/// The pointers are NULL or NUL-terminated strings.
unsafe fn call_args(
    token_or_null: *const c_char,
    destination: *const c_char,
    payload_json: *const c_char,
    timeout_ms: u32,
) -> FfiResult<(Message, CallOptions)> {
    let token = unsafe { opt_str_arg(token_or_null, "token_or_null", DREAMOS_UNAUTHENTICATED) }?;
    let destination = unsafe { str_arg(destination, "destination", DREAMOS_INVALID_MESSAGE) }?;
    let payload = unsafe { json_arg(payload_json, "payload_json") }?;
    let opts = CallOptions {
        token: token.map(str::to_owned),
        timeout: (timeout_ms > 0).then(|| Duration::from_millis(u64::from(timeout_ms))),
    };
    Ok((Message::new(destination, payload), opts))
}

/// A reply payload as JSON text (bytes as `{"$bytes": "<base64>"}`).
fn reply_text(payload: &Payload) -> String {
    match payload {
        Payload::Json(v) => v.to_string(),
        other => other.to_json().to_string(),
    }
}

/// Request/reply: deliver `payload_json` to `destination` and wait for the
/// reply.
///
/// `token_or_null` is the caller's token (required when security is on).
/// `timeout_ms` bounds the wait; 0 means the route's or the configured
/// default (`bridge.request_timeout`). On success `*reply_json_out` receives
/// the reply as JSON; free it with `dreamos_string_free`.
///
/// Blocks the calling thread. It may be called from a handler or completion
/// callback (a library thread): the wait then hands that thread's other work
/// to the remaining threads, so it does not deadlock, but it holds a thread
/// for the whole call — prefer `dreamos_bridge_route_async` there.
///
/// # Safety
/// `b` is a live bridge; `token_or_null` NULL or a NUL-terminated string;
/// `destination` and `payload_json` NUL-terminated strings; `reply_json_out`
/// a writable pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dreamos_bridge_route(
    b: *const dreamos_bridge,
    token_or_null: *const c_char,
    destination: *const c_char,
    payload_json: *const c_char,
    timeout_ms: u32,
    reply_json_out: *mut *mut c_char,
) -> dreamos_status {
    guard(|| {
        let bridge = unsafe { bridge_arg(b) }?.bridge.clone();
        let out = out_arg(reply_json_out, "reply_json_out")?;
        let (msg, opts) = unsafe { call_args(token_or_null, destination, payload_json, timeout_ms) }?;
        let reply = runtime::block_on(async move { bridge.route(msg, opts).await })??;
        unsafe { write_string(out, to_c_string(reply_text(&reply))?) };
        Ok(())
    })
}

/// Request/reply without blocking: returns at once, and `cb` is called
/// exactly once with the outcome, on a library thread (see
/// `dreamos_completion_fn`), with `user_data` passed through.
///
/// Arguments are checked first: if this returns anything but `DREAMOS_OK`
/// (NULL pointer, invalid UTF-8, malformed JSON) `cb` is never called.
/// Everything the engine decides (route not found, timeout, handler error, ...)
/// arrives through `cb`. Arguments are copied; they need not outlive the call.
/// `cb` may run before this function has returned (on another thread).
///
/// # Safety
/// As `dreamos_bridge_route`; `cb` and `user_data` must be usable from any thread
/// until `cb` has been called.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dreamos_bridge_route_async(
    b: *const dreamos_bridge,
    token_or_null: *const c_char,
    destination: *const c_char,
    payload_json: *const c_char,
    timeout_ms: u32,
    cb: dreamos_completion_fn,
    user_data: *mut c_void,
) -> dreamos_status {
    guard(|| {
        let b = unsafe { bridge_arg(b) }?;
        let cb = cb.ok_or_else(|| FfiError::null("cb"))?;
        let (msg, opts) = unsafe { call_args(token_or_null, destination, payload_json, timeout_ms) }?;
        let rt = runtime::runtime()?;
        let bridge = b.bridge.clone();
        let activity = b.activity.clone();
        let pending = activity.begin();
        let user_data = UserData(user_data);
        rt.spawn(async move {
            let _pending = pending;
            let outcome = std::panic::AssertUnwindSafe(bridge.route(msg, opts)).catch_unwind().await;
            let (status, text) = match outcome {
                Ok(Ok(reply)) => (DREAMOS_OK, reply_text(&reply)),
                Ok(Err(e)) => (dreamos_status::from_code(e.code()), e.message().to_string()),
                Err(panic) => (DREAMOS_PANIC, format!("the bridge panicked: {}", status::panic_text(&*panic))),
            };
            let text = std::ffi::CString::new(text.replace('\0', "\\0")).unwrap_or_default();
            // SAFETY: `cb` was registered for this signature; `text` lives across the call.
            activity.running(|| unsafe { cb(user_data.ptr(), status, text.as_ptr()) });
        });
        Ok(())
    })
}

/// Fire-and-forget: admit `payload_json` for `destination` and return at
/// once; the bridge delivers it in the background, with retries, and keeps
/// it in the dead-letter store if delivery finally fails. On success
/// `*message_id_out` receives the message id (a UUID string); free it with
/// `dreamos_string_free`.
///
/// # Safety
/// As `dreamos_bridge_route`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dreamos_bridge_publish(
    b: *const dreamos_bridge,
    token_or_null: *const c_char,
    destination: *const c_char,
    payload_json: *const c_char,
    message_id_out: *mut *mut c_char,
) -> dreamos_status {
    guard(|| {
        let bridge = unsafe { bridge_arg(b) }?.bridge.clone();
        let out = out_arg(message_id_out, "message_id_out")?;
        let (msg, opts) = unsafe { call_args(token_or_null, destination, payload_json, 0) }?;
        let id = runtime::block_on(async move { bridge.publish(msg, opts).await })??;
        unsafe { write_string(out, to_c_string(id.to_string())?) };
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Routes.

/// Route every destination matching `pattern` (`agents.summarize`,
/// `agents.*`, `tools.>`) to a C handler, replacing any route with the same
/// pattern. Limits come from a `routes` entry with the same pattern and no
/// service. A bad pattern is `DREAMOS_INVALID_MESSAGE`.
///
/// `handler` is called with `user_data` on library threads, concurrently
/// (see `dreamos_handler_fn`). Replacing or unregistering the route stops new
/// calls from reaching it, but calls admitted before (publishes still being
/// retried among them) may start the handler after that returns: only
/// `dreamos_bridge_free` returning ends its use of `user_data`.
///
/// # Safety
/// `b` is a live bridge; `pattern` a NUL-terminated string; `handler` a valid
/// function; `user_data` usable from any thread until `dreamos_bridge_free(b)`
/// has returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dreamos_bridge_register_route(
    b: *const dreamos_bridge,
    pattern: *const c_char,
    handler: dreamos_handler_fn,
    user_data: *mut c_void,
) -> dreamos_status {
    guard(|| {
        let b = unsafe { bridge_arg(b) }?;
        let pattern = unsafe { str_arg(pattern, "pattern", DREAMOS_INVALID_MESSAGE) }?;
        let f = RawHandlerFnPtr::new(handler).ok_or_else(|| FfiError::null("handler"))?;
        let handler =
            CHandler { f, user_data: UserData(user_data), pattern: pattern.into(), activity: b.activity.clone() };
        b.bridge.register_route(pattern, Arc::new(handler))?;
        Ok(())
    })
}

/// Remove the route with exactly this pattern. Calls already admitted on it
/// still complete, running its handler, possibly after this returns (its
/// `user_data` must live until `dreamos_bridge_free`). No such route is
/// `DREAMOS_ROUTE_NOT_FOUND`.
///
/// # Safety
/// `b` is a live bridge; `pattern` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dreamos_bridge_unregister_route(
    b: *const dreamos_bridge,
    pattern: *const c_char,
) -> dreamos_status {
    guard(|| {
        let b = unsafe { bridge_arg(b) }?;
        let pattern = unsafe { str_arg(pattern, "pattern", DREAMOS_INVALID_MESSAGE) }?;
        if b.bridge.unregister_route(pattern) {
            Ok(())
        } else {
            Err(FfiError::new(DREAMOS_ROUTE_NOT_FOUND, format!("no route is registered with the pattern {pattern:?}")))
        }
    })
}

/// Route `pattern` to a handler inside the library that replies with the
/// payload it receives. For benchmarks and tests: it measures the bridge
/// without a C handler's thread hop.
///
/// # Safety
/// `b` is a live bridge; `pattern` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dreamos_bridge_register_echo(
    b: *const dreamos_bridge,
    pattern: *const c_char,
) -> dreamos_status {
    guard(|| {
        let b = unsafe { bridge_arg(b) }?;
        let pattern = unsafe { str_arg(pattern, "pattern", DREAMOS_INVALID_MESSAGE) }?;
        b.bridge.register_route(pattern, handler_fn(|msg: Message| async move { Ok(msg.payload) }))?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Observability.

/// A snapshot of every metric as JSON (counters, latencies, queue depths per
/// route, service and principal). Free `*out` with `dreamos_string_free`.
///
/// # Safety
/// `b` is a live bridge; `out` a writable pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dreamos_bridge_metrics_json(
    b: *const dreamos_bridge,
    out: *mut *mut c_char,
) -> dreamos_status {
    guard(|| {
        let b = unsafe { bridge_arg(b) }?;
        let out = out_arg(out, "out")?;
        let json = serde_json::to_string(&b.bridge.metrics())
            .map_err(|e| FfiError::new(DREAMOS_INTERNAL, format!("cannot serialize the metrics: {e}")))?;
        unsafe { write_string(out, to_c_string(json)?) };
        Ok(())
    })
}

/// The metrics in the Prometheus text format. Free `*out` with
/// `dreamos_string_free`.
///
/// # Safety
/// `b` is a live bridge; `out` a writable pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dreamos_bridge_metrics_text(
    b: *const dreamos_bridge,
    out: *mut *mut c_char,
) -> dreamos_status {
    guard(|| {
        let b = unsafe { bridge_arg(b) }?;
        let out = out_arg(out, "out")?;
        unsafe { write_string(out, to_c_string(b.bridge.metrics_text())?) };
        Ok(())
    })
}

/// Health of the bridge and each service as JSON:
/// `{"status": "up"|"degraded"|"down", "services": {...}}`. Free `*out` with
/// `dreamos_string_free`.
///
/// # Safety
/// `b` is a live bridge; `out` a writable pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dreamos_bridge_health_json(b: *const dreamos_bridge, out: *mut *mut c_char) -> dreamos_status {
    guard(|| {
        let bridge = unsafe { bridge_arg(b) }?.bridge.clone();
        let out = out_arg(out, "out")?;
        let report = runtime::block_on(async move { bridge.health().await })?;
        let json = serde_json::to_string(&report)
            .map_err(|e| FfiError::new(DREAMOS_INTERNAL, format!("cannot serialize the health report: {e}")))?;
        unsafe { write_string(out, to_c_string(json)?) };
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Strings, errors, version.

/// Release a string the library returned through an out-pointer. NULL is a
/// no-op. Do not pass strings from anywhere else (and not the strings given
/// to callbacks, `dreamos_last_error_message` or `dreamos_status_name`,
/// which the library owns).
///
/// # Safety
/// `s` is NULL or a string from this library not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dreamos_string_free(s: *mut c_char) {
    guard_void(|| {
        if !s.is_null() {
            // SAFETY: from CString::into_raw in write_string, freed once.
            drop(unsafe { std::ffi::CString::from_raw(s) });
        }
    })
}

/// The calling thread's last error message: what went wrong in this
/// thread's most recent failed call, and what to do. An empty string after
/// a call that succeeded. Never NULL. The string is owned by the library and
/// stays valid until the thread's next call to a function that returns a
/// `dreamos_status`; copy it to keep it.
#[unsafe(no_mangle)]
pub extern "C" fn dreamos_last_error_message() -> *const c_char {
    std::panic::catch_unwind(status::last_error_ptr).unwrap_or(c"".as_ptr())
}

/// The name of a status without its prefix (`"RATE_LIMITED"`, the code
/// string Python and Node show), or `"UNKNOWN"` for a value that is not a
/// `dreamos_status`. A static string: never freed.
#[unsafe(no_mangle)]
pub extern "C" fn dreamos_status_name(status: c_int) -> *const c_char {
    std::panic::catch_unwind(|| {
        usize::try_from(status).ok().and_then(|i| status::ALL.get(i)).map_or(c"UNKNOWN", |s| s.name())
    })
    .unwrap_or(c"UNKNOWN")
    .as_ptr()
}

/// The library's version (`"0.1.0"`). A static string: never freed.
#[unsafe(no_mangle)]
pub extern "C" fn dreamos_version() -> *const c_char {
    const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    VERSION.as_ptr().cast()
}
