//! `BridgeManager.connect(url, credentials)`: a bridge that lives in a
//! `dreamos-bridge serve` process, shared by many agent processes.
//!
//! All the work is the Rust client's (`dreamos_bridge_client::RemoteBridge`:
//! HTTP calls with token renewal, one WebSocket session for the handlers
//! this process serves, reconnects, server error bodies turned back into
//! the engine's codes). This module converts arguments the way the local
//! `BridgeManager` does, so both take the same calls and reject with the
//! same `.code`s; handlers are the binding's own [`JsHandler`]s.

use std::sync::Arc;

use dreamos_bridge::message::Limits;
use dreamos_bridge::{BridgeError, Credentials};
use dreamos_bridge_client::{ClientOptions, RemoteBridge};
use napi::bindgen_prelude::{Function, PromiseRaw, Unknown};
use napi::threadsafe_function::ThreadsafeFunction;
use napi::{Env, JsValue as _, Status};
use napi_derive::napi;
use parking_lot::Mutex;
use serde_json::json;

use crate::convert;
use crate::settle::{Reply, Settler};
use crate::{call_args, js_handler, raw, seconds, text_arg, throw, unknown};

/// `BridgeManager.connect` (declared in lib.rs, where the class is).
pub(crate) fn connect<'e>(
    env: &'e Env,
    url: Unknown<'_>,
    credentials: Option<Unknown<'_>>,
    options: Option<Unknown<'_>>,
) -> napi::Result<PromiseRaw<'e, JsRemoteBridge>> {
    let e = env.raw();
    let args = (|| -> Result<_, BridgeError> {
        let url = convert::get_string(e, url.raw())
            .map_err(|_| BridgeError::config("url", "must be a string: use http://HOST:PORT"))?;
        let creds = match raw(&credentials).filter(|v| !convert::is_nullish(e, *v)) {
            None => None,
            Some(v) => {
                let v = convert::to_json(e, v, 8)
                    .map_err(|c| BridgeError::unauthenticated(c.into_bridge("credentials").message()))?;
                Some(Credentials::from_json(&v)?)
            }
        };
        let mut opts = ClientOptions::default();
        if let Some(o) = raw(&options).filter(|v| !convert::is_nullish(e, *v)) {
            let t = convert::get_named(e, o, "timeout").map_err(|c| c.into_bridge("options.timeout"))?;
            if !convert::is_nullish(e, t) {
                let secs = convert::to_json(e, t, 1)
                    .ok()
                    .and_then(|v| v.as_f64())
                    .filter(|s| *s > 0.0)
                    .ok_or_else(|| BridgeError::invalid("options.timeout must be seconds (a number above 0)"))?;
                opts.connect_timeout = seconds(secs)?;
            }
            let n = convert::get_named(e, o, "maxConnections").map_err(|c| c.into_bridge("options.maxConnections"))?;
            if !convert::is_nullish(e, n) {
                opts.max_connections = convert::to_json(e, n, 1)
                    .ok()
                    .and_then(|v| v.as_u64())
                    .filter(|n| *n > 0)
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| BridgeError::invalid("options.maxConnections must be a positive integer"))?;
            }
            let ca = convert::get_named(e, o, "caFile").map_err(|c| c.into_bridge("options.caFile"))?;
            if !convert::is_nullish(e, ca) {
                match convert::to_json(e, ca, 1) {
                    Ok(serde_json::Value::String(path)) => opts.ca_file = Some(path.into()),
                    _ => return Err(BridgeError::invalid("options.caFile must be a path (a string)")),
                }
            }
        }
        Ok((url, creds, opts))
    })();
    let fut = async move {
        let (url, creds, opts) = args?;
        match creds {
            Some(c) => RemoteBridge::connect(&url, &c, opts).await,
            None => RemoteBridge::connect_anonymous(&url, opts).await,
        }
    };
    env.spawn_future_with_callback(async move { Ok(fut.await) }, |env, r: Result<RemoteBridge, BridgeError>| match r {
        Ok(remote) => Ok(JsRemoteBridge {
            remote,
            settler: Settler::new(env)?,
            max_depth: Limits::default().max_json_depth,
            serving: Serving::default(),
        }),
        Err(err) => Err(throw(env.raw(), &err)),
    })
}

