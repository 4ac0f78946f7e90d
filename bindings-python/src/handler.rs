//! Python functions as engine handlers.
//!
//! A [`PyHandler`] remembers the event loop it was registered on (or, if
//! none was running, the loop the bridge was initialized on): a handler runs
//! on its own loop. When the caller awaits on that same loop, the binding
//! recognises the handler (through `Handler::as_any`) and calls it directly
//! in Python, with no thread hop at all. This file is the other case: the
//! engine reaches the handler from a tokio thread (publish's background
//! delivery, a caller on another loop). Then the call is scheduled with
//! `loop.call_soon_threadsafe` and its outcome comes back through a
//! [`Resolver`]; if the engine stops waiting (deadline, cancellation), the
//! Python task is cancelled too.

use std::any::Any;
use std::sync::Arc;

use dreamos_bridge::bridge::BoxFuture;
use dreamos_bridge::{BridgeError, Handler, Message, Payload, Result};
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use tokio::sync::oneshot;

use crate::convert::{payload_to_py, py_to_payload};
use crate::errors::handler_error;
use crate::message::PyMessage;
use crate::runtime::exiting;

/// The Python function that runs a handler on its loop
/// (`dreamos_bridge._dispatch`), registered at import.
static DISPATCH: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Called once by the package with its `_dispatch` function.
#[pyfunction]
pub fn _register_dispatch(py: Python<'_>, dispatch: Py<PyAny>) {
    let _ = DISPATCH.set(py, dispatch);
}

/// The loop the bridge was initialized on: home of handlers registered
/// while no loop was running.
pub type HomeLoop = Arc<Mutex<Option<Py<PyAny>>>>;

/// A Python callable (async or plain) serving a route.
pub struct PyHandler {
    pub func: Py<PyAny>,
    event_loop: Option<Py<PyAny>>,
    home: HomeLoop,
    max_depth: usize,
}

impl PyHandler {
    pub fn new(func: Py<PyAny>, event_loop: Option<Py<PyAny>>, home: HomeLoop, max_depth: usize) -> Self {
        PyHandler { func, event_loop, home, max_depth }
    }

    /// Does this handler run on `event_loop`?
    /// (The handler holds its loop, so the address cannot belong to another loop.)
    pub fn runs_on(&self, loop_ptr: usize) -> bool {
        match &self.event_loop {
            Some(l) => l.as_ptr() as usize == loop_ptr,
            None => self.home.lock().as_ref().is_some_and(|l| l.as_ptr() as usize == loop_ptr),
        }
    }

    /// The loop this handler runs on.
    pub fn event_loop(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        match &self.event_loop {
            Some(l) => Some(l.clone_ref(py)),
            None => self.home.lock().as_ref().map(|l| l.clone_ref(py)),
        }
    }
}

impl Handler for PyHandler {
    fn call(&self, msg: Message) -> BoxFuture<Result<Payload>> {
        let (tx, rx) = oneshot::channel();
        let scheduled: Result<Arc<Shared>> = Python::attach(|py| {
            let event_loop = self.event_loop(py).ok_or_else(|| {
                BridgeError::handler("the handler has no event loop: initialize the bridge inside a running loop")
            })?;
            let dispatch = DISPATCH
                .get(py)
                .ok_or_else(|| BridgeError::internal("dreamos_bridge._native used without its package"))?;
            let payload = payload_to_py(py, &msg.payload)
                .map_err(|e| BridgeError::internal(format!("payload conversion: {e}")))?
                .unbind();
            let pymsg = PyMessage::from_core(&msg, payload);
            let shared = Arc::new(Shared {
                tx: Mutex::new(Some(tx)),
                task: Mutex::new(None),
                event_loop: event_loop.clone_ref(py),
                max_depth: self.max_depth,
            });
            let resolver = Resolver { shared: shared.clone() };
            event_loop
                .bind(py)
                .call_method1(pyo3::intern!(py, "call_soon_threadsafe"), (dispatch, &self.func, pymsg, resolver))
                .map_err(|e| {
                    BridgeError::handler(format!("could not schedule the handler on its event loop (closed?): {e}"))
                })?;
            Ok(shared)
        });
        Box::pin(async move {
            let shared = scheduled?;
            let mut guard = CancelOnDrop(Some(shared));
            let r = match rx.await {
                Ok(r) => r,
                Err(_) => Err(BridgeError::handler("the handler's event loop dropped the call (was it closed?)")),
            };
            // Answered: nothing to cancel.
            guard.0 = None;
            r
        })
    }

    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}

/// What the scheduled call and the waiting engine share.
struct Shared {
    tx: Mutex<Option<oneshot::Sender<Result<Payload>>>>,
    task: Mutex<Option<Py<PyAny>>>,
    event_loop: Py<PyAny>,
    max_depth: usize,
}

impl Shared {
    fn send(&self, r: Result<Payload>) {
        if let Some(tx) = self.tx.lock().take() {
            let _ = tx.send(r);
        }
    }
}

/// The engine stopped waiting: cancel the Python task if one is running.
struct CancelOnDrop(Option<Arc<Shared>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(shared) = self.0.take() else { return };
        if exiting() {
            return;
        }
        Python::attach(|py| {
            // Take the task out before calling Python: `call_soon_threadsafe`
            // releases the GIL while it writes the loop's wake-up byte, and
            // the loop thread's `task_done` (holding the GIL) takes this same
            // lock, so holding it across the call deadlocks the two threads.
            let task = shared.task.lock().take();
            if let Some(task) = task {
                let cancel = task.bind(py).getattr(pyo3::intern!(py, "cancel"));
                if let Ok(cancel) = cancel {
                    let _ =
                        shared.event_loop.bind(py).call_method1(pyo3::intern!(py, "call_soon_threadsafe"), (cancel,));
                }
            }
        });
    }
}

/// Hands a handler's outcome back to the engine.
#[pyclass(module = "dreamos_bridge._native", frozen)]
pub struct Resolver {
    shared: Arc<Shared>,
}

#[pymethods]
impl Resolver {
    /// The handler returned `value`.
    fn ok(&self, value: &Bound<'_, PyAny>) {
        let r = py_to_payload(value, self.shared.max_depth)
            .map_err(|e| BridgeError::handler(format!("the handler's reply is not valid: {}", e.message())));
        self.shared.send(r);
    }

    /// The handler raised `exc`.
    fn fail(&self, py: Python<'_>, exc: &Bound<'_, PyAny>) {
        self.shared.send(Err(handler_error(py, exc)));
    }

    /// The handler is a coroutine running as `task`.
    fn set_task(&self, task: Py<PyAny>) {
        // The previous value (if any) is dropped after the lock is released.
        let _previous = self.shared.task.lock().replace(task);
    }

    /// `task.add_done_callback` target.
    fn task_done(&self, py: Python<'_>, task: &Bound<'_, PyAny>) -> PyResult<()> {
        let _finished = self.shared.task.lock().take();
        if task.call_method0(pyo3::intern!(py, "cancelled"))?.is_truthy()? {
            self.shared.send(Err(BridgeError::handler("the handler's task was cancelled")));
            return Ok(());
        }
        let exc = task.call_method0(pyo3::intern!(py, "exception"))?;
        if !exc.is_none() {
            self.fail(py, &exc);
            return Ok(());
        }
        let v = task.call_method0(pyo3::intern!(py, "result"))?;
        self.ok(&v);
        Ok(())
    }
}
