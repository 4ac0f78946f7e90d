//! JS functions as engine [`Handler`]s.
//!
//! The engine calls handlers from tokio threads, so a JS handler is held as
//! a weak thread-safe function (it never keeps the process alive, and calls
//! fail cleanly once its thread is gone, e.g. a terminated worker). The
//! handler runs on its own JS thread; a value, a thrown error, a Promise
//! that resolves or one that rejects all come back as one reply or one
//! `HANDLER_ERROR`. Exceptions are caught on the JS side of the call, so a
//! throwing handler can never take the process down.

use std::cell::RefCell;
use std::ptr;
use std::rc::Rc;

use dreamos_bridge::bridge::BoxFuture;
use dreamos_bridge::{BridgeError, Handler, Message, Payload, Result};
use napi::JsValue as _;
use napi::bindgen_prelude::{Function, Unknown};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, JsError, Status, sys};
use tokio::sync::oneshot;

use crate::convert::{self, RawValue};

type Reply = Result<Payload>;
type HandlerFn = ThreadsafeFunction<Message, Unknown<'static>, Unknown<'static>, Status, false, true>;

/// A JS function registered with `registerRoute`.
pub(crate) struct JsHandler {
    tsfn: HandlerFn,
    max_depth: usize,
}

impl JsHandler {
    pub(crate) fn new(func: Function<'_, Unknown<'static>, Unknown<'static>>, max_depth: usize) -> napi::Result<Self> {
        let tsfn = func.build_threadsafe_function::<Message>().weak::<true>().callee_handled::<false>().build_callback(
            |ctx| {
                let env = ctx.env.raw();
                let msg = convert::from_message(env, &ctx.value).map_err(|e| napi::Error::from_reason(e.to_string()))?;
                // SAFETY: `msg` was just created on this env.
                Ok(unsafe { Unknown::from_raw_unchecked(env, msg) })
            },
        )?;
        Ok(JsHandler { tsfn, max_depth })
    }
}

impl Handler for JsHandler {
    fn call(&self, msg: Message) -> BoxFuture<Result<Payload>> {
        let (tx, rx) = oneshot::channel::<Reply>();
        let max_depth = self.max_depth;
        let status = self.tsfn.call_with_return_value(msg, ThreadsafeFunctionCallMode::NonBlocking, move |ret, env| {
            on_return(&env, ret, tx, max_depth);
            Ok(())
        });
        if status != Status::Ok {
            return Box::pin(async move {
                Err(BridgeError::handler(format!(
                    "the JavaScript handler cannot be called any more ({status}): its thread has exited"
                )))
            });
        }
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| Err(BridgeError::handler("the JavaScript handler never answered")))
        })
    }
}

/// On the JS thread, right after the handler returned or threw.
fn on_return(env: &Env, ret: napi::Result<Unknown<'static>>, tx: oneshot::Sender<Reply>, max_depth: usize) {
    let raw = env.raw();
    let value = match ret {
        Ok(v) => v.raw(),
        Err(e) => {
            let thrown = JsError::from(e).into_unknown(*env);
            let _ = tx.send(Err(BridgeError::handler(convert::thrown_message(raw, thrown.raw()))));
            return;
        }
    };
    if !convert::is_promise(raw, value) {
        let _ = tx.send(reply_of(raw, value, max_depth));
        return;
    }
    // A Promise: settle the reply from its then/catch callbacks.
    let tx = Rc::new(RefCell::new(Some(tx)));
    let (tx_ok, tx_err) = (tx.clone(), tx);
    let attached = (|| -> napi::Result<()> {
        let on_ok: Function<Unknown, ()> = env.create_function_from_closure("onReply", move |ctx| {
            let v: Unknown = ctx.get(0)?;
            if let Some(tx) = tx_ok.borrow_mut().take() {
                let _ = tx.send(reply_of(ctx.env.raw(), v.raw(), max_depth));
            }
            Ok(())
        })?;
        let on_err: Function<Unknown, ()> = env.create_function_from_closure("onError", move |ctx| {
            let v: Unknown = ctx.get(0)?;
            if let Some(tx) = tx_err.borrow_mut().take() {
                let _ = tx.send(Err(BridgeError::handler(convert::thrown_message(ctx.env.raw(), v.raw()))));
            }
            Ok(())
        })?;
        let then = convert::get_named(raw, value, "then").map_err(|_| napi::Error::from_reason("no then"))?;
        let args: [RawValue; 2] = [on_ok.raw(), on_err.raw()];
        let mut out = ptr::null_mut();
        // SAFETY: promise.then(onOk, onErr) on the JS thread.
        let status = unsafe { sys::napi_call_function(raw, value, then, 2, args.as_ptr(), &mut out) };
        if status != sys::Status::napi_ok {
            return Err(napi::Error::from_reason("then() failed"));
        }
        Ok(())
    })();
    // If attaching failed, the senders are dropped and the caller gets
    // "never answered" as HANDLER_ERROR rather than hanging.
    let _ = attached;
}

fn reply_of(env: sys::napi_env, value: RawValue, max_depth: usize) -> Reply {
    convert::to_payload(env, value, max_depth).map_err(|e| {
        let e = e.into_bridge("the handler's reply");
        BridgeError::handler(e.message().to_string())
    })
}

/// `registerRustEcho`: a handler written in Rust that answers with the
/// request payload, to measure the binding without any JS handler cost.
pub(crate) fn rust_echo() -> std::sync::Arc<dyn Handler> {
    dreamos_bridge::handler_fn(|msg: Message| async move { Ok(msg.payload) })
}
