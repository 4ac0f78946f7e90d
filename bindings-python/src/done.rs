//! `Done`: what `route` returns when the answer is already there.
//!
//! Most calls answer on the caller's thread (a Python handler on this loop,
//! a synchronous Rust handler, every refusal), so the object `route` hands
//! back is usually complete at birth. An `asyncio.Future` costs about 3,000
//! instructions to create, complete and await (`Future.__init__` calls
//! `loop.get_debug()` in Python; the package's subclass goes through the
//! generic type call); the caller's own `await` of a coroutine costs about
//! 1,000. `Done` is a small native object that carries the result (or the
//! exception) and speaks both protocols asyncio uses:
//!
//! * `await done` returns at once. The interpreter steps an awaitable
//!   through `PyIter_Send`, which uses the type's `am_send` slot when it has
//!   one: no `StopIteration` is raised for the value. pyo3 cannot declare
//!   that slot, so [`install_am_send`] writes it into the type object after
//!   pyo3 built it, once it has checked the layout (see there); without it
//!   `__next__` raises `StopIteration(value)`, which is correct, just slower.
//! * It is a future as far as asyncio's duck typing goes
//!   (`asyncio.isfuture`: the class has `_asyncio_future_blocking`; `done`,
//!   `result`, `exception`, `cancelled`, `cancel`, `get_loop`,
//!   `add_done_callback`, `remove_done_callback`), so `asyncio.gather`,
//!   `ensure_future`, `wait_for`, `shield` and `run_until_complete` take it
//!   as it is, as they take a done `asyncio.Future`, without a task.
//! * It is a coroutine (`send`, `throw`, `close`, `__await__`; the package
//!   registers the class as a `collections.abc.Coroutine`), so
//!   `asyncio.create_task` and `asyncio.run` accept it as they accepted the
//!   coroutine `route` once was.
//!
//! A pending call still gets a real `asyncio.Future` (the package's
//! `_Reply`): only something that waits needs the machinery.

use std::os::raw::c_int;

use pyo3::exceptions::{PyException, PyStopIteration};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple, PyType};

/// An already-completed call: its value or its exception.
#[pyclass(module = "dreamos_bridge._native", frozen)]
pub struct Done {
    /// The value, or the exception instance when `failed`.
    value: Py<PyAny>,
    failed: bool,
    /// A weak reference to the event loop (the completer's), for `get_loop`.
    loop_ref: Py<PyAny>,
}

impl Done {
    /// `r` as a `Done` on the loop behind `loop_ref` (a weakref). A
    /// `BaseException` that is not an `Exception` (KeyboardInterrupt, a
    /// cancellation) is raised at once, as before.
    pub fn new_object(py: Python<'_>, loop_ref: &Py<PyAny>, r: PyResult<Py<PyAny>>) -> PyResult<Py<PyAny>> {
        let (value, failed) = match r {
            Ok(v) => (v, false),
            Err(e) if e.is_instance_of::<PyException>(py) => (e.into_value(py).into_any(), true),
            Err(e) => return Err(e),
        };
        Ok(Py::new(py, Done { value, failed, loop_ref: loop_ref.clone_ref(py) })?.into_any())
    }

    /// The outcome as a Rust result (the exception raised again when it failed).
    fn outcome(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if self.failed { Err(PyErr::from_value(self.value.bind(py).clone())) } else { Ok(self.value.clone_ref(py)) }
    }

    fn event_loop<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let l = self.loop_ref.bind(py).call0()?;
        if l.is_none() {
            return Err(pyo3::exceptions::PyRuntimeError::new_err("the event loop of this result is gone"));
        }
        Ok(l)
    }
}