/// A bridge running in a `dreamos-bridge serve` process; from `BridgeManager.connect()`.
/// While it serves routes (from the first registration the server accepts
/// until `close()` or the last `unregisterRoute`) it keeps Node running, as
/// a server socket would.
#[napi(js_name = "RemoteBridge")]
pub struct JsRemoteBridge {
    remote: RemoteBridge,
    settler: Settler,
    max_depth: usize,
    serving: Serving,
}

/// A thread-safe function that is not weak: while it exists Node keeps
/// running; dropped (from any thread), it lets the event loop end.
type AliveFn = ThreadsafeFunction<(), (), (), Status, false, false>;

/// Keeps Node running while this process serves routes for others, and
/// only then: not for a registration the server refused, not once the last
/// route is unregistered or the bridge closed.
#[derive(Clone, Default)]
struct Serving(Arc<Mutex<Option<AliveFn>>>);

impl Serving {
    /// A keep-alive for a registration in flight (made on the JS thread).
    fn candidate(env: &Env) -> napi::Result<AliveFn> {
        let noop: Function<(), ()> = env.create_function_from_closure("dreamosServing", |_| Ok(()))?;
        noop.build_threadsafe_function::<()>().callee_handled::<false>().build()
    }

    /// After the server accepted a registration: hold `alive` if routes are
    /// served (an `unregisterRoute` may have raced the answer) and none is held.
    fn accepted(&self, alive: AliveFn, remote: &RemoteBridge) {
        let mut slot = self.0.lock();
        if slot.is_none() && !remote.is_closed() && !remote.routes().is_empty() {
            *slot = Some(alive);
        }
    }

    /// After an unregistration or `close()`: let Node end if nothing is served.
    fn check(&self, remote: &RemoteBridge) {
        let mut slot = self.0.lock();
        if remote.is_closed() || remote.routes().is_empty() {
            slot.take();
        }
    }
}

#[napi]
impl JsRemoteBridge {
    /// The server's URL.
    #[napi(getter)]
    pub fn url(&self) -> String {
        self.remote.url().to_string()
    }

