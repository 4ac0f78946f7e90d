//! Node.js binding of the dreamos-bridge engine (`npm install dreamos-bridge`).
//!
//! A thin layer: it converts JS values, calls [`dreamos_bridge::BridgeManager`]
//! and maps errors to JS `Error`s with a `.code`. Everything that waits
//! returns a Promise (see [`settle`] for how those are settled cheaply);
//! JS handlers are weak thread-safe functions (see [`handler`]).
#![deny(clippy::unwrap_used, clippy::expect_used)]

mod convert;
mod direct;
mod handler;
mod json_text;
mod remote;
mod settle;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use dreamos_bridge::{Action, AnswerNow, BridgeConfig, BridgeError, CallOptions, Credentials, Message, Payload};
use napi::JsValue as _;
use napi::bindgen_prelude::{Function, Unknown};
use napi::{Env, sys};
use napi_derive::napi;
use serde_json::{Value, json};

use crate::convert::RawValue;
use crate::settle::{Reply, Settler};

/// A JS exception carrying `e` as an `Error` with `.code`.
fn throw(env: sys::napi_env, e: &BridgeError) -> napi::Error {
    match convert::from_error(env, e) {
        // SAFETY: the error object was just created on this env.
        Ok(v) => napi::Error::from(unsafe { Unknown::from_raw_unchecked(env, v) }),
        Err(_) => napi::Error::from_reason(e.to_string()),
    }
}

fn unknown<'a>(env: sys::napi_env, v: RawValue) -> Unknown<'a> {
    // SAFETY: `v` was created on `env` in the current call.
    unsafe { Unknown::from_raw_unchecked(env, v) }
}

fn raw(v: &Option<Unknown<'_>>) -> Option<RawValue> {
    v.as_ref().map(|u| u.raw())
}

/// A string argument (a pattern, an id, ...): `INVALID_MESSAGE` naming it otherwise.
fn text_arg(env: sys::napi_env, v: RawValue, what: &str) -> Result<String, BridgeError> {
    convert::get_string(env, v).map_err(|c| c.into_bridge(what))
}

