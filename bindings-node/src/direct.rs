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

use std::sync::Arc;

use dreamos_bridge::bridge::Call;
use dreamos_bridge::{BridgeError, Payload};
use napi::sys;
use parking_lot::Mutex;

use crate::convert::{self, RawValue};
use crate::handler::{self, JsHandler};
use crate::settle::{Reply, Settle, Settler};

/// The resolved JS handler of `call`, if it can run on this thread now.
pub(crate) fn handler_here(call: &Call, env: sys::napi_env) -> Option<(RawValue, usize)> {
    let h = call.handler()?.as_any()?.downcast_ref::<JsHandler>()?;
    Some((h.direct_function(env)?, h.max_depth()))
}

/// Run an admitted call's JS handler here and return the Promise of its reply.
pub(crate) fn run(
    settler: &Settler,
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
    let deadline = call.deadline();
    let cancelled = call.cancelled();
    let pattern = call.route_pattern().to_string();
    let slot = Arc::new(Mutex::new(Some((call, deferred))));
    let timer_slot = slot.clone();
    let timer = napi::bindgen_prelude::within_runtime_if_available(|| {
        tokio::spawn(async move {
            let err = tokio::select! {
                _ = tokio::time::sleep_until(deadline.into()) => BridgeError::timeout(format!(
                    "no reply from {pattern:?} within the deadline; raise the timeout or check the handler"
                )),
                _ = cancelled => BridgeError::shutdown(),
            };
            let Some((call, deferred)) = timer_slot.lock().take() else { return };
            let result: dreamos_bridge::Result<Payload> = Err(err);
            call.finish(&result);
            let _ = tsfn.call(
                Settle { deferred, outcome: result.map(Reply::Payload) },
                napi::threadsafe_function::ThreadsafeFunctionCallMode::NonBlocking,
            );
        })
    });
    let settler_then = settler.clone();
    handler::on_value(env, ret, max_depth, move |env, reply| {
        timer.abort();
        if let Some((call, deferred)) = slot.lock().take() {
            call.finish(&reply);
            settler_then.settle_from_js(env, deferred, reply.map(Reply::Payload));
        }
    });
    Ok(promise)
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
