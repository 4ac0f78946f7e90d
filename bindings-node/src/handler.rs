//! JS functions as engine [`Handler`]s.
//!
//! The engine calls handlers from tokio threads, so a JS handler is held as
//! a weak thread-safe function (it never keeps the process alive, and calls
//! fail cleanly once its thread is gone, e.g. a terminated worker). The
//! handler runs on its own JS thread; a value, a thrown error, a Promise
//! that resolves or one that rejects all come back as one reply or one
//! `HANDLER_ERROR`. Exceptions are caught on the JS side of the call, so a
//! throwing handler can never take the process down.

use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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
/// Runs a [`Chore`] on the handler's JS thread.
type ChoreFn = ThreadsafeFunction<Chore, (), (), Status, false, true>;

/// Clean-up that must run on the handler's JS thread.
enum Chore {
    /// The handler is gone: delete the weak reference to its function.
    DeleteReference,
    /// A call through the engine was given up (deadline, shutdown) while its
    /// Promise was pending: stop waiting for it (see [`crate::watch::forget`]).
    Unwatch(u64),
}

/// [`Abandon::watching`] before the JS thread has watched the Promise (watch
/// keys start at 1) and once the caller gave up.
const NOT_YET: u64 = 0;
const ABANDONED: u64 = u64::MAX;

/// Weak references made and not yet deleted (all threads): a test aid.
static LIVE_REFERENCES: AtomicUsize = AtomicUsize::new(0);

pub(crate) fn live_references() -> usize {
    LIVE_REFERENCES.load(Ordering::Relaxed)
}

/// A JS function registered with `registerRoute`.
pub(crate) struct JsHandler {
    tsfn: HandlerFn,
    max_depth: usize,
    /// The env (JS thread) it belongs to, and a weak reference to the
    /// function (the thread-safe function keeps it alive), so that a call
    /// made on that same thread can run it directly, with no thread hop.
    env: usize,
    func: usize,
    /// Deletes `func` once this handler is dropped, and forgets the
    /// Promises of given-up calls, on the JS thread.
    chores: Option<Arc<ChoreFn>>,
}

// SAFETY: `env` and `func` are only dereferenced on the JS thread they
// belong to (checked in `direct_function`); the rest is Send + Sync.
unsafe impl Send for JsHandler {}
unsafe impl Sync for JsHandler {}

impl JsHandler {
    pub(crate) fn new(func: Function<'_, Unknown<'static>, Unknown<'static>>, max_depth: usize) -> napi::Result<Self> {
        let tsfn =
            func.build_threadsafe_function::<Message>().weak::<true>().callee_handled::<false>().build_callback(
                |ctx| {
                    let env = ctx.env.raw();
                    let msg =
                        convert::from_message(env, &ctx.value).map_err(|e| napi::Error::from_reason(e.to_string()))?;
                    // SAFETY: `msg` was just created on this env.
                    Ok(unsafe { Unknown::from_raw_unchecked(env, msg) })
                },
            )?;
        let env = func.value().env;
        let js = Env::from_raw(env);
        let forget: Function<(), ()> = js.create_function_from_closure("dreamosForget", |_| Ok(()))?;
        let mut weak = ptr::null_mut();
        // SAFETY: a weak (count 0) reference to a live function of `env`,
        // deleted by `forget` (Node does not delete it at teardown).
        let status = unsafe { sys::napi_create_reference(env, func.raw(), 0, &mut weak) };
        let reference = if status == sys::Status::napi_ok { weak as usize } else { 0 };
        if reference != 0 {
            LIVE_REFERENCES.fetch_add(1, Ordering::Relaxed);
        }
        let built =
            forget.build_threadsafe_function::<Chore>().weak::<true>().callee_handled::<false>().build_callback(
                move |ctx| {
                    match ctx.value {
                        Chore::DeleteReference if reference != 0 => {
                            // SAFETY: a callback runs on the reference's own JS thread,
                            // only while its env lives; the handler's drop sends this once.
                            unsafe { sys::napi_delete_reference(ctx.env.raw(), reference as sys::napi_ref) };
                            LIVE_REFERENCES.fetch_sub(1, Ordering::Relaxed);
                        }
                        Chore::DeleteReference => {}
                        Chore::Unwatch(key) => crate::watch::forget(key),
                    }
                    Ok(())
                },
            );
        let chores = match built {
            Ok(f) => f,
            Err(e) => {
                if reference != 0 {
                    // SAFETY: made just above on this env, never handed out.
                    unsafe { sys::napi_delete_reference(env, weak) };
                    LIVE_REFERENCES.fetch_sub(1, Ordering::Relaxed);
                }
                return Err(e);
            }
        };
        Ok(JsHandler { tsfn, max_depth, env: env as usize, func: reference, chores: Some(Arc::new(chores)) })
    }

    /// The function itself, if `env` is the JS thread it belongs to.
    pub(crate) fn direct_function(&self, env: sys::napi_env) -> Option<RawValue> {
        if env as usize != self.env || self.func == 0 {
            return None;
        }
        let mut value = ptr::null_mut();
        // SAFETY: on the reference's own env; a collected function gives null.
        let status = unsafe { sys::napi_get_reference_value(env, self.func as sys::napi_ref, &mut value) };
        (status == sys::Status::napi_ok && !value.is_null()).then_some(value)
    }