/// A handler argument: checked to be a function before N-API is asked to
/// make a thread-safe function of it (whose own failure says nothing useful).
fn js_handler(env: sys::napi_env, v: &Unknown<'_>, max_depth: usize) -> Result<handler::JsHandler, BridgeError> {
    if convert::type_of(env, v.raw()) != sys::ValueType::napi_function {
        return Err(BridgeError::invalid("the handler must be a function (message) => reply (plain or async)"));
    }
    // SAFETY: checked to be a function just above.
    let func = unsafe { v.cast::<Function<'_, Unknown<'static>, Unknown<'static>>>() }
        .map_err(|e| BridgeError::internal(format!("could not read the handler function: {e}")))?;
    handler::JsHandler::new(func, max_depth)
        .map_err(|e| BridgeError::internal(format!("could not hold the handler function: {e}")))
}

/// At load, per env (main thread or worker): give `route()` its JSON-text
/// fast path (see [`json_text`]).
#[napi(module_exports)]
pub fn init(exports: napi::bindgen_prelude::Object<'_>, env: Env) -> napi::Result<()> {
    json_text::install_route(env.raw(), exports.raw());
    Ok(())
}

/// The bridge: one engine, shared by every clone and every call.
#[napi(js_name = "BridgeManager")]
pub struct JsBridgeManager {
    core: Core,
}

/// What a call needs: also held by the handle `route()`'s JS side passes
/// to [`route_text_cb`], so that the fast path needs no `this` unwrap.
#[derive(Clone)]
pub struct Core {
    bridge: dreamos_bridge::BridgeManager,
    settler: Settler,
    deadlines: direct::Deadlines,
    max_depth: usize,
}

impl std::ops::Deref for JsBridgeManager {
    type Target = Core;

    fn deref(&self) -> &Core {
        &self.core
    }
}

unsafe extern "C" fn drop_core(_env: sys::napi_env, data: *mut std::ffi::c_void, _hint: *mut std::ffi::c_void) {
    // SAFETY: `data` is the box leaked in `__handle`; the external is collected once.
    drop(unsafe { Box::from_raw(data.cast::<Core>()) });
}

/// `routeText(handle, destination, text)`: the native half of `route()`'s
/// fast path (see [`Core::route_text`]). `handle` comes from `__handle`,
/// through a WeakMap private to the JS side, so it is always a [`Core`].
pub(crate) unsafe extern "C" fn route_text_cb(env: sys::napi_env, info: sys::napi_callback_info) -> sys::napi_value {
    let run = || -> Option<RawValue> {
        let mut argc = 3usize;
        let mut argv = [std::ptr::null_mut(); 3];
        let mut data = std::ptr::null_mut();
        // SAFETY: reading this call's arguments into a 3-slot buffer, then
        // the external's pointer (a `Core` boxed by `__handle`, alive while
        // the external is, which this call's argument keeps alive).
        let core = unsafe {
            if sys::napi_get_cb_info(
                env,
                info,
                &mut argc,
                argv.as_mut_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            ) != sys::Status::napi_ok
                || argc < 3
                || sys::napi_get_value_external(env, argv[0], &mut data) != sys::Status::napi_ok
                || data.is_null()
            {
                return None;
            }
            &*data.cast::<Core>()
        };
        match core.route_text(env, argv[1], argv[2]) {
            Ok(v) => Some(v),
            Err(e) => {
                // SAFETY: throwing on this call's env; the callback returns at once.
                unsafe { napi::JsError::from(e).throw_into(env) };
                None
            }
        }
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(v) => v.unwrap_or(std::ptr::null_mut()),
        Err(_) => {
            // Not `undefined`: that means "declined, take route()", which
            // could deliver the message a second time.
            let err = BridgeError::internal("route() panicked in the native fast path; the bridge is still usable");
            // SAFETY: throwing on this call's env; the callback returns at once.
            unsafe { napi::JsError::from(throw(env, &err)).throw_into(env) };
            std::ptr::null_mut()
        }
    }
}

#[napi]
impl JsBridgeManager {
    /// A bridge from a config object with the YAML key names; without one, the
    /// embedded default (in-process handlers only, no services, no security).
    #[napi(constructor, catch_unwind)]
    pub fn new(
        env: Env,
        #[napi(ts_arg_type = "BridgeConfig | null")] config: Option<Unknown<'_>>,
    ) -> napi::Result<Self> {
        let e = env.raw();
        let cfg = match raw(&config).filter(|v| !convert::is_nullish(e, *v)) {
            None => Ok(BridgeConfig::default()),
            Some(v) => convert::to_json(e, v, 64)
                .map_err(|c| BridgeError::config("", c.into_bridge("the config object").message()))
                .and_then(BridgeConfig::from_value),
        };
        let bridge = cfg.and_then(dreamos_bridge::BridgeManager::new).map_err(|err| throw(e, &err))?;
        Self::wrap(&env, bridge)
    }

    /// A bridge from YAML text.
    #[napi(factory, catch_unwind)]
    pub fn from_yaml(env: Env, #[napi(ts_arg_type = "string")] text: Unknown<'_>) -> napi::Result<Self> {
        let bridge = convert::get_string(env.raw(), text.raw())
            .map_err(|_| BridgeError::config("", "fromYaml() takes the YAML text as a string"))
            .and_then(|text| dreamos_bridge::BridgeManager::from_yaml(&text))
            .map_err(|err| throw(env.raw(), &err))?;
        Self::wrap(&env, bridge)
    }

    /// A bridge from a YAML file.
    #[napi(factory, catch_unwind)]
    pub fn from_file(env: Env, #[napi(ts_arg_type = "string")] path: Unknown<'_>) -> napi::Result<Self> {
        let bridge = convert::get_string(env.raw(), path.raw())
            .map_err(|_| BridgeError::config("", "fromFile() takes the path of a YAML file as a string"))
            .and_then(|path| dreamos_bridge::BridgeManager::from_file(&path))
            .map_err(|err| throw(env.raw(), &err))?;
        Self::wrap(&env, bridge)
    }

    fn wrap(env: &Env, bridge: dreamos_bridge::BridgeManager) -> napi::Result<Self> {
        let max_depth = bridge.config().limits.max_json_depth;
        let core = Core { bridge, settler: Settler::new(env)?, deadlines: direct::Deadlines::default(), max_depth };
        Ok(JsBridgeManager { core })
    }

    /// Connect to a running `dreamos-bridge serve` at `url` instead of
    /// embedding the engine: a `RemoteBridge` with the same calls and errors.
    /// `credentials` (`{api_key}` or `{token}` for an OIDC JWT) are exchanged
    /// for a bridge token, renewed before it expires; omit them for a server
    /// without security. `options` (`ConnectOptions`): `timeout`, seconds to
    /// wait for the server (default 10); `caFile`, a PEM file of CA
    /// certificates to trust beyond the built-in roots (an `https://` server
    /// with a private or self-signed certificate); `maxConnections`, HTTP
    /// requests in flight to the server at once (default 32). Agents
    /// connected to one server share its rate limits, queues, pools and metrics.
    #[napi(
        catch_unwind,
        ts_args_type = "url: string, credentials?: Credentials | null, options?: ConnectOptions | null",
        ts_return_type = "Promise<RemoteBridge>"
    )]
    pub fn connect<'e>(
        env: &'e Env,
        url: Unknown<'_>,
        credentials: Option<Unknown<'_>>,
        options: Option<Unknown<'_>>,
    ) -> napi::Result<napi::bindgen_prelude::PromiseRaw<'e, remote::JsRemoteBridge>> {
        remote::connect(env, url, credentials, options)
    }

    /// Start the bridge; calls are refused with `SHUTDOWN` until this resolves.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn initialize<'e>(&self, env: &'e Env) -> napi::Result<Unknown<'e>> {
        let bridge = self.bridge.clone();
        let p = self.settler.promise(env.raw(), async move { bridge.initialize().await.map(|_| Reply::Undefined) })?;
        Ok(unknown(env.raw(), p))
    }

    /// Stop admitting, let in-flight work finish (for `grace` seconds, default
    /// `bridge.shutdown_grace`), then fail what is left with `SHUTDOWN`.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn shutdown<'e>(
        &self,
        env: &'e Env,
        #[napi(ts_arg_type = "number | undefined | null")] grace: Option<Unknown<'_>>,
    ) -> napi::Result<Unknown<'e>> {
        let bridge = self.bridge.clone();
        let e = env.raw();
        let grace = raw(&grace)
            .filter(|g| !convert::is_nullish(e, *g))
            .map(|g| {
                let secs = convert::to_json(e, g, 1).ok().and_then(|v| v.as_f64());
                secs.ok_or_else(|| BridgeError::invalid("grace must be seconds (a number)")).and_then(seconds)
            })
            .transpose();
        let grace = match grace {
            Ok(g) => g,
            Err(err) => return Ok(unknown(env.raw(), self.settler.ready(env.raw(), Err(err))?)),
        };
        let p = self.settler.promise(env.raw(), async move {
            match grace {
                Some(g) => bridge.shutdown_with_grace(g).await,
                None => bridge.shutdown().await,
            }
            Ok(Reply::Undefined)
        })?;
        Ok(unknown(env.raw(), p))
    }

    /// Is the bridge admitting messages?
    #[napi(getter)]
    pub fn is_running(&self) -> bool {
        self.bridge.is_running()
    }

    /// Route `pattern` to a JS function (plain or async). It receives the
    /// message and returns the reply payload (or a Promise of it); a throw or
    /// a rejection reaches the caller as `HANDLER_ERROR`.
    #[napi(catch_unwind)]
    pub fn register_route(
        &self,
        env: Env,
        #[napi(ts_arg_type = "string")] pattern: Unknown<'_>,
        #[napi(ts_arg_type = "(message: Message) => Payload | Promise<Payload> | void | Promise<void>")]
        handler: Unknown<'_>,
    ) -> napi::Result<()> {
        let e = env.raw();
        text_arg(e, pattern.raw(), "pattern")
            .and_then(|pattern| {
                let h = js_handler(e, &handler, self.max_depth)?;
                self.bridge.register_route(&pattern, Arc::new(h))
            })
            .map_err(|err| throw(e, &err))
    }

    /// Remove the route with exactly this pattern; `true` if there was one.
    #[napi(catch_unwind)]
    pub fn unregister_route(
        &self,
        env: Env,
        #[napi(ts_arg_type = "string")] pattern: Unknown<'_>,
    ) -> napi::Result<bool> {
        let pattern = text_arg(env.raw(), pattern.raw(), "pattern").map_err(|err| throw(env.raw(), &err))?;
        Ok(self.bridge.unregister_route(&pattern))
    }

    /// The registered patterns.
    #[napi]
    pub fn routes(&self) -> Vec<String> {
        self.bridge.routes()
    }

    /// Benchmark and test aid: route `pattern` to a handler written in Rust
    /// that replies with the request payload.
    #[napi(catch_unwind)]
    pub fn register_rust_echo(
        &self,
        env: Env,
        #[napi(ts_arg_type = "string")] pattern: Unknown<'_>,
    ) -> napi::Result<()> {
        text_arg(env.raw(), pattern.raw(), "pattern")
            .and_then(|pattern| self.bridge.register_route(&pattern, handler::rust_echo()))
            .map_err(|e| throw(env.raw(), &e))
    }

    /// Test only: a Promise whose engine future panics after suspending once
    /// (so on a tokio thread). It must reject with `INTERNAL`, never stay
    /// pending with Node kept alive.
    #[napi(js_name = "__testPanic", skip_typescript, catch_unwind)]
    pub fn test_panic<'e>(&self, env: &'e Env) -> napi::Result<Unknown<'e>> {
        let p = self.settler.promise(env.raw(), async move {
            tokio::task::yield_now().await;
            panic!("dreamos_bridge test hook: a deliberate panic in a future on tokio")
        })?;
        Ok(unknown(env.raw(), p))
    }

    /// Test only: Promises of handlers this thread still waits for, and
    /// weak references to handler functions not yet deleted (both must go
    /// back down: a timed-out call or an unregistered handler leaves nothing).
    #[napi(js_name = "__testLeftovers", skip_typescript)]
    pub fn test_leftovers(&self) -> Vec<u32> {
        let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        vec![n(watch::waiting()), n(handler::live_references())]
    }

    /// The handle `route()`'s JS side passes to the native half of its
    /// fast path (see `json_text`): an external holding this bridge's core.
    #[napi(js_name = "__handle", skip_typescript, catch_unwind)]
    pub fn handle<'e>(&self, env: &'e Env) -> napi::Result<Unknown<'e>> {
        let e = env.raw();
        let data = Box::into_raw(Box::new(self.core.clone()));
        let mut out = std::ptr::null_mut();
        // SAFETY: the external owns the box; `drop_core` frees it when collected.
        let status =
            unsafe { sys::napi_create_external(e, data.cast(), Some(drop_core), std::ptr::null_mut(), &mut out) };
        if status != sys::Status::napi_ok {
            // SAFETY: not handed over; reclaim it.
            drop(unsafe { Box::from_raw(data) });
            return Err(throw(e, &BridgeError::internal("could not create the route handle")));
        }
        Ok(unknown(e, out))
    }

    /// Request/reply: resolves with the reply payload, or rejects with an
    /// `Error` whose `.code` says why. `timeout` is in seconds.
    #[napi(
        catch_unwind,
        ts_args_type = "destinationOrMessage: string | MessageInit, payload?: Payload | RouteOptions, options?: RouteOptions",
        ts_return_type = "Promise<Payload>"
    )]
    pub fn route<'e>(
        &self,
        env: &'e Env,
        destination_or_message: Unknown<'_>,
        payload: Option<Unknown<'_>>,
        options: Option<Unknown<'_>>,
    ) -> napi::Result<Unknown<'e>> {
        let e = env.raw();
        let (first, third) = (destination_or_message.raw(), raw(&options));
        // route(destination, payload) comes here from the JS fast path only
        // when its text form declined the payload: do not try it again (that
        // would read every getter once more), walk it.
        let text_tried = convert::type_of(e, first) == sys::ValueType::napi_string
            && third.is_none_or(|o| convert::is_nullish(e, o));
        let msg = call_args(e, self.max_depth, first, raw(&payload), third, !text_tried);
        self.dispatch(e, msg, false)
    }

    /// Fire-and-forget: resolves with the message id once the message is
    /// admitted; delivery (with retries) goes on in the background, and a
    /// final failure lands in `deadLetters()`.
    #[napi(
        catch_unwind,
        ts_args_type = "destinationOrMessage: string | MessageInit, payload?: Payload | RouteOptions, options?: RouteOptions",
        ts_return_type = "Promise<string>"
    )]
    pub fn publish<'e>(
        &self,
        env: &'e Env,
        destination_or_message: Unknown<'_>,
        payload: Option<Unknown<'_>>,
        options: Option<Unknown<'_>>,
    ) -> napi::Result<Unknown<'e>> {
        let e = env.raw();
        let p = match self.message(e, destination_or_message.raw(), raw(&payload), raw(&options)) {
            Ok((msg, opts)) => {
                let bridge = self.bridge.clone();
                self.settler
                    .promise(e, async move { bridge.publish(msg, opts).await.map(|id| Reply::Str(id.to_string())) })?
            }
            Err(err) => self.settler.ready(e, Err(err))?,
        };
        Ok(unknown(e, p))
    }

    /// Exchange credentials (`{api_key}` or `{token}` for an OIDC JWT) for a
    /// bridge token.
    #[napi(catch_unwind, ts_args_type = "credentials: Credentials", ts_return_type = "Promise<Token>")]
    pub fn authenticate<'e>(&self, env: &'e Env, credentials: Unknown<'_>) -> napi::Result<Unknown<'e>> {
        let e = env.raw();
        let outcome = convert::to_json(e, credentials.raw(), 8)
            .map_err(|c| BridgeError::unauthenticated(c.into_bridge("credentials").message()))
            .and_then(|v| Credentials::from_json(&v))
            .and_then(|c| self.bridge.authenticate(&c))
            .map(|t| {
                Reply::Json(json!({
                    "value": t.value, "principal": t.principal, "roles": t.roles, "expiresAt": t.expires_at,
                }))
            });
        Ok(unknown(e, self.settler.ready(e, outcome)?))
    }

    /// May the token's principal take `action` (default `route`) on
    /// `resource`? Resolves `false` on a refusal; rejects `UNAUTHENTICATED`
    /// for a bad token.
    #[napi(
        catch_unwind,
        ts_args_type = "token: Token | string, resource: string, action?: 'route' | 'publish' | 'handle' | 'admin'",
        ts_return_type = "Promise<boolean>"
    )]
    pub fn authorize<'e>(
        &self,
        env: &'e Env,
        token: Unknown<'_>,
        resource: Unknown<'_>,
        action: Option<Unknown<'_>>,
    ) -> napi::Result<Unknown<'e>> {
        let e = env.raw();
        let outcome = (|| {
            let resource = text_arg(e, resource.raw(), "resource")?;
            let action =
                raw(&action).filter(|a| !convert::is_nullish(e, *a)).map(|a| text_arg(e, a, "action")).transpose()?;
            let action = parse_action(action.as_deref())?;
            let token = token_string(e, token.raw())?.unwrap_or_default();
            self.bridge.authorize(&token, action, &resource).map(Reply::Bool)
        })();
        Ok(unknown(e, self.settler.ready(e, outcome)?))
    }

    /// Revoke a token until it expires.
    #[napi(catch_unwind, ts_args_type = "token: Token | string", ts_return_type = "Promise<void>")]
    pub fn revoke<'e>(&self, env: &'e Env, token: Unknown<'_>) -> napi::Result<Unknown<'e>> {
        let e = env.raw();
        let outcome = token_string(e, token.raw()).and_then(|t| {
            let t = t.ok_or_else(|| BridgeError::unauthenticated("revoke() needs a token"))?;
            self.bridge.revoke(&t).map(|_| Reply::Undefined)
        });
        Ok(unknown(e, self.settler.ready(e, outcome)?))
    }

    /// A snapshot of every metric.
    #[napi(catch_unwind, ts_return_type = "Metrics")]
    pub fn metrics<'e>(&self, env: &'e Env) -> napi::Result<Unknown<'e>> {
        let v = serde_json::to_value(self.bridge.metrics()).unwrap_or(Value::Null);
        let js = convert::from_json(env.raw(), &v).map_err(|e| throw(env.raw(), &e))?;
        Ok(unknown(env.raw(), js))
    }

    /// Metrics in the Prometheus text format.
    #[napi]
    pub fn metrics_text(&self) -> String {
        self.bridge.metrics_text()
    }

    /// Health of the bridge and of each service.
    #[napi(catch_unwind, ts_return_type = "Promise<Health>")]
    pub fn health<'e>(&self, env: &'e Env) -> napi::Result<Unknown<'e>> {
        let bridge = self.bridge.clone();
        let p = self.settler.promise(env.raw(), async move {
            let report = bridge.health().await;
            Ok(Reply::Json(serde_json::to_value(report).unwrap_or(Value::Null)))
        })?;
        Ok(unknown(env.raw(), p))
    }

    /// Failed publishes, oldest first.
    #[napi(catch_unwind, ts_return_type = "DeadLetter[]")]
    pub fn dead_letters<'e>(&self, env: &'e Env) -> napi::Result<Unknown<'e>> {
        let letters: Vec<Value> = self
            .bridge
            .dead_letters()
            .into_iter()
            .map(|d| {
                json!({
                    "id": d.id.to_string(),
                    "message": d.message.to_json(),
                    "error": serde_json::to_value(&d.error).unwrap_or(Value::Null),
                    "attempts": d.attempts,
                    "failedAt": d.failed_at,
                })
            })
            .collect();
        let js = convert::from_json(env.raw(), &Value::Array(letters)).map_err(|e| throw(env.raw(), &e))?;
        Ok(unknown(env.raw(), js))
    }

    /// Deliver a dead letter again; it leaves the store on success.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn replay<'e>(
        &self,
        env: &'e Env,
        #[napi(ts_arg_type = "string")] id: Unknown<'_>,
    ) -> napi::Result<Unknown<'e>> {
        let e = env.raw();
        let id = text_arg(e, id.raw(), "id").and_then(|id| {
            uuid::Uuid::parse_str(&id)
                .map_err(|_| BridgeError::invalid(format!("{id:?} is not a message id: take one from deadLetters()")))
        });
        let p = match id {
            Ok(id) => {
                let bridge = self.bridge.clone();
                self.settler.promise(e, async move { bridge.replay(id).await.map(|_| Reply::Undefined) })?
            }
            Err(err) => self.settler.ready(e, Err(err))?,
        };
        Ok(unknown(e, p))
    }
}

