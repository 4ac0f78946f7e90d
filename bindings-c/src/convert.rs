//! Arguments in, results out: C strings to Rust values and back.
//!
//! Every rule of the C API about pointers lives here: required pointers are
//! checked for NULL, text must be UTF-8, structured values are JSON, and
//! every string handed to C is a `CString` released with
//! `dreamos_string_free`.

use std::ffi::{CStr, CString, c_char};

use crate::status::{FfiError, FfiResult, dreamos_status};

/// A required string argument, borrowed for the duration of the call.
/// NULL is `DREAMOS_NULL_PARAMETER`; invalid UTF-8 is `invalid` (the status
/// that fits the argument: `DREAMOS_CONFIG` for configuration text,
/// `DREAMOS_INVALID_MESSAGE` for message parts).
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that outlives the call.
pub(crate) unsafe fn str_arg<'a>(ptr: *const c_char, name: &str, invalid: dreamos_status) -> FfiResult<&'a str> {
    if ptr.is_null() {
        return Err(FfiError::null(name));
    }
    // SAFETY: non-NULL, and the caller promises a NUL-terminated string.
    let bytes = unsafe { CStr::from_ptr(ptr) };
    bytes.to_str().map_err(|e| {
        FfiError::new(
            invalid,
            format!("`{name}` is not valid UTF-8 (bad byte at offset {}); pass UTF-8 text", e.valid_up_to()),
        )
    })
}

/// An optional string argument: NULL is `None`.
///
/// # Safety
/// As [`str_arg`].
pub(crate) unsafe fn opt_str_arg<'a>(
    ptr: *const c_char,
    name: &str,
    invalid: dreamos_status,
) -> FfiResult<Option<&'a str>> {
    if ptr.is_null() { Ok(None) } else { unsafe { str_arg(ptr, name, invalid) }.map(Some) }
}

/// A required JSON argument, parsed.
///
/// # Safety
/// As [`str_arg`].
pub(crate) unsafe fn json_arg(ptr: *const c_char, name: &str) -> FfiResult<serde_json::Value> {
    let text = unsafe { str_arg(ptr, name, dreamos_status::DREAMOS_INVALID_MESSAGE) }?;
    serde_json::from_str(text).map_err(|e| {
        FfiError::new(
            dreamos_status::DREAMOS_INVALID_MESSAGE,
            format!("`{name}` is not valid JSON ({e}); pass a JSON text such as {{\"key\": 1}} or null"),
        )
    })
}

/// Check that a required out-pointer is not NULL before any work is done.
pub(crate) fn out_arg<T>(ptr: *mut T, name: &str) -> FfiResult<*mut T> {
    if ptr.is_null() { Err(FfiError::null(name)) } else { Ok(ptr) }
}

/// A Rust string as a C string the caller owns (freed with
/// `dreamos_string_free`).
pub(crate) fn to_c_string(text: String) -> FfiResult<CString> {
    CString::new(text).map_err(|_| {
        FfiError::new(dreamos_status::DREAMOS_INTERNAL, "a result contained a NUL byte and cannot be a C string")
    })
}

/// Write a string result through a checked out-pointer, handing ownership to C.
///
/// # Safety
/// `out` was checked by [`out_arg`] and points to writable memory.
pub(crate) unsafe fn write_string(out: *mut *mut c_char, value: CString) {
    // SAFETY: checked non-NULL; the caller promises it is writable.
    unsafe { *out = value.into_raw() };
}