    /// The session's bridge token (renewed before it expires); null without security.
    #[napi(getter, ts_return_type = "Token | null")]
    pub fn token<'e>(&self, env: &'e Env) -> napi::Result<Unknown<'e>> {
        let v = match self.remote.token() {
            Some(t) => json!({"value": t.value, "principal": t.principal, "roles": t.roles, "expiresAt": t.expires_at}),
            None => serde_json::Value::Null,
        };
        let js = convert::from_json(env.raw(), &v).map_err(|err| throw(env.raw(), &err))?;
        Ok(unknown(env.raw(), js))
    }

    /// Has `close()` been called?
    #[napi(getter)]
    pub fn is_closed(&self) -> bool {
        self.remote.is_closed()
    }

    /// Request/reply through the server: the reply payload, or a rejection
    /// with the same `.code` a local bridge gives. `timeout` is in seconds.
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
        let p = match call_args(e, self.max_depth, destination_or_message.raw(), raw(&payload), raw(&options), true) {
            Ok((msg, opts)) => {
                let r = self.remote.clone();
                self.settler.promise(e, async move { r.route(msg, opts).await.map(Reply::Payload) })?
            }
            Err(err) => self.settler.ready(e, Err(err))?,
        };
        Ok(unknown(e, p))
    }

    /// Fire-and-forget through the server: the message id once admitted.
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
        let p = match call_args(e, self.max_depth, destination_or_message.raw(), raw(&payload), raw(&options), true) {
            Ok((msg, opts)) => {
                let r = self.remote.clone();
                self.settler
                    .promise(e, async move { r.publish(msg, opts).await.map(|id| Reply::Str(id.to_string())) })?
            }
            Err(err) => self.settler.ready(e, Err(err))?,
        };
        Ok(unknown(e, p))
    }

    /// Exchange credentials for a token of the server (the session keeps its own).
    #[napi(catch_unwind, ts_args_type = "credentials: Credentials", ts_return_type = "Promise<Token>")]
    pub fn authenticate<'e>(&self, env: &'e Env, credentials: Unknown<'_>) -> napi::Result<Unknown<'e>> {
        let e = env.raw();
        let creds = convert::to_json(e, credentials.raw(), 8)
            .map_err(|c| BridgeError::unauthenticated(c.into_bridge("credentials").message()))
            .and_then(|v| Credentials::from_json(&v));
        let p = match creds {
            Ok(c) => {
                let r = self.remote.clone();
                self.settler.promise(e, async move {
                    r.authenticate(&c).await.map(|t| {
                        Reply::Json(json!({
                            "value": t.value, "principal": t.principal, "roles": t.roles, "expiresAt": t.expires_at,
                        }))
                    })
                })?
            }
            Err(err) => self.settler.ready(e, Err(err))?,
        };
        Ok(unknown(e, p))
    }

    /// Serve `pattern` with a JS function (plain or async) for every client
    /// of the server. Resolves once the server accepted the subscription
    /// (`FORBIDDEN` if the principal may not serve it); the pattern is served
    /// again after a reconnect.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn register_route<'e>(
        &self,
        env: &'e Env,
        #[napi(ts_arg_type = "string")] pattern: Unknown<'_>,
        #[napi(ts_arg_type = "(message: Message) => Payload | Promise<Payload> | void | Promise<void>")]
        handler: Unknown<'_>,
    ) -> napi::Result<Unknown<'e>> {
        let e = env.raw();
        let args =
            text_arg(e, pattern.raw(), "pattern").and_then(|p| Ok((p, js_handler(e, &handler, self.max_depth)?)));
        let (pattern, h) = match args {
            Ok((p, h)) => (p, Arc::new(h)),
            Err(err) => return Ok(unknown(e, self.settler.ready(e, Err(err))?)),
        };
        // Node keeps running while this Promise is pending; after that,
        // only if the server accepted the registration.
        let alive = match Serving::candidate(env) {
            Ok(a) => a,
            Err(err) => {
                let err = BridgeError::internal(format!("could not make the keep-alive of a served route: {err}"));
                return Ok(unknown(e, self.settler.ready(e, Err(err))?));
            }
        };
        let (r, serving) = (self.remote.clone(), self.serving.clone());
        let p = self.settler.promise(e, async move {
            r.register_route(&pattern, h).await?;
            serving.accepted(alive, &r);
            Ok(Reply::Undefined)
        })?;
        Ok(unknown(e, p))
    }

    /// Stop serving `pattern`; `true` if this client served it.
    #[napi(catch_unwind)]
    pub fn unregister_route(
        &self,
        env: Env,
        #[napi(ts_arg_type = "string")] pattern: Unknown<'_>,
    ) -> napi::Result<bool> {
        let pattern = text_arg(env.raw(), pattern.raw(), "pattern").map_err(|err| throw(env.raw(), &err))?;
        let had = self.remote.unregister_route(&pattern);
        self.serving.check(&self.remote);
        Ok(had)
    }

    /// The patterns this client serves.
    #[napi]
    pub fn routes(&self) -> Vec<String> {
        self.remote.routes()
    }

    /// The server bridge's metrics (the principal needs the admin role for `admin.metrics`).
    #[napi(catch_unwind, ts_return_type = "Promise<Metrics>")]
    pub fn metrics<'e>(&self, env: &'e Env) -> napi::Result<Unknown<'e>> {
        let r = self.remote.clone();
        let p = self.settler.promise(env.raw(), async move { r.metrics().await.map(Reply::Json) })?;
        Ok(unknown(env.raw(), p))
    }

    /// The server bridge's health.
    #[napi(catch_unwind, ts_return_type = "Promise<Health>")]
    pub fn health<'e>(&self, env: &'e Env) -> napi::Result<Unknown<'e>> {
        let r = self.remote.clone();
        let p = self.settler.promise(env.raw(), async move { r.health().await.map(Reply::Json) })?;
        Ok(unknown(env.raw(), p))
    }

    /// Stop serving routes; later calls reject with `SHUTDOWN`.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close<'e>(&self, env: &'e Env) -> napi::Result<Unknown<'e>> {
        self.remote.close();
        self.serving.check(&self.remote);
        Ok(unknown(env.raw(), self.settler.ready(env.raw(), Ok(Reply::Undefined))?))
    }
}
