//! C function pointers as engine handlers, and the bookkeeping that lets
//! `dreamos_bridge_free` promise that no callback runs after it returns.

use std::any::Any;
use std::ffi::{CStr, CString, c_char, c_void};
use std::sync::Arc;

use bridge_core::bridge::BoxFuture;
use bridge_core::{BridgeError, Handler, Message, Payload};
use parking_lot::{Condvar, Mutex};

use crate::status::dreamos_status;

/// A message handler written in C.
///
/// Called with the `user_data` given to `dreamos_bridge_register_route`, the
/// message as a JSON object (`id`, `destination`, `payload`, `headers`,
/// `source`, `timestamp`, `priority`) that is owned by the library and valid
/// only during the call, and an out-pointer for the reply.
///
/// Return `DREAMOS_OK` and set `*reply_json_out` to a JSON text allocated with
/// `malloc` (the library frees it with `free`; leaving it NULL replies
/// `null`). Any other status fails the call with `DREAMOS_HANDLER_ERROR`,
/// and the string in `*reply_json_out`, if set, becomes the error message.
///
/// Runs on one of the library's threads (its blocking pool), possibly on
/// several threads at once: `user_data` must be safe to use from any thread.
pub type dreamos_handler_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        message_json: *const c_char,
        reply_json_out: *mut *mut c_char,
    ) -> dreamos_status,
>;

/// The same function read with an integer return: a C handler may return
/// any int, and a value outside the enum must not become an invalid Rust
/// enum. `dreamos_status` is a C enum, which has the size and registers of
/// an `unsigned int` on every ABI the library targets.
type RawHandlerFn = unsafe extern "C" fn(*mut c_void, *const c_char, *mut *mut c_char) -> u32;

/// The handler type of the header, without the `Option`.
type TypedHandlerFn = unsafe extern "C" fn(*mut c_void, *const c_char, *mut *mut c_char) -> dreamos_status;

const _: () = assert!(std::mem::size_of::<dreamos_status>() == std::mem::size_of::<u32>());

unsafe extern "C" {
    /// The C library's `free`, for the replies handlers allocate with `malloc`.
    fn free(ptr: *mut c_void);
}

/// A C pointer the C side promised is usable from any thread.
#[derive(Clone, Copy)]
pub(crate) struct UserData(pub(crate) *mut c_void);

// SAFETY: the header documents that user_data is passed to callbacks on the
// library's threads, concurrently; the C caller guarantees that is safe.
unsafe impl Send for UserData {}
// SAFETY: as above.
unsafe impl Sync for UserData {}

impl UserData {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    pub(crate) fn ptr(self) -> *mut c_void {
        self.0
    }
}

/// Counts the C callbacks (handler calls, completion callbacks) of one
/// bridge that are pending or running, so that freeing the bridge can wait
/// for them.
#[derive(Default)]
pub(crate) struct Activity {
    count: Mutex<usize>,
    idle: Condvar,
}

thread_local! {
    /// Activities whose callbacks are running on this thread right now (a
    /// bridge freed from inside its own callback must not wait for itself).
    static RUNNING_HERE: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Activity {
    /// One more pending callback; it ends when the returned guard drops.
    pub(crate) fn begin(self: &Arc<Self>) -> ActivityGuard {
        *self.count.lock() += 1;
        ActivityGuard(self.clone())
    }

    /// Run a C callback, marking this thread as inside it.
    pub(crate) fn running<R>(self: &Arc<Self>, f: impl FnOnce() -> R) -> R {
        let id = Arc::as_ptr(self) as usize;
        let _ = RUNNING_HERE.try_with(|r| r.borrow_mut().push(id));
        struct Pop;
        impl Drop for Pop {
            fn drop(&mut self) {
                let _ = RUNNING_HERE.try_with(|r| r.borrow_mut().pop());
            }
        }
        let _pop = Pop;
        f()
    }

    /// Wait until no callback is pending or running, except those running
    /// on this very thread (which will finish after we return).
    pub(crate) fn wait_idle(self: &Arc<Self>) {
        let id = Arc::as_ptr(self) as usize;
        let mine = RUNNING_HERE.try_with(|r| r.borrow().iter().filter(|&&x| x == id).count()).unwrap_or(0);
        let mut count = self.count.lock();
        while *count > mine {
            self.idle.wait(&mut count);
        }
    }
}

/// Ends one pending callback.
pub(crate) struct ActivityGuard(Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        let mut count = self.0.count.lock();
        *count -= 1;
        drop(count);
        self.0.idle.notify_all();
    }
}

/// A registered C handler.
pub(crate) struct CHandler {
    pub(crate) f: RawHandlerFnPtr,
    pub(crate) user_data: UserData,
    pub(crate) pattern: Arc<str>,
    pub(crate) activity: Arc<Activity>,
}

/// The handler pointer, checked non-NULL.
#[derive(Clone, Copy)]
pub(crate) struct RawHandlerFnPtr(RawHandlerFn);

impl RawHandlerFnPtr {
    /// From the typed pointer of the header (`None`: it was NULL).
    pub(crate) fn new(f: dreamos_handler_fn) -> Option<Self> {
        // SAFETY: same argument types; the return value is read as the u32
        // that a C enum is (see RawHandlerFn).
        f.map(|f| RawHandlerFnPtr(unsafe { std::mem::transmute::<TypedHandlerFn, RawHandlerFn>(f) }))
    }
}