#[pymethods]
impl Done {
    /// asyncio's marker of a future (`asyncio.isfuture`); never blocking.
    #[classattr]
    fn _asyncio_future_blocking() -> bool {
        false
    }

    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Without `am_send` (or through `yield from`): finish with the outcome.
    fn __next__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Err(stop(py, self.outcome(py)?))
    }

    /// The coroutine protocol (a task driving it, `asyncio.run`).
    fn send(&self, py: Python<'_>, _value: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        Err(stop(py, self.outcome(py)?))
    }

    /// Thrown into a coroutine that already finished: raised as it is.
    #[pyo3(signature = (typ, val = None, tb = None))]
    fn throw(
        &self,
        py: Python<'_>,
        typ: &Bound<'_, PyAny>,
        val: Option<&Bound<'_, PyAny>>,
        tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let _ = tb;
        let exc = match val.filter(|v| !v.is_none()) {
            Some(v) => v.clone(),
            None if typ.is_instance_of::<PyType>() => typ.call0()?,
            None => typ.clone(),
        };
        let _ = py;
        Err(PyErr::from_value(exc))
    }

    fn close(&self) {}

    fn done(&self) -> bool {
        true
    }

    fn cancelled(&self) -> bool {
        false
    }

    /// A finished future cannot be cancelled.
    #[pyo3(signature = (msg = None))]
    fn cancel(&self, msg: Option<&Bound<'_, PyAny>>) -> bool {
        let _ = msg;
        false
    }

    fn result(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.outcome(py)
    }

    fn exception(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.failed.then(|| self.value.clone_ref(py))
    }

    fn get_loop<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.event_loop(py)
    }

    /// As on a done `asyncio.Future`: `fn(self)` is scheduled with `call_soon`.
    #[pyo3(signature = (r#fn, *, context = None))]
    fn add_done_callback(
        slf: &Bound<'_, Self>,
        r#fn: &Bound<'_, PyAny>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let l = slf.get().event_loop(py)?;
        let args = PyTuple::new(py, [r#fn.as_any(), slf.as_any()])?;
        let kwargs = match context.filter(|c| !c.is_none()) {
            Some(c) => {
                let d = PyDict::new(py);
                d.set_item(pyo3::intern!(py, "context"), c)?;
                Some(d)
            }
            None => None,
        };
        l.call_method(pyo3::intern!(py, "call_soon"), args, kwargs.as_ref())?;
        Ok(())
    }

    /// Callbacks of a done future were already scheduled: nothing to remove.
    fn remove_done_callback(&self, r#fn: &Bound<'_, PyAny>) -> usize {
        let _ = r#fn;
        0
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let what = if self.failed { "exception" } else { "result" };
        Ok(format!("<Done {what}={}>", self.value.bind(py).repr()?))
    }
}

/// `StopIteration(value)`, built so that a tuple value is not unpacked.
fn stop(py: Python<'_>, value: Py<PyAny>) -> PyErr {
    match PyTuple::new(py, [value]) {
        Ok(args) => PyStopIteration::new_err(args.unbind()),
        Err(e) => e,
    }
}

/// `am_send` of `Done`: the outcome, with no `StopIteration`.
unsafe extern "C" fn done_send(
    slf: *mut ffi::PyObject,
    _arg: *mut ffi::PyObject,
    result: *mut *mut ffi::PyObject,
) -> c_int {
    // SAFETY (whole body): called by the interpreter with the GIL held, on a
    // live `Done` (the slot is only installed on that type).
    unsafe {
        let py = Python::assume_attached();
        let obj = Bound::from_borrowed_ptr(py, slf);
        let Ok(done) = obj.cast::<Done>() else {
            ffi::PyErr_SetString(ffi::PyExc_TypeError, c"am_send on an object that is not a Done".as_ptr());
            *result = std::ptr::null_mut();
            return -1;
        };
        let d = done.get();
        if d.failed {
            PyErr::from_value(d.value.bind(py).clone()).restore(py);
            *result = std::ptr::null_mut();
            -1
        } else {
            *result = d.value.clone_ref(py).into_ptr();
            0 // PYGEN_RETURN
        }
    }
}

/// Give `Done` its `am_send` slot if this interpreter has the slot (3.10+)
/// and the type object has the expected layout. Returns whether it did.
///
/// The limited API offers no way to set a slot after creation, so this
/// writes the field itself, after three checks that make a wrong layout
/// harmless: the type is a heap type (pyo3's are), the pointer read as
/// `tp_as_async` points inside the type object's own allocation (a heap
/// type embeds its `PyAsyncMethods`), and that struct's `am_await` is the
/// function `PyType_GetSlot` reports. Only then is `am_send` written.
pub fn install_am_send(py: Python<'_>) -> PyResult<bool> {
    if !crate::capi::has_iter_send() {
        return Ok(false); // Python 3.9: no am_send slot, no PyIter_Send
    }
    let tp = py.get_type::<Done>();
    let type_size: usize = tp.get_type().getattr("__basicsize__")?.extract()?;
    let tp_ptr = tp.as_ptr() as *mut ffi::PyTypeObject;
    // SAFETY: `tp_ptr` is a live type object; only reads within its
    // allocation are made before the checks pass, and one write after.
    unsafe {
        if ffi::PyType_GetFlags(tp_ptr) & ffi::Py_TPFLAGS_HEAPTYPE == 0 {
            return Ok(false);
        }
        let await_slot = ffi::PyType_GetSlot(tp_ptr, ffi::Py_am_await);
        if await_slot.is_null() {
            return Ok(false);
        }
        let base = tp_ptr as *mut u8;
        // PyObject_VAR_HEAD, tp_name, tp_basicsize, tp_itemsize, tp_dealloc,
        // tp_vectorcall_offset, tp_getattr, tp_setattr: ten pointer-sized
        // fields before tp_as_async (unchanged since Python 3.5).
        let field = base.add(10 * std::mem::size_of::<usize>()) as *const *mut AsyncMethods;
        let as_async = *field;
        let inside = (as_async as usize) >= (base as usize)
            && (as_async as usize) + std::mem::size_of::<AsyncMethods>() <= (base as usize) + type_size;
        if !inside || (*as_async).am_await != await_slot {
            return Ok(false);
        }
        (*as_async).am_send = done_send as *mut std::ffi::c_void;
    }
    Ok(true)
}

/// CPython's `PyAsyncMethods` (3.10+).
#[repr(C)]
struct AsyncMethods {
    am_await: *mut std::ffi::c_void,
    am_aiter: *mut std::ffi::c_void,
    am_anext: *mut std::ffi::c_void,
    am_send: *mut std::ffi::c_void,
}
