//! Text, paths and credentials passed by the caller, read with the bridge's typed errors.
//!
//! A Python `str` may hold lone surrogates (`"a\ud800"`, or bytes a file
//! name had on disk, decoded with `surrogateescape`), which UTF-8 cannot
//! carry. pyo3's own `&str` extraction then raises a bare
//! `UnicodeEncodeError` that names nothing; every text argument of the
//! binding is read here instead, so the caller gets the exception class
//! the argument's other errors have (an invalid pattern and an unencodable
//! pattern are both `InvalidMessageError`), saying which argument it was.

use std::borrow::Cow;
use std::path::PathBuf;

use dreamos_bridge::{BridgeError, Credentials, ErrorCode};
use pyo3::exceptions::PyUnicodeError;
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::capi::str_of;
use crate::convert::{Subject, py_to_value};
use crate::errors::to_pyerr;

/// The text of the argument `name`; `code` is the error for one with lone surrogates.
pub fn text_arg<'a>(py: Python<'_>, s: &'a Bound<'_, PyString>, name: &str, code: ErrorCode) -> PyResult<Cow<'a, str>> {
    str_of(s).map_err(|_| {
        to_pyerr(py, &BridgeError::new(code, format!("{name} is not valid UTF-8 (it has lone surrogates)")))
    })
}

/// The file path argument `name` (`str`, `bytes` or `os.PathLike`), as
/// `open()` takes it: a name that was not UTF-8 on disk (surrogate-escaped)
/// names that file. Only text that no file-system encoding can carry is a
/// `CONFIG` error; a value that is no path at all keeps Python's `TypeError`.
pub fn config_path_arg(py: Python<'_>, path: &Bound<'_, PyAny>, name: &str) -> PyResult<PathBuf> {
    path.extract::<PathBuf>().map_err(|e| {
        if e.is_instance_of::<PyUnicodeError>(py) {
            let msg = format!("{name} cannot be encoded for the file system (it has lone surrogates)");
            to_pyerr(py, &BridgeError::new(ErrorCode::Config, msg))
        } else {
            e
        }
    })
}

/// `{"api_key": ...}` or `{"token": ...}`. Errors are `UNAUTHENTICATED` and
/// never quote the values (they are secrets).
pub fn credentials_arg(py: Python<'_>, credentials: &Bound<'_, PyAny>) -> PyResult<Credentials> {
    let v = py_to_value(credentials, Subject::Credentials, 1, 8)
        .map_err(|e| to_pyerr(py, &BridgeError::unauthenticated(e.message())))?;
    Credentials::from_json(&v).map_err(|e| to_pyerr(py, &e))
}