impl Handler for CHandler {
    fn call(&self, msg: Message) -> BoxFuture<bridge_core::Result<Payload>> {
        let f = self.f;
        let user_data = self.user_data;
        let pattern = self.pattern.clone();
        let activity = self.activity.clone();
        // Counted from now, so a bridge freed while the handler waits for a
        // blocking thread still waits for it.
        let pending = activity.begin();
        Box::pin(async move {
            let json = CString::new(msg.to_json().to_string())
                .map_err(|_| BridgeError::internal("the message JSON contained a NUL byte"))?;
            // A C handler may block; on the blocking pool it never stalls the
            // engine's workers. If the caller's deadline passes first, the
            // engine answers TIMEOUT and this call's reply is freed unread.
            let run = move || {
                let _pending = pending;
                activity.running(|| call_c_handler(f, user_data, &json, &pattern))
            };
            match tokio::task::spawn_blocking(run).await {
                Ok(result) => result,
                Err(e) => Err(BridgeError::internal(format!("the C handler's thread failed: {e}"))),
            }
        })
    }

    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}

/// Call the C function and turn its status and reply into a result.
fn call_c_handler(f: RawHandlerFnPtr, user_data: UserData, json: &CStr, pattern: &str) -> bridge_core::Result<Payload> {
    let mut reply: *mut c_char = std::ptr::null_mut();
    // SAFETY: the function pointer was registered by C for exactly this call
    // signature; `json` lives across the call; `reply` is a valid out-pointer.
    let status = unsafe { (f.0)(user_data.ptr(), json.as_ptr(), &mut reply) };
    let text = if reply.is_null() {
        None
    } else {
        // SAFETY: the handler set a NUL-terminated string allocated with malloc.
        let owned = unsafe { CStr::from_ptr(reply) }.to_str().map(str::to_owned);
        // SAFETY: allocated with malloc by the handler, freed exactly once here.
        unsafe { free(reply.cast()) };
        Some(owned.map_err(|_| {
            BridgeError::handler(format!("the C handler for {pattern:?} returned a reply that is not valid UTF-8"))
        })?)
    };
    if status != dreamos_status::DREAMOS_OK as u32 {
        let name = crate::status::ALL
            .get(status as usize)
            .map_or_else(|| format!("status {status}"), |s| s.name().to_string_lossy().into_owned());
        return Err(BridgeError::handler(match text {
            Some(t) if !t.is_empty() => t,
            _ => format!("the C handler for {pattern:?} returned {name} without a message"),
        }));
    }
    match text {
        None => Ok(Payload::Json(serde_json::Value::Null)),
        Some(t) => serde_json::from_str(&t).map(Payload::Json).map_err(|e| {
            BridgeError::handler(format!(
                "the C handler for {pattern:?} returned a reply that is not valid JSON ({e}); return a JSON text"
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    unsafe extern "C" {
        fn malloc(size: usize) -> *mut c_void;
    }

    /// A malloc'd copy of `bytes` plus a NUL, as a C handler would return.
    fn c_string(bytes: &[u8]) -> *mut c_char {
        unsafe {
            let p = malloc(bytes.len() + 1).cast::<u8>();
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
            *p.add(bytes.len()) = 0;
            p.cast()
        }
    }

    /// A C handler returning an int outside the enum (defined with the
    /// integer return, as C code is, so that Rust never holds a bad enum).
    unsafe extern "C" fn returns_77(_: *mut c_void, _: *const c_char, _: *mut *mut c_char) -> u32 {
        77
    }

    unsafe extern "C" fn bad_utf8(_: *mut c_void, _: *const c_char, out: *mut *mut c_char) -> dreamos_status {
        unsafe { *out = c_string(b"\"\xff\"") };
        dreamos_status::DREAMOS_OK
    }

    unsafe extern "C" fn echo(_: *mut c_void, msg: *const c_char, out: *mut *mut c_char) -> dreamos_status {
        unsafe { *out = c_string(CStr::from_ptr(msg).to_bytes()) };
        dreamos_status::DREAMOS_OK
    }

    fn call(f: dreamos_handler_fn, json: &str) -> bridge_core::Result<Payload> {
        let f = RawHandlerFnPtr::new(f).unwrap();
        call_c_handler(f, UserData(std::ptr::null_mut()), &CString::new(json).unwrap(), "t.p")
    }

    #[test]
    fn an_unknown_status_is_a_handler_error() {
        // SAFETY: the same ABI; see RawHandlerFn.
        let f = unsafe { std::mem::transmute::<RawHandlerFn, TypedHandlerFn>(returns_77) };
        let e = call(Some(f), "{}").unwrap_err();
        assert_eq!(e.code(), bridge_core::ErrorCode::HandlerError);
        assert!(e.message().contains("status 77"), "{}", e.message());
    }

    #[test]
    fn a_reply_that_is_not_utf8_is_a_handler_error() {
        let e = call(Some(bad_utf8), "{}").unwrap_err();
        assert_eq!(e.code(), bridge_core::ErrorCode::HandlerError);
        assert!(e.message().contains("UTF-8"), "{}", e.message());
    }

    #[test]
    fn the_reply_is_parsed_as_json() {
        let reply = call(Some(echo), "{\"a\":[1,2]}").unwrap();
        assert_eq!(reply, Payload::Json(serde_json::json!({"a": [1, 2]})));
    }
}
