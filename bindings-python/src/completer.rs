//! Batched completion of asyncio futures from tokio threads.
//!
//! Waking an event loop from another thread costs 20-60 us on this machine;
//! `call_soon_threadsafe` per future pays that for every call. Instead each
//! event loop gets one [`Completer`]: a socket pair whose read end is
//! registered with `loop.add_reader`, and a queue. A tokio task that finishes
//! pushes `(future, result)`; only the push that finds the queue empty
//! writes a wake byte. The loop's reader callback ([`Completer::_drain`])
//! then resolves every queued future in one go, so under load one wake-up
//! serves many results.
//!
//! The pending futures are instances of the package's `_Reply`, an
//! `asyncio.Future` subclass that is also accepted where a coroutine is
//! expected (see `dreamos_bridge/__init__.py`). A pending one carries an
//! [`Abort`] in its `_abort` slot: cancelling the future drops the engine
//! work. An answer that is already there goes back as a [`Done`] ([`ready`]).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use dreamos_bridge::BridgeError;
use parking_lot::Mutex;
use pyo3::prelude::*;

use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::done::Done;
use crate::errors::to_pyerr;
use crate::runtime::fork_generation;

/// `dreamos_bridge._Reply`, `types.CoroutineType` and `inspect.isawaitable`,
/// registered at import.
struct Types {
    reply: Py<PyAny>,
    coroutine: Py<PyAny>,
    isawaitable: Py<PyAny>,
}

static TYPES: PyOnceLock<Types> = PyOnceLock::new();

/// Called once by the package with its future class, `types.CoroutineType`
/// and `inspect.isawaitable`.
#[pyfunction]
pub fn _register_future_types(py: Python<'_>, reply: Py<PyAny>, coroutine: Py<PyAny>, isawaitable: Py<PyAny>) {
    let _ = TYPES.set(py, Types { reply, coroutine, isawaitable });
}

fn types(py: Python<'_>) -> PyResult<&Types> {
    TYPES
        .get(py)
        .ok_or_else(|| pyo3::exceptions::PyRuntimeError::new_err("dreamos_bridge._native used without its package"))
}

/// Is `obj` a native coroutine (what `async def` returns)?
pub fn is_coroutine(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(obj.get_type().is(types(obj.py())?.coroutine.bind(obj.py())))
}

/// Is a handler's return value something to await? JSON-shaped values are
/// answered without asking Python.
pub fn is_awaitable(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    if obj.is_none()
        || obj.is_exact_instance_of::<PyDict>()
        || obj.is_exact_instance_of::<PyList>()
        || obj.is_exact_instance_of::<PyString>()
        || obj.is_exact_instance_of::<PyInt>()
        || obj.is_exact_instance_of::<PyFloat>()
        || obj.is_exact_instance_of::<PyBool>()
        || obj.is_exact_instance_of::<PyTuple>()
        || obj.is_exact_instance_of::<PyBytes>()
    {
        return Ok(false);
    }
    types(obj.py())?.isawaitable.bind(obj.py()).call1((obj,))?.is_truthy()
}

/// A new pending `_Reply` on `event_loop`.
pub fn new_future<'py>(py: Python<'py>, event_loop: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    // Naming the loop spares asyncio a get_running_loop(), which makes a
    // getpid() system call on every future in CPython 3.11.
    let kwargs = PyDict::new(py);
    kwargs.set_item(pyo3::intern!(py, "loop"), event_loop)?;
    types(py)?.reply.bind(py).call((), Some(&kwargs))
}

/// An already-completed result on `c`'s loop (a [`Done`]): awaiting it
/// costs no loop round trip. Exceptions go into it, as a coroutine would
/// raise them at its `await`; a `BaseException` that is not an `Exception`
/// (KeyboardInterrupt, a cancellation) is raised at once.
pub fn ready(py: Python<'_>, c: &Completer, r: PyResult<Py<PyAny>>) -> PyResult<Py<PyAny>> {
    Done::new_object(py, &c.loop_ref, r)
}

/// Turns a finished result into the Python value (run on the loop's thread).
pub type Make = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;

/// The cross-thread half: what tokio tasks hold.
pub struct Shared {
    queue: Mutex<Vec<(Py<PyAny>, Make)>>,
    writer: UnixStream,
}

