//! Promises for engine work, settled with as few thread hops as possible.
//!
//! Every asynchronous method creates its Promise here. The engine future is
//! polled once on the JS thread first (inside the tokio runtime's context):
//! an in-process Rust handler, a rejection by validation, auth or limits, or
//! anything else that needs no waiting settles the Promise right there, with
//! no thread hop at all. Only work that must wait goes to the tokio runtime,
//! and its result comes back through one thread-safe function per bridge,
//! which Node drains in batches (one wake-up settles many Promises) instead
//! of one wake-up per Promise.
//!
//! The thread-safe function is weak (it never keeps the process alive by
//! itself) and is referenced only while Promises are outstanding, so a
//! pending `route()` keeps Node running until it settles, and an idle bridge
//! never does.

use std::cell::Cell;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::ptr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use dreamos_bridge::{BridgeError, Payload};
use futures_util::FutureExt;
use napi::bindgen_prelude::Function;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, Status, sys};
use serde_json::Value;

use crate::convert::{self, RawValue, check};

/// What a settled Promise resolves to.
pub(crate) enum Reply {
    Payload(Payload),
    Json(Value),
    Str(String),
    Bool(bool),
    Undefined,
}

pub(crate) type Outcome = Result<Reply, BridgeError>;

impl Reply {
    fn to_js(&self, env: sys::napi_env) -> Result<RawValue, BridgeError> {
        match self {
            Reply::Payload(p) => convert::from_payload(env, p),
            Reply::Json(v) => convert::from_json(env, v),
            Reply::Str(s) => convert::create_string(env, s),
            Reply::Bool(b) => convert::create_bool(env, *b),
            Reply::Undefined => convert::undefined(env),
        }
    }
}

/// A `napi_deferred` travelling to a tokio thread and back. It is only ever
/// used on the JS thread that created it.
pub(crate) struct Deferred(sys::napi_deferred);
// SAFETY: the pointer is carried, never dereferenced, off the JS thread.
unsafe impl Send for Deferred {}

pub(crate) struct Settle {
    pub(crate) deferred: Deferred,
    pub(crate) outcome: Outcome,
    /// A handler's Promise this call no longer waits for (it timed out):
    /// forgotten on the JS thread (see [`crate::watch::forget`]).
    pub(crate) unwatch: Option<u64>,
}

pub(crate) type SettleFn = ThreadsafeFunction<Settle, (), (), Status, false, true>;

/// Per-bridge (and so per JS thread) Promise settler. Clones share it;
/// it stays on its JS thread.
#[derive(Clone)]
pub(crate) struct Settler {
    tsfn: Arc<SettleFn>,
    keep_alive: KeepAlive,
}

/// Counts Promises waiting on work off the JS thread, and keeps the event
/// loop alive (by referencing the settle function) while there are any.
#[derive(Clone)]
struct KeepAlive {
    pending: Rc<Cell<usize>>,
    tsfn: Rc<Cell<sys::napi_threadsafe_function>>,
}

impl KeepAlive {
    fn hold(&self, env: sys::napi_env) {
        if self.pending.get() == 0 {
            // SAFETY: on the JS thread that owns the tsfn.
            unsafe { sys::napi_ref_threadsafe_function(env, self.tsfn.get()) };
        }
        self.pending.set(self.pending.get() + 1);
    }

    fn release(&self, env: sys::napi_env) {
        let left = self.pending.get().saturating_sub(1);
        self.pending.set(left);
        if left == 0 {
            // SAFETY: on the JS thread that owns the tsfn.
            unsafe { sys::napi_unref_threadsafe_function(env, self.tsfn.get()) };
        }
    }
}

impl Settler {
    pub(crate) fn new(env: &Env) -> napi::Result<Self> {
        let keep_alive = KeepAlive { pending: Rc::new(Cell::new(0usize)), tsfn: Rc::new(Cell::new(ptr::null_mut())) };
        let noop: Function<(), ()> = env.create_function_from_closure("dreamosSettle", |_| Ok(()))?;
        let in_cb = keep_alive.clone();
        let tsfn: SettleFn =
            noop.build_threadsafe_function::<Settle>().weak::<true>().callee_handled::<false>().build_callback(
                move |ctx| {
                    let env = ctx.env.raw();
                    if let Some(key) = ctx.value.unwatch {
                        crate::watch::forget(key);
                    }
                    settle_now(env, ctx.value.deferred, ctx.value.outcome);
                    in_cb.release(env);
                    Ok(())
                },
            )?;
        keep_alive.tsfn.set(tsfn.raw());
        Ok(Settler { tsfn: Arc::new(tsfn), keep_alive })
    }

