//! The status every fallible call returns, the thread's last error message,
//! and the panic boundary that wraps every entry point.
//!
//! These three live together because they are one mechanism: an entry point
//! runs its body inside [`guard`], which turns a `Result` (or a panic) into a
//! `dreamos_status` and records the message C reads back with
//! `dreamos_last_error_message()`.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use bridge_core::{BridgeError, ErrorCode};

/// The result of every fallible call: `DREAMOS_OK`, or why it failed.
///
/// One value per error code of the engine (the same codes Python and Node
/// show as strings), plus `DREAMOS_NULL_PARAMETER` (a required pointer was
/// NULL) and `DREAMOS_PANIC` (a bug inside the library was caught at the
/// boundary). The numbers are stable. After a failure,
/// `dreamos_last_error_message()` says what was wrong and what to do.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum dreamos_status {
    /// Success.
    DREAMOS_OK = 0,
    /// The configuration is invalid; the message names the key path.
    DREAMOS_CONFIG = 1,
    /// Bad destination or pattern, malformed JSON, invalid UTF-8, oversize or too-deep payload.
    DREAMOS_INVALID_MESSAGE = 2,
    /// Bad credentials; token missing, malformed, expired or revoked.
    DREAMOS_UNAUTHENTICATED = 3,
    /// Authenticated, but not allowed this action on this destination.
    DREAMOS_FORBIDDEN = 4,
    /// No route matches the destination.
    DREAMOS_ROUTE_NOT_FOUND = 5,
    /// A rate limit was hit; the message says when to retry.
    DREAMOS_RATE_LIMITED = 6,
    /// Backpressure: the route's queue had no room within the deadline.
    DREAMOS_QUEUE_FULL = 7,
    /// The deadline passed.
    DREAMOS_TIMEOUT = 8,
    /// Connecting to a service failed after retries, its circuit is open, or it is down.
    DREAMOS_SERVICE_UNAVAILABLE = 9,
    /// A service answered with an error status.
    DREAMOS_UPSTREAM_ERROR = 10,
    /// An in-process handler failed (a C handler returned a status other than `DREAMOS_OK`).
    DREAMOS_HANDLER_ERROR = 11,
    /// The bridge is not running (not initialized yet, or shut down).
    DREAMOS_SHUTDOWN = 12,
    /// A bug in the bridge.
    DREAMOS_INTERNAL = 13,
    /// A pointer parameter that must not be NULL was NULL.
    DREAMOS_NULL_PARAMETER = 14,
    /// A panic inside the library was caught at the boundary (a bug); the call did nothing.
    DREAMOS_PANIC = 15,
}

use dreamos_status::*;

/// Every status, indexed by its value.
pub(crate) const ALL: [dreamos_status; 16] = [
    DREAMOS_OK,
    DREAMOS_CONFIG,
    DREAMOS_INVALID_MESSAGE,
    DREAMOS_UNAUTHENTICATED,
    DREAMOS_FORBIDDEN,
    DREAMOS_ROUTE_NOT_FOUND,
    DREAMOS_RATE_LIMITED,
    DREAMOS_QUEUE_FULL,
    DREAMOS_TIMEOUT,
    DREAMOS_SERVICE_UNAVAILABLE,
    DREAMOS_UPSTREAM_ERROR,
    DREAMOS_HANDLER_ERROR,
    DREAMOS_SHUTDOWN,
    DREAMOS_INTERNAL,
    DREAMOS_NULL_PARAMETER,
    DREAMOS_PANIC,
];

impl dreamos_status {
    /// The status for an engine error code.
    pub(crate) fn from_code(code: ErrorCode) -> Self {
        match code {
            ErrorCode::Config => DREAMOS_CONFIG,
            ErrorCode::InvalidMessage => DREAMOS_INVALID_MESSAGE,
            ErrorCode::Unauthenticated => DREAMOS_UNAUTHENTICATED,
            ErrorCode::Forbidden => DREAMOS_FORBIDDEN,
            ErrorCode::RouteNotFound => DREAMOS_ROUTE_NOT_FOUND,
            ErrorCode::RateLimited => DREAMOS_RATE_LIMITED,
            ErrorCode::QueueFull => DREAMOS_QUEUE_FULL,
            ErrorCode::Timeout => DREAMOS_TIMEOUT,
            ErrorCode::ServiceUnavailable => DREAMOS_SERVICE_UNAVAILABLE,
            ErrorCode::UpstreamError => DREAMOS_UPSTREAM_ERROR,
            ErrorCode::HandlerError => DREAMOS_HANDLER_ERROR,
            ErrorCode::Shutdown => DREAMOS_SHUTDOWN,
            ErrorCode::Internal => DREAMOS_INTERNAL,
        }
    }

