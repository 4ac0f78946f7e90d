//! `route()` to a JS handler on the caller's own thread, with no thread hop.
//!
//! Through the engine, a JS handler costs two cross-thread wake-ups (the
//! tokio thread calls into JS, the result comes back) plus the Promise's
//! own: on two cores, well over 100 µs. When the caller's thread is the
//! handler's thread (the common case: one agent, one event loop), the stages
//! that never wait run here ([`BridgeManager::begin`], [`Call::try_admit`]),
//! the handler is called directly, and the [`Call`] is finished with its
//! outcome, exactly as the engine's `deliver` would. A plain value settles
//! the Promise at once; a Promise settles it from its own `then`, racing
//! the deadline and shutdown on the runtime.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dreamos_bridge::bridge::Call;
use dreamos_bridge::{BridgeError, Payload};
use napi::sys;
use napi::threadsafe_function::ThreadsafeFunctionCallMode;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::convert::{self, RawValue};
use crate::handler::{self, JsHandler};
use crate::settle::{Deferred, Reply, Settle, SettleFn, Settler};

/// The resolved JS handler of `call`, if it can run on this thread now.
pub(crate) fn handler_here(call: &Call, env: sys::napi_env) -> Option<(RawValue, usize)> {
    let h = call.handler()?.as_any()?.downcast_ref::<JsHandler>()?;
    Some((h.direct_function(env)?, h.max_depth()))
}

/// Run an admitted call's JS handler here and return the Promise of its reply.
pub(crate) fn run(
    settler: &Settler,
    deadlines: &Deadlines,
    env: sys::napi_env,
    call: Call,
    func: RawValue,
    max_depth: usize,
) -> napi::Result<RawValue> {
    let msg = match convert::from_message(env, call.message()) {
        Ok(m) => m,
        Err(e) => return finish_now(settler, env, call, Err(e)),
    };
    let mut this = std::ptr::null_mut();
    let mut ret = std::ptr::null_mut();
    // SAFETY: calling a live function of this env with one argument.
    let status = unsafe {
        sys::napi_get_undefined(env, &mut this);
        sys::napi_call_function(env, this, func, 1, &msg, &mut ret)
    };
    if status != sys::Status::napi_ok {
        let mut exc = std::ptr::null_mut();
        // SAFETY: the call threw; take the exception so JS does not see it twice.
        unsafe { sys::napi_get_and_clear_last_exception(env, &mut exc) };
        let text = if exc.is_null() { "the handler threw".to_string() } else { convert::thrown_message(env, exc) };
        return finish_now(settler, env, call, Err(BridgeError::handler(text)));
    }
    if !convert::is_promise(env, ret) {
        let reply = handler::reply_of(env, ret, max_depth);
        return finish_now(settler, env, call, reply);
    }

    // A Promise: whoever comes first (its then, the deadline, shutdown)
    // takes the call and settles ours.
    let (deferred, promise, tsfn) = settler.deferred(env)?;
    let cancelled = call.cancelled();
    let key = deadlines.insert(Pending { call, deferred, watch: None }, cancelled, tsfn);
    let settler_then = settler.clone();
    let then_deadlines = deadlines.clone();
    let watch = handler::on_value(env, ret, max_depth, move |env, reply| {
        if let Some(Pending { call, deferred, .. }) = then_deadlines.remove(key) {
            call.finish(&reply);
            settler_then.settle_from_js(env, deferred, reply.map(Reply::Payload));
        }
    });
    // The sweeper forgets the watch if the call times out first; if it
    // already did, nothing waits for the Promise any more.
    if let Some(w) = watch
        && !deadlines.set_watch(key, w)
    {
        crate::watch::forget(w);
    }
    Ok(promise)
}

/// A direct call waiting for its handler's Promise.
struct Pending {
    call: Call,
    deferred: Deferred,
    /// The watch on the handler's Promise (see [`crate::watch`]).
    watch: Option<u64>,
}

type Key = (Instant, u64);

/// The deadlines of a bridge's direct calls, watched by one sweeper task
/// (not one timer task per call: spawning is a cross-thread wake-up, the
/// very cost the direct path avoids). Deadlines mostly arrive in order, so
/// the sweeper is woken only when a new one is the earliest.
#[derive(Clone, Default)]
pub(crate) struct Deadlines {
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
}

#[derive(Default)]
struct State {
    waiting: BTreeMap<Key, Pending>,
    seq: u64,
    sweeper: bool,
    shut_down: bool,
}

impl Deadlines {
    fn insert(&self, p: Pending, cancelled: impl Future<Output = ()> + Send + 'static, tsfn: Arc<SettleFn>) -> Key {
        let mut st = self.state.lock();
        st.seq += 1;
        let key = (p.call.deadline(), st.seq);
        let earliest = st.waiting.first_key_value().is_none_or(|(k, _)| key < *k);
        st.waiting.insert(key, p);
        if !st.sweeper {
            st.sweeper = true;
            let sweeper = sweep(self.state.clone(), self.wake.clone(), cancelled, tsfn);
            napi::bindgen_prelude::within_runtime_if_available(|| tokio::spawn(sweeper));
        } else if earliest || st.shut_down {
            self.wake.notify_one();
        }
        key
    }

    fn remove(&self, key: Key) -> Option<Pending> {
        self.state.lock().waiting.remove(&key)
    }

    /// Note the watch of a waiting call; `false` if the call is over.
    fn set_watch(&self, key: Key, watch: u64) -> bool {
        self.state.lock().waiting.get_mut(&key).map(|p| p.watch = Some(watch)).is_some()
    }
}

/// Fails calls whose deadline passed with `TIMEOUT`, and every call with
/// `SHUTDOWN` once shutdown gives up on in-flight work. Ends once nothing
/// else holds the state (the bridge object and every waiting handler's
/// callbacks are gone) and nothing waits.
async fn sweep(
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
    cancelled: impl Future<Output = ()> + Send + 'static,
    tsfn: Arc<SettleFn>,
) {
    let mut cancelled = std::pin::pin!(cancelled);
    let mut shut_down = false;
    loop {
        let (due, next) = {
            let mut st = state.lock();
            if Arc::strong_count(&state) == 1 && st.waiting.is_empty() {
                return;
            }
            st.shut_down |= shut_down;
            let now = Instant::now();
            let mut due = Vec::new();
            while let Some(entry) = st.waiting.first_entry() {
                if !shut_down && entry.key().0 > now {
                    break;
                }
                due.push(entry.remove());
            }
            (due, st.waiting.first_key_value().map(|(k, _)| k.0))
        };
        for Pending { call, deferred, watch } in due {
            let err = if shut_down {
                BridgeError::shutdown()
            } else {
                BridgeError::timeout(format!(
                    "no reply from {:?} within the deadline; raise the timeout or check the handler",
                    call.route_pattern()
                ))
            };
            let result: dreamos_bridge::Result<Payload> = Err(err);
            call.finish(&result);
            let _ = tsfn.call(
                Settle { deferred, outcome: result.map(Reply::Payload), unwatch: watch },
                ThreadsafeFunctionCallMode::NonBlocking,
            );
        }
        // Re-check the bridge at least every minute, so the task ends soon
        // after the bridge object is collected.
        let next = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = wake.notified() => {}
            _ = &mut cancelled, if !shut_down => shut_down = true,
        }
    }
}

fn finish_now(
    settler: &Settler,
    env: sys::napi_env,
    call: Call,
    reply: dreamos_bridge::Result<Payload>,
) -> napi::Result<RawValue> {
    call.finish(&reply);
    settler.ready(env, reply.map(Reply::Payload))
}