    /// A Promise for `fut`: polled once here, on the JS thread; if it has
    /// to wait, driven to completion on the tokio runtime.
    pub(crate) fn promise<F>(&self, env: sys::napi_env, fut: F) -> napi::Result<RawValue>
    where
        F: Future<Output = Outcome> + Send + 'static,
    {
        let (deferred, promise) = create_promise(env)?;
        // A panic in the engine settles the Promise with INTERNAL: unwinding
        // through the spawned task would leave it pending forever, and the
        // keep-alive it holds would keep Node running.
        let mut fut = Box::pin(AssertUnwindSafe(fut).catch_unwind().map(|r| {
            r.unwrap_or_else(|_| {
                Err(BridgeError::internal("bug in dreamos_bridge: the engine panicked (please report it)"))
            })
        }));
        let polled = napi::bindgen_prelude::within_runtime_if_available(|| {
            let mut cx = Context::from_waker(Waker::noop());
            fut.as_mut().poll(&mut cx)
        });
        match polled {
            Poll::Ready(outcome) => settle_now(env, deferred, outcome),
            Poll::Pending => {
                self.keep_alive.hold(env);
                let tsfn = self.tsfn.clone();
                napi::bindgen_prelude::spawn(async move {
                    let outcome = fut.await;
                    // If the JS thread is gone (a terminated worker), the
                    // call fails and the result is dropped: nobody waits for it.
                    let _ =
                        tsfn.call(Settle { deferred, outcome, unwatch: None }, ThreadsafeFunctionCallMode::NonBlocking);
                });
            }
        }
        Ok(promise)
    }

    /// A Promise that [`settle_from_js`](Self::settle_from_js) or the
    /// returned settle function will settle; it keeps Node alive until then.
    pub(crate) fn deferred(&self, env: sys::napi_env) -> napi::Result<(Deferred, RawValue, Arc<SettleFn>)> {
        let (deferred, promise) = create_promise(env)?;
        self.keep_alive.hold(env);
        Ok((deferred, promise, self.tsfn.clone()))
    }

    /// Settle, on the JS thread, a Promise from [`deferred`](Self::deferred).
    pub(crate) fn settle_from_js(&self, env: sys::napi_env, deferred: Deferred, outcome: Outcome) {
        settle_now(env, deferred, outcome);
        self.keep_alive.release(env);
    }

    /// A Promise already settled with `outcome`.
    pub(crate) fn ready(&self, env: sys::napi_env, outcome: Outcome) -> napi::Result<RawValue> {
        // An object or array reply: parsed and resolved in one call into JS.
        if let Ok(Reply::Payload(Payload::Json(v @ (Value::Object(_) | Value::Array(_))))) = &outcome
            && let Some(p) = crate::json_text::resolved(env, v)
        {
            return Ok(p);
        }
        let (deferred, promise) = create_promise(env)?;
        settle_now(env, deferred, outcome);
        Ok(promise)
    }
}

fn create_promise(env: sys::napi_env) -> napi::Result<(Deferred, RawValue)> {
    let (mut deferred, mut promise) = (ptr::null_mut(), ptr::null_mut());
    // SAFETY: plain promise creation on the JS thread.
    let status = unsafe { sys::napi_create_promise(env, &mut deferred, &mut promise) };
    if status != sys::Status::napi_ok {
        return Err(napi::Error::new(Status::GenericFailure, "could not create a Promise"));
    }
    Ok((Deferred(deferred), promise))
}

/// Resolve or reject on the JS thread. Conversion failures reject with an
/// `INTERNAL` error rather than leaving the Promise pending.
fn settle_now(env: sys::napi_env, deferred: Deferred, outcome: Outcome) {
    let value = match &outcome {
        Ok(reply) => reply.to_js(env).map_err(|e| (e, false)),
        Err(e) => Err((e.clone(), true)),
    };
    let status = match value {
        // SAFETY: `deferred` came from napi_create_promise on this env and is settled once.
        Ok(v) => unsafe { sys::napi_resolve_deferred(env, deferred.0, v) },
        Err((e, _)) => {
            let err = convert::from_error(env, &e).or_else(|_| convert::create_string(env, &e.to_string()));
            match err {
                // SAFETY: as above.
                Ok(v) => unsafe { sys::napi_reject_deferred(env, deferred.0, v) },
                Err(_) => sys::Status::napi_generic_failure,
            }
        }
    };
    let _ = check(status, "settling a Promise");
}