impl Core {
    /// `route(destination, payload)` for a plain JSON payload written as
    /// text by the JS side of `route()` (see `json_text`): an immediate JSON
    /// reply comes back as JSON text, anything else as the Promise `route()`
    /// would return; `undefined` when the text is not what the walk would
    /// have read (too deep), for `route()` to take over.
    fn route_text(&self, e: sys::napi_env, destination: RawValue, text: RawValue) -> napi::Result<RawValue> {
        let parsed = convert::get_string(e, text).ok().and_then(|t| json_text::parse(&t, self.max_depth));
        let Some(payload) = parsed else {
            return convert::undefined(e).map_err(|err| throw(e, &err));
        };
        let msg = convert::get_string(e, destination)
            .map_err(|c| c.into_bridge("destination"))
            .map(|dest| (Message::new(dest, Payload::Json(payload)), CallOptions::default()));
        self.dispatch(e, msg, true).map(|v| v.raw())
    }

    /// The rest of `route()` once the arguments are read: the Promise of
    /// the reply, or with `text_reply`, an immediate JSON reply as JSON text.
    fn dispatch<'e>(
        &self,
        e: sys::napi_env,
        msg: Result<(Message, CallOptions), BridgeError>,
        text_reply: bool,
    ) -> napi::Result<Unknown<'e>> {
        let begun = msg.and_then(|(msg, opts)| self.bridge.begin(Action::Route, msg, &opts));
        let mut call = match begun {
            Ok(call) => call,
            Err(err) => return Ok(unknown(e, self.settler.ready(e, Err(err))?)),
        };
        // When admission needs no waiting, a JS handler of this very thread
        // and a handler that never waits answer here, without a thread hop.
        match call.try_admit() {
            Ok(None) => {
                if let Some((func, max_depth)) = direct::handler_here(&call, e) {
                    return Ok(unknown(e, direct::run(&self.settler, &self.deadlines, e, call, func, max_depth)?));
                }
                match call.deliver_now() {
                    AnswerNow::Answered(Ok(Payload::Json(v))) if text_reply => {
                        let text = serde_json::to_string(&v).ok().and_then(|t| convert::create_string(e, &t).ok());
                        return match text {
                            Some(t) => Ok(unknown(e, t)),
                            // Too long for one JS string: build the value instead.
                            None => Ok(unknown(e, self.settler.ready(e, Ok(Reply::Payload(Payload::Json(v))))?)),
                        };
                    }
                    AnswerNow::Answered(reply) => {
                        return Ok(unknown(e, self.settler.ready(e, reply.map(Reply::Payload))?));
                    }
                    AnswerNow::Later(back) => call = back,
                }
            }
            Ok(Some(_)) => {}
            Err(err) => return Ok(unknown(e, self.settler.ready(e, Err(err))?)),
        }
        let p = self.settler.promise(e, async move {
            call.admit().await?;
            call.deliver().await.map(Reply::Payload)
        })?;
        Ok(unknown(e, p))
    }

    fn message(
        &self,
        env: sys::napi_env,
        first: RawValue,
        second: Option<RawValue>,
        third: Option<RawValue>,
    ) -> Result<(Message, CallOptions), BridgeError> {
        call_args(env, self.max_depth, first, second, third, true)
    }
}