    pub(crate) fn max_depth(&self) -> usize {
        self.max_depth
    }
}

impl Drop for JsHandler {
    /// The weak reference is deleted on its JS thread, always through
    /// `forget`: a drop may run on a tokio thread (a call's last clone), and
    /// one on the JS thread itself may come from a thread-local destructor
    /// after the env is gone, where no N-API call is allowed. Should the env
    /// end first, the call is dropped with it and nothing is deleted twice.
    fn drop(&mut self) {
        if let Some(chores) = self.chores.take()
            && self.func != 0
        {
            let _ = chores.call(Chore::DeleteReference, ThreadsafeFunctionCallMode::NonBlocking);
        }
    }
}

/// Held by a call's future through the engine: if the future is dropped
/// before the reply (the engine gave up on the call), the JS thread stops
/// waiting for the handler's Promise, which may never settle.
struct Abandon {
    /// The Promise's watch key, [`NOT_YET`], or [`ABANDONED`].
    watching: Arc<AtomicU64>,
    chores: Option<Arc<ChoreFn>>,
}

impl Abandon {
    /// The reply came: nothing to forget.
    fn answered(&mut self) {
        self.chores = None;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        let key = self.watching.swap(ABANDONED, Ordering::AcqRel);
        if let Some(chores) = &self.chores
            && key != NOT_YET
            && key != ABANDONED
        {
            let _ = chores.call(Chore::Unwatch(key), ThreadsafeFunctionCallMode::NonBlocking);
        }
    }
}

impl Handler for JsHandler {
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn call(&self, msg: Message) -> BoxFuture<Result<Payload>> {
        let (tx, rx) = oneshot::channel::<Reply>();
        let max_depth = self.max_depth;
        let watching = Arc::new(AtomicU64::new(NOT_YET));
        let slot = watching.clone();
        let status = self.tsfn.call_with_return_value(msg, ThreadsafeFunctionCallMode::NonBlocking, move |ret, env| {
            if let Some(key) = on_return(&env, ret, tx, max_depth)
                && slot.compare_exchange(NOT_YET, key, Ordering::AcqRel, Ordering::Acquire).is_err()
            {
                // The caller gave up before the handler even ran.
                crate::watch::forget(key);
            }
            Ok(())
        });
        if status != Status::Ok {
            return Box::pin(async move {
                Err(BridgeError::handler(format!(
                    "the JavaScript handler cannot be called any more ({status}): its thread has exited"
                )))
            });
        }
        let mut abandon = Abandon { watching, chores: self.chores.clone() };
        Box::pin(async move {
            let reply = rx.await.unwrap_or_else(|_| Err(BridgeError::handler("the JavaScript handler never answered")));
            abandon.answered();
            reply
        })
    }
}

/// On the JS thread, right after the handler returned or threw: the watch
/// key if it returned a pending Promise.
fn on_return(
    env: &Env,
    ret: napi::Result<Unknown<'static>>,
    tx: oneshot::Sender<Reply>,
    max_depth: usize,
) -> Option<u64> {
    let raw = env.raw();
    match ret {
        Ok(v) => on_value(raw, v.raw(), max_depth, move |_, r| {
            let _ = tx.send(r);
        }),
        Err(e) => {
            let thrown = JsError::from(e).into_unknown(*env);
            let _ = tx.send(Err(BridgeError::handler(convert::thrown_message(raw, thrown.raw()))));
            None
        }
    }
}

/// What a handler returned: a value now, or a Promise whose outcome
/// `done` receives later (on the JS thread); then the watch's key (see
/// [`crate::watch::forget`]). If the Promise cannot be watched, `done` gets
/// a `HANDLER_ERROR` at once rather than never.
pub(crate) fn on_value(
    env: sys::napi_env,
    value: RawValue,
    max_depth: usize,
    done: impl FnOnce(sys::napi_env, Reply) + 'static,
) -> Option<u64> {
    if !convert::is_promise(env, value) {
        done(env, reply_of(env, value, max_depth));
        return None;
    }
    let done: crate::watch::Done = Box::new(move |env, settled| {
        let reply = match settled {
            Ok(v) => reply_of(env, v, max_depth),
            Err(e) => Err(BridgeError::handler(convert::thrown_message(env, e))),
        };
        done(env, reply);
    });
    match crate::watch::watch(env, value, done) {
        Ok(key) => Some(key),
        Err(done) => {
            if let Ok(reason) =
                convert::create_string(env, "the handler returned a Promise the bridge could not wait for")
            {
                done(env, Err(reason));
            }
            None
        }
    }
}

pub(crate) fn reply_of(env: sys::napi_env, value: RawValue, max_depth: usize) -> Reply {
    convert::to_payload(env, value, max_depth, true).map_err(|e| {
        let e = e.into_bridge("the handler's reply");
        BridgeError::handler(e.message().to_string())
    })
}

/// `registerRustEcho`: a handler written in Rust that answers with the
/// request payload, to measure the binding without any JS handler cost.
pub(crate) fn rust_echo() -> std::sync::Arc<dyn Handler> {
    dreamos_bridge::sync_handler_fn(|msg: Message| Ok(msg.payload))
}