    /// The status's name without the prefix, as a NUL-terminated static
    /// string (`"RATE_LIMITED"`): the engine's code strings, shared with
    /// Python and Node.
    pub(crate) fn name(self) -> &'static CStr {
        match self {
            DREAMOS_OK => c"OK",
            DREAMOS_CONFIG => c"CONFIG",
            DREAMOS_INVALID_MESSAGE => c"INVALID_MESSAGE",
            DREAMOS_UNAUTHENTICATED => c"UNAUTHENTICATED",
            DREAMOS_FORBIDDEN => c"FORBIDDEN",
            DREAMOS_ROUTE_NOT_FOUND => c"ROUTE_NOT_FOUND",
            DREAMOS_RATE_LIMITED => c"RATE_LIMITED",
            DREAMOS_QUEUE_FULL => c"QUEUE_FULL",
            DREAMOS_TIMEOUT => c"TIMEOUT",
            DREAMOS_SERVICE_UNAVAILABLE => c"SERVICE_UNAVAILABLE",
            DREAMOS_UPSTREAM_ERROR => c"UPSTREAM_ERROR",
            DREAMOS_HANDLER_ERROR => c"HANDLER_ERROR",
            DREAMOS_SHUTDOWN => c"SHUTDOWN",
            DREAMOS_INTERNAL => c"INTERNAL",
            DREAMOS_NULL_PARAMETER => c"NULL_PARAMETER",
            DREAMOS_PANIC => c"PANIC",
        }
    }
}

/// A failed call: the status to return and the message to record.
#[derive(Debug)]
pub(crate) struct FfiError {
    pub(crate) status: dreamos_status,
    pub(crate) message: String,
}

impl FfiError {
    pub(crate) fn new(status: dreamos_status, message: impl Into<String>) -> Self {
        FfiError { status, message: message.into() }
    }

    /// A required pointer was NULL; `name` is the parameter's name in the header.
    pub(crate) fn null(name: &str) -> Self {
        FfiError::new(DREAMOS_NULL_PARAMETER, format!("`{name}` must not be NULL"))
    }
}

impl From<BridgeError> for FfiError {
    fn from(e: BridgeError) -> Self {
        FfiError { status: dreamos_status::from_code(e.code()), message: e.message().to_string() }
    }
}

pub(crate) type FfiResult<T = ()> = Result<T, FfiError>;

thread_local! {
    /// The calling thread's last error, owned here so that C can read it
    /// without freeing anything.
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// Record `message` as this thread's last error.
pub(crate) fn set_last_error(message: &str) {
    // A message built from C strings has no NUL; one from elsewhere might.
    let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = Some(text));
}

fn clear_last_error() {
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = None);
}

/// The thread's last error (an empty string when the last call succeeded).
/// The pointer stays valid until the thread's next fallible call.
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR.try_with(|slot| slot.borrow().as_ref().map(|s| s.as_ptr())).ok().flatten().unwrap_or(c"".as_ptr())
}

/// The panic boundary of every fallible entry point: runs `body`, records the
/// outcome in the thread's last error, and returns the status. A panic
/// becomes `DREAMOS_PANIC`; nothing unwinds into C.
pub(crate) fn guard(body: impl FnOnce() -> FfiResult) -> dreamos_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            clear_last_error();
            DREAMOS_OK
        }
        Ok(Err(e)) => {
            set_last_error(&e.message);
            e.status
        }
        Err(panic) => {
            set_last_error(&format!(
                "a panic inside dreamos-bridge was caught at the C boundary ({}); this is a bug, please report it",
                panic_text(&*panic)
            ));
            DREAMOS_PANIC
        }
    }
}

/// The boundary for entry points that return nothing (`*_free`): a panic is
/// swallowed (and recorded) rather than unwound into C.
pub(crate) fn guard_void(body: impl FnOnce()) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(body)) {
        set_last_error(&format!(
            "a panic inside dreamos-bridge was caught at the C boundary ({})",
            panic_text(&*panic)
        ));
    }
}

/// The text of a panic payload.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "no message".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_engine_code_has_a_status_with_the_same_name() {
        for code in ErrorCode::ALL {
            let status = dreamos_status::from_code(code);
            assert_eq!(status.name().to_str().unwrap(), code.as_str());
            assert_ne!(status, DREAMOS_OK);
        }
    }

    #[test]
    fn statuses_are_numbered_in_order() {
        for (i, s) in ALL.iter().enumerate() {
            assert_eq!(*s as usize, i);
        }
    }

    #[test]
    fn guard_turns_a_panic_into_a_status() {
        let status = guard(|| panic!("boom"));
        assert_eq!(status, DREAMOS_PANIC);
        let msg = unsafe { CStr::from_ptr(last_error_ptr()) }.to_str().unwrap().to_string();
        assert!(msg.contains("boom"), "{msg}");
        assert_eq!(guard(|| Ok(())), DREAMOS_OK);
        assert_eq!(unsafe { CStr::from_ptr(last_error_ptr()) }.to_bytes(), b"");
    }
}