/// The message and call options from `route`/`publish` arguments:
/// `(destination, payload?, options?)` or `(message, options?)`.
fn call_args(
    env: sys::napi_env,
    max_depth: usize,
    first: RawValue,
    second: Option<RawValue>,
    third: Option<RawValue>,
    try_text: bool,
) -> Result<(Message, CallOptions), BridgeError> {
    use sys::ValueType as T;
    let mut msg = match convert::type_of(env, first) {
        T::napi_string => {
            let dest = convert::get_string(env, first).map_err(|c| c.into_bridge("destination"))?;
            let payload = match second {
                Some(p) => convert::to_payload(env, p, max_depth, try_text).map_err(|c| c.into_bridge("payload"))?,
                None => Payload::default(),
            };
            Message::new(dest, payload)
        }
        T::napi_object => message_object(env, max_depth, first)?,
        _ => {
            return Err(BridgeError::invalid(
                "the first argument must be a destination string or a message object {destination, payload}",
            ));
        }
    };
    let options = if convert::type_of(env, first) == T::napi_object && third.is_none() { second } else { third };
    let mut opts = CallOptions::default();
    if let Some(o) = options.filter(|o| !convert::is_nullish(env, *o)) {
        if convert::type_of(env, o) != T::napi_object {
            return Err(BridgeError::invalid("options must be an object {token, timeout, headers}"));
        }
        let field =
            |name: &str| convert::get_named(env, o, name).map_err(|c| c.into_bridge(&format!("options.{name}")));
        opts.token = token_string(env, field("token")?)?;
        let timeout = field("timeout")?;
        if !convert::is_nullish(env, timeout) {
            let t = convert::to_json(env, timeout, 1).map_err(|c| c.into_bridge("options.timeout"))?;
            let secs = t.as_f64().ok_or_else(|| BridgeError::invalid("options.timeout must be seconds (a number)"))?;
            opts.timeout = Some(seconds(secs)?);
        }
        read_headers(env, field("headers")?, &mut msg)?;
        let priority = field("priority")?;
        if !convert::is_nullish(env, priority) {
            msg.priority = read_priority(env, priority)?;
        }
    }
    Ok((msg, opts))
}

