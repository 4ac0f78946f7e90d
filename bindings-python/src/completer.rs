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

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use dreamos_bridge::BridgeError;
use parking_lot::Mutex;
use pyo3::prelude::*;

use crate::errors::to_pyerr;
use crate::runtime::fork_generation;

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
    /// A new future on this loop.
    pub fn create_future(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let event_loop = self.get_loop(py)?;
        if event_loop.is_none(py) {
            return Err(pyo3::exceptions::PyRuntimeError::new_err("the event loop is gone"));
        }
        Ok(event_loop.bind(py).call_method0(pyo3::intern!(py, "create_future"))?.unbind())
    }
}

/// What a call that did not finish at once returns: await it; on
/// cancellation call [`Pending::abort`] so the engine drops the work.
#[pyclass(module = "dreamos_bridge._native", frozen)]
pub struct Pending {
    future: Py<PyAny>,
    abort: tokio::task::AbortHandle,
}

impl Pending {
    pub fn new(future: Py<PyAny>, abort: tokio::task::AbortHandle) -> Self {
        Pending { future, abort }
    }
}

#[pymethods]
impl Pending {
    fn __await__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.future.bind(py).call_method0(pyo3::intern!(py, "__await__"))
    }

    /// Drop the engine work (the engine counts the call as cancelled).
    fn abort(&self) {
        self.abort.abort();
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