impl Shared {
    /// Queue a result for `future` and wake the loop if it is not already awake.
    pub fn push(&self, future: Py<PyAny>, make: Make) {
        let first = {
            let mut q = self.queue.lock();
            q.push((future, make));
            q.len() == 1
        };
        if first {
            // WouldBlock means the socket already holds wake bytes: the loop
            // will drain, which is all we need.
            let _ = (&self.writer).write(&[1]);
        }
    }
}

/// One per event loop; created by `dreamos_bridge` the first time a loop calls in.
///
/// It holds its loop weakly (the package keeps completers in a
/// `WeakKeyDictionary` keyed by loop, so a strong reference would keep every
/// loop alive forever); `loop_ptr` identifies the loop for cheap comparisons.
#[pyclass(module = "dreamos_bridge._native", frozen)]
pub struct Completer {
    loop_ref: Py<PyAny>,
    pub loop_ptr: usize,
    pub shared: Arc<Shared>,
    reader: UnixStream,
    generation: u64,
}

#[pymethods]
impl Completer {
    #[new]
    fn new(event_loop: &Bound<'_, PyAny>) -> PyResult<Self> {
        let (reader, writer) = UnixStream::pair()
            .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("socketpair for the completer: {e}")))?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        let loop_ref = pyo3::types::PyWeakrefReference::new(event_loop)?.into_any().unbind();
        Ok(Completer {
            loop_ref,
            loop_ptr: event_loop.as_ptr() as usize,
            shared: Arc::new(Shared { queue: Mutex::new(Vec::new()), writer }),
            reader,
            generation: fork_generation(),
        })
    }

    /// The event loop (None once it is gone).
    #[getter(r#loop)]
    pub fn get_loop(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self.loop_ref.bind(py).call0()?.unbind())
    }

    /// The file descriptor to pass to `loop.add_reader`.
    fn fileno(&self) -> i32 {
        self.reader.as_raw_fd()
    }

    /// False in a forked child: the socket pair is shared with the parent.
    pub fn valid(&self) -> bool {
        self.generation == fork_generation()
    }

    /// The reader callback: resolve every queued future.
    fn _drain(&self, py: Python<'_>) -> PyResult<()> {
        let mut buf = [0u8; 256];
        while let Ok(n) = (&self.reader).read(&mut buf) {
            if n < buf.len() {
                break;
            }
        }
        let batch = std::mem::take(&mut *self.shared.queue.lock());
        for (future, make) in batch {
            let fut = future.bind(py);
            // A cancelled caller already has its answer. Errors here concern
            // one future only and must not stop the rest of the batch.
            if fut.call_method0(pyo3::intern!(py, "done")).and_then(|d| d.is_truthy()).unwrap_or(true) {
                continue;
            }
            let _ = match make(py) {
                Ok(v) => fut.call_method1(pyo3::intern!(py, "set_result"), (v,)),
                Err(e) => fut.call_method1(pyo3::intern!(py, "set_exception"), (e.into_value(py),)),
            };
        }
        Ok(())
    }
}

impl Completer {
    /// A new pending future on this loop, for a result that tokio will push.
    pub fn create_future<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let event_loop = self.loop_ref.bind(py).call0()?;
        if event_loop.is_none() {
            return Err(pyo3::exceptions::PyRuntimeError::new_err("the event loop is gone"));
        }
        new_future(py, &event_loop)
    }
}

/// Set as a pending `_Reply`'s `_abort`: its `cancel()` calls it so the
/// engine drops the work (and counts the call as cancelled).
#[pyclass(module = "dreamos_bridge._native", frozen)]
pub struct Abort {
    handle: tokio::task::AbortHandle,
}

impl Abort {
    pub fn new(handle: tokio::task::AbortHandle) -> Self {
        Abort { handle }
    }
}

#[pymethods]
impl Abort {
    fn __call__(&self) {
        self.handle.abort();
    }
}

/// A result for the completion queue.
pub fn make_result<T: Send + 'static>(
    r: Result<T, BridgeError>,
    conv: fn(Python<'_>, T) -> PyResult<Py<PyAny>>,
) -> Make {
    Box::new(move |py| match r {
        Ok(v) => conv(py, v),
        Err(e) => Err(to_pyerr(py, &e)),
    })
}