fn message_object(env: sys::napi_env, max_depth: usize, obj: RawValue) -> Result<Message, BridgeError> {
    let field = |name: &str| convert::get_named(env, obj, name).map_err(|c| c.into_bridge(name));
    let dest = field("destination")?;
    if convert::is_nullish(env, dest) {
        return Err(BridgeError::invalid("the message object needs a `destination` string"));
    }
    let dest = convert::get_string(env, dest).map_err(|c| c.into_bridge("message.destination"))?;
    let payload = field("payload")?;
    let payload = convert::to_payload(env, payload, max_depth, true).map_err(|c| c.into_bridge("payload"))?;
    let mut msg = Message::new(dest, payload);
    read_headers(env, field("headers")?, &mut msg)?;
    let priority = field("priority")?;
    if !convert::is_nullish(env, priority) {
        msg.priority = read_priority(env, priority)?;
    }
    Ok(msg)
}

fn read_headers(env: sys::napi_env, headers: RawValue, msg: &mut Message) -> Result<(), BridgeError> {
    if convert::is_nullish(env, headers) {
        return Ok(());
    }
    match convert::to_json(env, headers, 2).map_err(|c| c.into_bridge("headers"))? {
        Value::Object(map) => {
            for (k, v) in map {
                let Value::String(v) = v else {
                    return Err(BridgeError::invalid(format!("header {k:?} must be a string")));
                };
                msg.headers.push((k, v));
            }
            Ok(())
        }
        _ => Err(BridgeError::invalid("headers must be an object of name → string")),
    }
}

