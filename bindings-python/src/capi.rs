//! C API functions newer than the stable ABI the wheel targets, found at run time.
//!
//! The wheel is abi3 for Python 3.9, whose limited API lacks two functions
//! that matter on the hot path: `PyIter_Send` (3.10), which steps a
//! coroutine without raising `StopIteration` when it returns, and
//! `PyUnicode_AsUTF8AndSize` (limited API since 3.10), which reads a `str`'s
//! UTF-8 (cached in the object) without allocating a copy. Both are looked up
//! once with `dlsym` in the running interpreter; on 3.9 the callers fall back
//! to the slower portable calls.

use std::borrow::Cow;
use std::os::raw::{c_char, c_int};
use std::sync::OnceLock;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyString;

type IterSend = unsafe extern "C" fn(*mut ffi::PyObject, *mut ffi::PyObject, *mut *mut ffi::PyObject) -> c_int;
type AsUtf8AndSize = unsafe extern "C" fn(*mut ffi::PyObject, *mut ffi::Py_ssize_t) -> *const c_char;

fn lookup(name: &std::ffi::CStr) -> *mut libc::c_void {
    // SAFETY: dlsym with a NUL-terminated name; RTLD_DEFAULT searches the
    // interpreter and the libraries it loaded.
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }
}

fn iter_send() -> Option<IterSend> {
    static F: OnceLock<Option<IterSend>> = OnceLock::new();
    *F.get_or_init(|| {
        let sym = lookup(c"PyIter_Send");
        // SAFETY: the symbol is CPython's PyIter_Send, with this signature.
        (!sym.is_null()).then(|| unsafe { std::mem::transmute::<*mut libc::c_void, IterSend>(sym) })
    })
}

fn as_utf8_and_size() -> Option<AsUtf8AndSize> {
    static F: OnceLock<Option<AsUtf8AndSize>> = OnceLock::new();
    *F.get_or_init(|| {
        let sym = lookup(c"PyUnicode_AsUTF8AndSize");
        // SAFETY: the symbol is CPython's PyUnicode_AsUTF8AndSize, with this signature.
        (!sym.is_null()).then(|| unsafe { std::mem::transmute::<*mut libc::c_void, AsUtf8AndSize>(sym) })
    })
}

/// Does this interpreter have `PyIter_Send` (3.10+), and so the `am_send` slot?
pub fn has_iter_send() -> bool {
    iter_send().is_some()
}

/// The result of stepping a coroutine once.
pub enum Step<'py> {
    /// It suspended, yielding this.
    Yielded(Bound<'py, PyAny>),
    /// It returned this.
    Returned(Bound<'py, PyAny>),
}

/// `coro.send(None)`, without a `StopIteration` when it returns.
pub fn send_none<'py>(coro: &Bound<'py, PyAny>) -> PyResult<Step<'py>> {
    let py = coro.py();
    if let Some(send) = iter_send() {
        let mut out: *mut ffi::PyObject = std::ptr::null_mut();
        // SAFETY: `coro` is alive and we hold the GIL. PyIter_Send returns
        // PYGEN_RETURN (0) or PYGEN_NEXT (1) with a new reference in `out`,
        // or PYGEN_ERROR (-1) with an exception set.
        let status = unsafe { send(coro.as_ptr(), ffi::Py_None(), &mut out) };
        return match status {
            0 => Ok(Step::Returned(unsafe { Bound::from_owned_ptr(py, out) })),
            1 => Ok(Step::Yielded(unsafe { Bound::from_owned_ptr(py, out) })),
            _ => Err(PyErr::fetch(py)),
        };
    }
    match coro.call_method1(pyo3::intern!(py, "send"), (py.None(),)) {
        Ok(y) => Ok(Step::Yielded(y)),
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyStopIteration>(py) => {
            Ok(Step::Returned(e.value(py).getattr(pyo3::intern!(py, "value"))?))
        }
        Err(e) => Err(e),
    }
}

/// A `str`'s text, borrowed from the object when the interpreter allows
/// (no copy); an error for text that is not valid UTF-8 (lone surrogates).
pub fn str_of<'a>(s: &'a Bound<'_, PyString>) -> PyResult<Cow<'a, str>> {
    if let Some(f) = as_utf8_and_size() {
        let mut len: ffi::Py_ssize_t = 0;
        // SAFETY: `s` is a live str and we hold the GIL. The returned buffer
        // belongs to the str object (immutable, cached in it) and lives as
        // long as it, which outlives the `'a` borrow of `s`.
        let ptr = unsafe { f(s.as_ptr(), &mut len) };
        if ptr.is_null() {
            return Err(PyErr::fetch(s.py()));
        }
        let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len as usize) };
        // CPython's UTF-8 is valid by construction; checking is cheap and
        // keeps this safe even if that ever changed.
        return std::str::from_utf8(bytes)
            .map(Cow::Borrowed)
            .map_err(|e| pyo3::exceptions::PyUnicodeError::new_err(format!("str is not valid UTF-8: {e}")));
    }
    s.to_cow()
}

/// The length in bytes of a `str`'s UTF-8, without copying it when the
/// interpreter allows (the UTF-8 is cached in the object); an error for text
/// that is not valid UTF-8 (lone surrogates).
pub fn utf8_len(s: &Bound<'_, PyString>) -> PyResult<usize> {
    if let Some(f) = as_utf8_and_size() {
        let mut len: ffi::Py_ssize_t = 0;
        // SAFETY: `s` is a live str and we hold the GIL; only the length is read.
        let ptr = unsafe { f(s.as_ptr(), &mut len) };
        if ptr.is_null() {
            return Err(PyErr::fetch(s.py()));
        }
        return Ok(len as usize);
    }
    Ok(s.to_cow()?.len())
}
