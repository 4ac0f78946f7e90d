//! Engine errors → the Python exception classes of DESIGN.md section 5.
//!
//! The classes are defined in pure Python (`dreamos_bridge/_errors.py`), where
//! multiple inheritance (`BridgeTimeoutError` is also a `TimeoutError`) is
//! natural; the package hands them to [`register_errors`] at import. Raising
//! sets `.code`, `.retry_after` (seconds), `.status` and `.body`.

use dreamos_bridge::{BridgeError, ErrorCode};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};

static CLASSES: PyOnceLock<Vec<Py<PyType>>> = PyOnceLock::new();

/// Called once by `dreamos_bridge/__init__.py` with `{code: class}`.
#[pyfunction]
pub fn _register_errors(py: Python<'_>, classes: &Bound<'_, PyDict>) -> PyResult<()> {
    let mut out = Vec::with_capacity(ErrorCode::ALL.len());
    for code in ErrorCode::ALL {
        let cls = classes
            .get_item(code.as_str())?
            .ok_or_else(|| PyRuntimeError::new_err(format!("no exception class for {code}")))?;
        out.push(cls.cast_into::<PyType>()?.unbind());
    }
    // A second registration (module reloaded) keeps the first classes.
    let _ = CLASSES.set(py, out);
    Ok(())
}

/// The exception for an engine error.
pub fn to_pyerr(py: Python<'_>, e: &BridgeError) -> PyErr {
    match build(py, e) {
        Ok(err) => err,
        Err(err) => err,
    }
}

fn build(py: Python<'_>, e: &BridgeError) -> PyResult<PyErr> {
    let Some(classes) = CLASSES.get(py) else {
        // Only when `_native` is imported without its package.
        return Ok(PyRuntimeError::new_err(e.to_string()));
    };
    let idx = ErrorCode::ALL.iter().position(|c| *c == e.code()).unwrap_or(ErrorCode::ALL.len() - 1);
    let exc = classes[idx].bind(py).call1((e.message(),))?;
    if let Some(r) = e.retry_after() {
        exc.setattr(pyo3::intern!(py, "retry_after"), r.as_secs_f64())?;
    }
    if let Some(s) = e.status() {
        exc.setattr(pyo3::intern!(py, "status"), s)?;
    }
    if let Some(b) = e.body() {
        exc.setattr(pyo3::intern!(py, "body"), b)?;
    }
    Ok(PyErr::from_value(exc))
}

/// `HANDLER_ERROR` from a Python exception: `"ValueError: boom"`.
pub fn handler_error(py: Python<'_>, exc: &Bound<'_, PyAny>) -> BridgeError {
    let _ = py;
    let name = exc.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "Exception".into());
    let text = exc.str().map(|s| s.to_string()).unwrap_or_default();
    if text.is_empty() {
        BridgeError::handler(format!("the handler raised {name}"))
    } else {
        BridgeError::handler(format!("the handler raised {name}: {text}"))
    }
}

/// Run `f`, turning a Rust panic into `INTERNAL` instead of a
/// `PanicException` (which is a `BaseException` and escapes `except Exception`).
pub fn guard<T>(py: Python<'_>, f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(to_pyerr(py, &BridgeError::internal(format!("bug in dreamos_bridge (please report it): {what}"))))
        }
    }
}