fn read_priority(env: sys::napi_env, v: RawValue) -> Result<i32, BridgeError> {
    convert::to_json(env, v, 1)
        .ok()
        .and_then(|p| p.as_i64())
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| BridgeError::invalid("priority must be an integer"))
}

/// A token argument: the token object from `authenticate`, or its string.
fn token_string(env: sys::napi_env, v: RawValue) -> Result<Option<String>, BridgeError> {
    use sys::ValueType as T;
    match convert::type_of(env, v) {
        T::napi_undefined | T::napi_null => Ok(None),
        T::napi_string => convert::get_string(env, v).map(Some).map_err(|c| c.into_bridge("token")),
        T::napi_object => {
            let value = convert::get_named(env, v, "value").map_err(|c| c.into_bridge("token"))?;
            convert::get_string(env, value).map(Some).map_err(|_| {
                BridgeError::unauthenticated(
                    "the token object has no `value` string: pass what authenticate() returned",
                )
            })
        }
        _ => Err(BridgeError::unauthenticated("a token must be the object authenticate() returned, or its string")),
    }
}

fn parse_action(a: Option<&str>) -> Result<Action, BridgeError> {
    match a.unwrap_or("route") {
        "route" => Ok(Action::Route),
        "publish" => Ok(Action::Publish),
        "handle" => Ok(Action::Handle),
        "admin" => Ok(Action::Admin),
        other => Err(BridgeError::invalid(format!("unknown action {other:?}: use route, publish, handle or admin"))),
    }
}

fn seconds(s: f64) -> Result<Duration, BridgeError> {
    if (0.0..1e9).contains(&s) {
        Ok(Duration::from_secs_f64(s))
    } else {
        Err(BridgeError::invalid(format!("{s} is not a valid number of seconds")))
    }
}
