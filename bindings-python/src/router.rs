//! `BridgeBase`: the native base class of `dreamos_bridge.BridgeManager`, so
//! that `bridge.route(...)` is a native method call.
//!
//! `route` is the hot path: an agent awaiting a handler on its own loop
//! makes nothing but this call. A Python wrapper around the native method
//! cost a Python frame, a `threading.local` lookup and a second argument
//! parse per call (about a tenth of the call). Here the method is inherited
//! from a native base class, so the interpreter calls it as it calls a
//! built-in method (no bound-method object, arguments passed in place), and
//! everything the wrapper did is done natively:
//!
//! * the caller loop's [`Completer`], from a per-thread cache checked
//!   against the loop's `_thread_id` (as the package's `_completer()` does;
//!   asyncio's `get_running_loop()` would make a `getpid()` system call);
//!   a miss asks the package's `_completer()`, which creates and registers
//!   one;
//! * outside a running loop, the coroutine that makes the call when it runs
//!   (the package's `_route_later`);
//! * a handler on this loop that suspended ([`Direct`]): the task that runs
//!   the rest under the deadline (the package's `_suspended`).
//!
//! The other methods of `BridgeManager` are Python (they are not hot) and
//! reach the engine through `_n`, the native [`PyBridge`].

use std::cell::RefCell;
use std::sync::OnceLock;

use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};

use crate::bridge::{Direct, PyBridge};
use crate::completer::Completer;
use crate::errors::guard;
use crate::runtime::fork_generation;

/// The package's helpers for the cases `route` does not finish natively.
struct Helpers {
    /// `_completer()`: the running loop's completer, created if need be; None outside a loop.
    completer: Py<PyAny>,
    /// `_suspended(direct)`: a task running the rest of a suspended handler.
    suspended: Py<PyAny>,
    /// `_route_later(bridge, destination, payload, token, timeout, headers)`: a coroutine.
    later: Py<PyAny>,
}

static HELPERS: PyOnceLock<Helpers> = PyOnceLock::new();

/// Called once by the package at import.
#[pyfunction]
pub fn _register_route_helpers(py: Python<'_>, completer: Py<PyAny>, suspended: Py<PyAny>, later: Py<PyAny>) {
    let _ = HELPERS.set(py, Helpers { completer, suspended, later });
}

fn helpers(py: Python<'_>) -> PyResult<&Helpers> {
    HELPERS
        .get(py)
        .ok_or_else(|| pyo3::exceptions::PyRuntimeError::new_err("dreamos_bridge._native used without its package"))
}

/// The completer of the loop this thread used last. Only the completer is
/// kept (it holds its loop weakly): a strong reference to the loop here
/// would outlive the thread's interpreter state (Rust's thread-locals are
/// dropped after it, without the GIL) and keep the loop alive.
struct Last {
    generation: u64,
    completer: Py<Completer>,
}

thread_local! {
    static LAST: RefCell<Option<Last>> = const { RefCell::new(None) };
}

/// Is `c`'s loop alive and running on the thread `ident`? (asyncio's loops
/// set `_thread_id` while they run; one loop runs at a time per thread.)
fn runs_here(py: Python<'_>, c: &Completer, ident: u64) -> bool {
    let Ok(event_loop) = c.get_loop(py) else { return false };
    match event_loop.bind(py).getattr(pyo3::intern!(py, "_thread_id")) {
        Ok(t) => t.extract::<u64>().ok() == Some(ident),
        Err(_) => false,
    }
}

/// The running loop's completer, or None outside a running loop.
fn running_completer(py: Python<'_>) -> PyResult<Option<Py<Completer>>> {
    // SAFETY: no precondition; the same value as threading.get_ident().
    let ident = unsafe { ffi::PyThread_get_thread_ident() } as u64;
    // The reference is taken out before any Python code runs, which could
    // come back here.
    let last = LAST
        .with_borrow(|l| l.as_ref().filter(|l| l.generation == fork_generation()).map(|l| l.completer.clone_ref(py)));
    if let Some(completer) = last
        && runs_here(py, completer.get(), ident)
    {
        return Ok(Some(completer));
    }
    let c = helpers(py)?.completer.bind(py).call0()?;
    if c.is_none() {
        return Ok(None);
    }
    let completer = c.cast_into::<Completer>()?.unbind();
    if runs_here(py, completer.get(), ident) {
        let new = Last { generation: fork_generation(), completer: completer.clone_ref(py) };
        // The old entry is dropped after the borrow ends (dropping may run Python code).
        let old = LAST.replace(Some(new));
        drop(old);
    }
    Ok(Some(completer))
}

