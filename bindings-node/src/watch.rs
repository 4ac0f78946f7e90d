//! Waiting for a handler's Promise without making native functions per call.
//!
//! `promise.then(onOk, onErr)` with two fresh native closures costs two
//! N-API function objects (each with a finalizer the GC must run) per call.
//! Instead, each JS thread gets one small JS helper, `(p, k) => p.then(v =>
//! ok(k, v), e => err(k, e))`, whose `ok`/`err` are two native functions
//! made once; `k` keys the waiting callback in a thread-local table. Worker
//! threads are their own OS threads, so each gets its own helper and table.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ptr;

use napi::bindgen_prelude::{Function, Unknown};
use napi::{Env, JsValue as _, sys};

use crate::convert::{self, RawValue, check};

/// Receives the Promise's value (`Ok`) or its rejection reason (`Err`).
pub(crate) type Done = Box<dyn FnOnce(sys::napi_env, Result<RawValue, RawValue>)>;

struct Watcher {
    env: usize,
    helper: sys::napi_ref,
    next: u64,
    waiting: HashMap<u64, Done>,
}

thread_local! {
    static WATCHER: RefCell<Option<Watcher>> = const { RefCell::new(None) };
}

const HELPER: &str =
    "(function (ok, err) { return function (p, k) { p.then(function (v) { ok(k, v) }, function (e) { err(k, e) }) } })";

/// Call `done` on this thread when `promise` settles; the key lets the
/// caller [`forget`] it if it stops waiting first (a Promise that never
/// settles would hold `done` for good). On failure to attach, `done` is
/// handed back so the caller can answer instead of waiting forever.
pub(crate) fn watch(env: sys::napi_env, promise: RawValue, done: Done) -> Result<u64, Done> {
    let Some(helper) = helper(env) else { return Err(done) };
    let key = WATCHER.with(move |w| match w.borrow_mut().as_mut() {
        Some(w) => {
            w.next += 1;
            w.waiting.insert(w.next, done);
            Ok(w.next)
        }
        None => Err(done),
    })?;
    let attached = convert::create_f64(env, key as f64).ok().is_some_and(|k| {
        let (mut this, mut out) = (ptr::null_mut(), ptr::null_mut());
        let args = [promise, k];
        // SAFETY: calling our own helper on this thread's env.
        unsafe {
            sys::napi_get_undefined(env, &mut this) == sys::Status::napi_ok
                && sys::napi_call_function(env, this, helper, 2, args.as_ptr(), &mut out) == sys::Status::napi_ok
        }
    });
    if attached {
        return Ok(key);
    }
    convert::clear_exception(env);
    match take(key) {
        Some(done) => Err(done),
        None => Ok(key),
    }
}

/// Stop waiting for the Promise of `key` (on the thread that watches it):
/// its callback is dropped, uncalled.
pub(crate) fn forget(key: u64) {
    drop(take(key));
}

/// Test aid: how many Promises this thread still waits for.
pub(crate) fn waiting() -> usize {
    WATCHER.with(|w| w.borrow().as_ref().map_or(0, |w| w.waiting.len()))
}

fn take(key: u64) -> Option<Done> {
    WATCHER.with(|w| w.borrow_mut().as_mut().and_then(|w| w.waiting.remove(&key)))
}

/// This thread's helper function, made on first use.
fn helper(env: sys::napi_env) -> Option<RawValue> {
    let existing = WATCHER.with(|w| w.borrow().as_ref().filter(|w| w.env == env as usize).map(|w| w.helper));
    let reference = match existing {
        Some(r) => r,
        None => {
            let r = make_helper(env).ok()?;
            WATCHER.with(|w| {
                *w.borrow_mut() = Some(Watcher { env: env as usize, helper: r, next: 0, waiting: HashMap::new() })
            });
            r
        }
    };
    let mut value = ptr::null_mut();
    // SAFETY: a strong reference made on this env.
    let status = unsafe { sys::napi_get_reference_value(env, reference, &mut value) };
    (status == sys::Status::napi_ok && !value.is_null()).then_some(value)
}

fn make_helper(env: sys::napi_env) -> Result<sys::napi_ref, dreamos_bridge::BridgeError> {
    let js = Env::from_raw(env);
    let settled = |ok: bool| {
        move |ctx: napi::bindgen_prelude::FunctionCallContext| -> napi::Result<()> {
            let key: f64 = ctx.get(0)?;
            let value: Unknown = ctx.get(1)?;
            if let Some(done) = take(key as u64) {
                let raw = value.raw();
                done(ctx.env.raw(), if ok { Ok(raw) } else { Err(raw) });
            }
            Ok(())
        }
    };
    let internal = |e: napi::Error| dreamos_bridge::BridgeError::internal(e.to_string());
    let on_ok: Function<Unknown, ()> = js.create_function_from_closure("settled", settled(true)).map_err(internal)?;
    let on_err: Function<Unknown, ()> = js.create_function_from_closure("failed", settled(false)).map_err(internal)?;
    let source = convert::create_string(env, HELPER)?;
    let (mut factory, mut this, mut helper, mut reference) =
        (ptr::null_mut(), ptr::null_mut(), ptr::null_mut(), ptr::null_mut());
    let args = [on_ok.raw(), on_err.raw()];
    // SAFETY: running our own constant script and calling the function it
    // evaluates to, on this thread's env; the reference keeps the helper.
    unsafe {
        check(sys::napi_run_script(env, source, &mut factory), "making the Promise helper")?;
        check(sys::napi_get_undefined(env, &mut this), "making the Promise helper")?;
        check(sys::napi_call_function(env, this, factory, 2, args.as_ptr(), &mut helper), "making the Promise helper")?;
        check(sys::napi_create_reference(env, helper, 1, &mut reference), "making the Promise helper")?;
    }
    Ok(reference)
}