/// The native part of `BridgeManager`: the engine and `route`.
///
/// The engine is installed by `__init__` (`_init_native`), not `__new__`,
/// so that a subclass's `__init__` may take other arguments than the
/// configuration, as it could when `BridgeManager` was a plain Python class.
#[pyclass(module = "dreamos_bridge._native", frozen, subclass, weakref)]
pub struct BridgeBase {
    inner: OnceLock<Py<PyBridge>>,
}

impl BridgeBase {
    fn engine(&self) -> PyResult<&Py<PyBridge>> {
        self.inner.get().ok_or_else(|| {
            PyRuntimeError::new_err(
                "this BridgeManager has no engine: a subclass's __init__ must call super().__init__(config)",
            )
        })
    }
}

#[pymethods]
impl BridgeBase {
    /// Any arguments (they are `__init__`'s); the engine comes with `__init__`.
    #[new]
    #[pyo3(signature = (*args, **kwargs))]
    fn new(args: &Bound<'_, PyTuple>, kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        let _ = (args, kwargs);
        BridgeBase { inner: OnceLock::new() }
    }

    /// Build the engine from `config` (the YAML structure as a mapping;
    /// None: embedded defaults), or install `engine` (built already by
    /// `from_yaml`, `from_file`). Once per object.
    #[pyo3(signature = (config = None, engine = None))]
    fn _init_native(
        &self,
        py: Python<'_>,
        config: Option<&Bound<'_, PyAny>>,
        engine: Option<Py<PyBridge>>,
    ) -> PyResult<()> {
        if self.inner.get().is_some() {
            return Err(PyRuntimeError::new_err("this BridgeManager has its engine already; create a new one"));
        }
        let engine = match engine {
            Some(e) => e,
            None => {
                let config = match config.filter(|c| !c.is_none()) {
                    Some(c) if !c.is_instance_of::<PyDict>() => Some(py.get_type::<PyDict>().call1((c,))?),
                    other => other.cloned(),
                };
                Py::new(py, PyBridge::new(py, config.as_ref())?)?
            }
        };
        self.inner
            .set(engine)
            .map_err(|_| PyRuntimeError::new_err("this BridgeManager has its engine already; create a new one"))
    }

    /// The native engine (`dreamos_bridge._native.Bridge`).
    #[getter]
    fn _n(&self, py: Python<'_>) -> PyResult<Py<PyBridge>> {
        Ok(self.engine()?.clone_ref(py))
    }

    /// Send a request; await the result for the reply. Cancelling the awaiting task cancels the call.
    ///
    /// Inside a running loop the call starts at once and what comes back is
    /// a future (``asyncio.isfuture``; also usable as a coroutine, e.g. with
    /// ``asyncio.create_task``): a native finished one when the reply came
    /// without waiting, e.g. from a handler on this loop or a Rust handler,
    /// else an ``asyncio.Future``.
    /// Outside a running loop it returns a coroutine that makes the call
    /// when it runs.
    #[pyo3(signature = (destination, payload = None, *, token = None, timeout = None, headers = None))]
    fn route(
        slf: &Bound<'_, Self>,
        destination: &Bound<'_, PyAny>,
        payload: Option<&Bound<'_, PyAny>>,
        token: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        headers: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let Some(completer) = guard(py, || running_completer(py))? else {
            let none = py.None();
            let args = PyTuple::new(
                py,
                [
                    slf.as_any(),
                    destination,
                    payload.unwrap_or(none.bind(py)),
                    token.unwrap_or(none.bind(py)),
                    timeout.unwrap_or(none.bind(py)),
                    headers.unwrap_or(none.bind(py)),
                ],
            )?;
            return helpers(py)?.later.bind(py).call1(args).map(Bound::unbind);
        };
        let none;
        let payload = match payload {
            Some(p) => p,
            None => {
                none = py.None().into_bound(py);
                &none
            }
        };
        let r =
            slf.get().engine()?.get().route_on(py, completer.get(), destination, payload, token, timeout, headers)?;
        if r.bind(py).is_instance_of::<Direct>() {
            return helpers(py)?.suspended.bind(py).call1((r,)).map(Bound::unbind);
        }
        Ok(r)
    }
}
