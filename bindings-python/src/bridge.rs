//! The native `Bridge`: converts arguments, calls the engine, maps errors.
//!
//! Every method that may wait takes the caller's [`Completer`]. `route`
//! returns a finished [`Done`](crate::done::Done) when the
//! engine answered on the caller's thread (validate, authenticate,
//! authorize, resolve and admit never wait; a Python handler on this loop
//! that does not suspend, or a Rust handler, answers at once), a pending
//! `_Reply` future (see `completer.rs`) when tokio has the work (admission
//! queue, HTTP, a handler on another loop);
//! or a [`Direct`] when a Python handler on this loop suspended, for Python
//! to finish. The other methods return the result itself when it came at
//! once, else a pending future.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use dreamos_bridge::bridge::Call;
use dreamos_bridge::{
    Action, AnswerNow, BridgeConfig, BridgeError, BridgeManager, CallOptions, ErrorCode, Payload, handler_fn,
    sync_handler_fn,
};
use futures_util::FutureExt;
use parking_lot::Mutex;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt, PyList, PyString};

use crate::args::{config_path_arg, credentials_arg, text_arg};
use crate::capi::{Step, send_none};
use crate::completer::{Abort, Completer, is_awaitable, is_coroutine, make_result, ready};
use crate::convert::{Subject, check_payload, check_reply, payload_to_py, py_to_payload, py_to_value, value_to_py};
use crate::errors::{guard, handler_error, to_pyerr};
use crate::handler::{HomeLoop, PyHandler};
use crate::message::{PyMessage, PyToken, headers_from_py, token_arg};
use crate::runtime::{check_not_forked, fork_generation, runtime};

type BoxedFuture<T> = Pin<Box<dyn Future<Output = std::thread::Result<Result<T, BridgeError>>> + Send>>;

/// What [`run_or_spawn`] got: the answer, or a pending `_Reply` future.
enum Outcome {
    Ready(PyResult<Py<PyAny>>),
    Pending(Py<PyAny>),
}

impl Outcome {
    /// For methods whose Python wrapper awaits pending futures itself.
    fn value(self) -> PyResult<Py<PyAny>> {
        match self {
            Outcome::Ready(r) => r,
            Outcome::Pending(f) => Ok(f),
        }
    }

    /// For `route`, which always returns a future.
    fn future(self, py: Python<'_>, c: &Completer) -> PyResult<Py<PyAny>> {
        match self {
            Outcome::Ready(r) => ready(py, c, r),
            Outcome::Pending(f) => Ok(f),
        }
    }
}

/// Poll `fut` once on this thread (GIL released, runtime entered); if it is
/// not done, hand it to tokio and return a pending future completed through
/// `completer`.
fn run_or_spawn<T, F>(
    py: Python<'_>,
    completer: &Completer,
    fut: F,
    conv: fn(Python<'_>, T) -> PyResult<Py<PyAny>>,
) -> PyResult<Outcome>
where
    T: Send + 'static,
    F: Future<Output = Result<T, BridgeError>> + Send + 'static,
{
    let rt = runtime().map_err(|e| to_pyerr(py, &e))?;
    let mut fut: BoxedFuture<T> = Box::pin(AssertUnwindSafe(fut).catch_unwind());
    let polled = py.detach(|| {
        let _entered = rt.enter();
        fut.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    });
    match polled {
        Poll::Ready(r) => Ok(Outcome::Ready(conv_result(py, flatten(r), conv))),
        Poll::Pending => {
            if !completer.valid() {
                return Err(to_pyerr(py, &BridgeError::internal("event-loop completer used across fork()")));
            }
            let future = completer.create_future(py)?;
            let target = future.clone().unbind();
            let shared = completer.shared.clone();
            let handle = rt.spawn(async move {
                let r = flatten(fut.await);
                shared.push(target, make_result(r, conv));
            });
            future.setattr(pyo3::intern!(py, "_abort"), Abort::new(handle.abort_handle()))?;
            Ok(Outcome::Pending(future.unbind()))
        }
    }
}

/// The panic of [`PyBridge::_test_panic`].
fn explode<E>(what: &str) -> E {
    panic!("dreamos_bridge test hook: a deliberate panic {what}")
}

fn flatten<T>(r: std::thread::Result<Result<T, BridgeError>>) -> Result<T, BridgeError> {
    r.unwrap_or_else(|_| Err(BridgeError::internal("bug in dreamos_bridge: the engine panicked (please report it)")))
}

fn conv_result<T>(
    py: Python<'_>,
    r: Result<T, BridgeError>,
    conv: fn(Python<'_>, T) -> PyResult<Py<PyAny>>,
) -> PyResult<Py<PyAny>> {
    match r {
        Ok(v) => conv(py, v),
        Err(e) => Err(to_pyerr(py, &e)),
    }
}

fn conv_payload(py: Python<'_>, p: Payload) -> PyResult<Py<PyAny>> {
    Ok(payload_to_py(py, &p)?.unbind())
}

fn conv_none(py: Python<'_>, _: ()) -> PyResult<Py<PyAny>> {
    Ok(py.None())
}

fn conv_json(py: Python<'_>, v: serde_json::Value) -> PyResult<Py<PyAny>> {
    Ok(value_to_py(py, &v)?.unbind())
}

fn conv_str(py: Python<'_>, s: String) -> PyResult<Py<PyAny>> {
    Ok(PyString::new(py, &s).into_any().unbind())
}

fn invalid(py: Python<'_>, msg: impl Into<String>) -> PyErr {
    to_pyerr(py, &BridgeError::invalid(msg))
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
}

/// A duration in seconds such as `timeout=` (None: the default): a
/// positive int or float, not a bool.
pub(crate) fn seconds_arg(py: Python<'_>, what: &str, t: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Duration>> {
    let Some(t) = t.filter(|t| !t.is_none()) else { return Ok(None) };
    let number = (t.is_instance_of::<PyFloat>() || t.is_instance_of::<PyInt>()) && !t.is_instance_of::<PyBool>();
    match number.then(|| t.extract::<f64>().ok()).flatten() {
        Some(s) if s.is_finite() && s > 0.0 && s < 1e9 => Ok(Some(Duration::from_secs_f64(s))),
        _ => Err(invalid(py, format!("{what} must be a positive number of seconds, not {}", t.repr()?))),
    }
}

fn action_arg(py: Python<'_>, action: &Bound<'_, PyString>) -> PyResult<Action> {
    Ok(match &*text_arg(py, action, "action", ErrorCode::InvalidMessage)? {
        "route" => Action::Route,
        "publish" => Action::Publish,
        "handle" => Action::Handle,
        "admin" => Action::Admin,
        other => {
            return Err(invalid(py, format!("action must be route, publish, handle or admin, not {other:?}")));
        }
    })
}

/// The native bridge; `dreamos_bridge.BridgeManager` wraps it.
#[pyclass(name = "Bridge", module = "dreamos_bridge._native", frozen)]
pub struct PyBridge {
    bridge: BridgeManager,
    home: HomeLoop,
    generation: u64,
    max_depth: usize,
}

impl PyBridge {
    fn wrap(bridge: BridgeManager) -> Self {
        let max_depth = bridge.config().limits.max_json_depth;
        PyBridge { bridge, home: Arc::new(Mutex::new(None)), generation: fork_generation(), max_depth }
    }

    /// A bridge carried over from the parent by `fork()` is not usable: its
    /// background tasks ran on threads the child does not have.
    fn check(&self, py: Python<'_>) -> PyResult<()> {
        check_not_forked(
            self.generation,
            "this BridgeManager was created before fork(); create and initialize a new one in the child process",
        )
        .map_err(|e| to_pyerr(py, &e))
    }

    /// The engine message with an empty payload, and the payload object.
    fn envelope<'py>(
        &self,
        py: Python<'py>,
        destination: &Bound<'py, PyAny>,
        payload: &Bound<'py, PyAny>,
        headers: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<(dreamos_bridge::Message, Bound<'py, PyAny>)> {
        if let Ok(m) = destination.cast::<PyMessage>() {
            if !payload.is_none() {
                return Err(invalid(py, "pass the payload inside the Message, not as a second argument"));
            }
            let m = m.get();
            let mut core = m.to_core(Payload::default());
            core.headers.extend(headers_from_py(py, headers)?);
            return Ok((core, m.payload.bind(py).clone()));
        }
        let Ok(dest) = destination.cast::<PyString>() else {
            return Err(invalid(py, format!("destination must be a str or a Message, not {}", type_name(destination))));
        };
        let mut core = dreamos_bridge::Message::new(
            text_arg(py, dest, "destination", ErrorCode::InvalidMessage)?,
            Payload::default(),
        );
        core.headers = headers_from_py(py, headers)?;
        Ok((core, payload.clone()))
    }

    /// The engine message, its payload converted.
    fn message_arg(
        &self,
        py: Python<'_>,
        destination: &Bound<'_, PyAny>,
        payload: &Bound<'_, PyAny>,
        headers: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<dreamos_bridge::Message> {
        let (mut msg, obj) = self.envelope(py, destination, payload, headers)?;
        msg.payload = py_to_payload(&obj, self.max_depth).map_err(|e| to_pyerr(py, &e))?;
        Ok(msg)
    }

    /// Give the engine the converted payload of a call that it delivers.
    fn install_payload(&self, py: Python<'_>, call: &mut Call, obj: &Bound<'_, PyAny>) -> PyResult<()> {
        let r = py_to_payload(obj, self.max_depth).and_then(|p| call.set_payload(p));
        r.map_err(|e| to_pyerr(py, &e))
    }

    #[allow(clippy::too_many_arguments)]
    fn route_inner(
        &self,
        py: Python<'_>,
        c: &Completer,
        destination: &Bound<'_, PyAny>,
        payload: &Bound<'_, PyAny>,
        token: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        headers: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        self.check(py)?;
        let (msg, obj) = self.envelope(py, destination, payload, headers)?;
        let opts = CallOptions { token: token_arg(py, token)?, timeout: seconds_arg(py, "timeout", timeout)? };
        // The payload object is validated where it is; it is converted only
        // if the engine delivers it (not for a Python handler on this loop).
        let mut call = self
            .bridge
            .begin_with(Action::Route, msg, &opts, |limits| check_payload(&obj, limits))
            .map_err(|e| to_pyerr(py, &e))?;
        // A Python handler on the caller's own loop: call it here.
        let local = call
            .handler()
            .and_then(|h| h.as_any())
            .and_then(|a| a.downcast_ref::<PyHandler>())
            .filter(|h| h.runs_on(c.loop_ptr))
            .map(|h| h.func.clone_ref(py));
        match call.try_admit() {
            Ok(None) => {
                if let Some(func) = local {
                    return self.call_here(py, c, call, func, obj.unbind());
                }
                self.install_payload(py, &mut call, &obj)?;
                // A Rust handler that answers at once: no future to poll.
                match call.deliver_now() {
                    AnswerNow::Answered(r) => return ready(py, c, conv_result(py, r, conv_payload)),
                    AnswerNow::Later(back) => call = back,
                }
            }
            // Admission must wait: admit() below does.
            Ok(Some(_)) => self.install_payload(py, &mut call, &obj)?,
            Err(e) => return Err(to_pyerr(py, &e)),
        }
        run_or_spawn(
            py,
            c,
            async move {
                call.admit().await?;
                call.deliver().await
            },
            conv_payload,
        )?
        .future(py, c)
    }

    /// `route` on the loop of `c`: errors come back inside a finished future,
    /// as a coroutine would raise them at its `await`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn route_on(
        &self,
        py: Python<'_>,
        c: &Completer,
        destination: &Bound<'_, PyAny>,
        payload: &Bound<'_, PyAny>,
        token: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        headers: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        match guard(py, || self.route_inner(py, c, destination, payload, token, timeout, headers)) {
            Ok(r) => Ok(r),
            Err(e) => ready(py, c, Err(e)),
        }
    }

    /// Run a Python handler on this thread: call it and, if it is a
    /// coroutine, step it once. Most handlers answer without suspending; then
    /// the reply goes back in a completed future, with no task, no deadline
    /// timer and no loop round trip. One that suspends is handed to Python as
    /// a [`Direct`] to finish under the call's deadline.
    fn call_here(
        &self,
        py: Python<'_>,
        c: &Completer,
        call: Call,
        func: Py<PyAny>,
        py_payload: Py<PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let message = PyMessage::create(py, call.message(), py_payload)?;
        let mut direct = Direct {
            deadline: call.deadline(),
            call: Mutex::new(Some(call)),
            max_depth: self.max_depth,
            awaitable: None,
            step: None,
        };
        let x = match func.bind(py).call1((message,)) {
            Ok(x) => x,
            Err(e) => return direct.failed(py, c, e),
        };
        if is_coroutine(&x)? {
            return match send_none(&x) {
                Ok(Step::Yielded(step)) => {
                    direct.awaitable = Some(x.unbind());
                    direct.step = Some(step.unbind());
                    Ok(Py::new(py, direct)?.into_any())
                }
                Ok(Step::Returned(v)) => ready(py, c, direct.finish_value(py, v.unbind())),
                Err(e) => direct.failed(py, c, e),
            };
        }
        if is_awaitable(&x)? {
            direct.awaitable = Some(x.unbind());
            return Ok(Py::new(py, direct)?.into_any());
        }
        ready(py, c, direct.finish_value(py, x.unbind()))
    }
}

#[pymethods]
impl PyBridge {
    #[new]
    #[pyo3(signature = (config = None))]
    pub(crate) fn new(py: Python<'_>, config: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        guard(py, || {
            let cfg = match config.filter(|c| !c.is_none()) {
                None => BridgeConfig::default(),
                Some(c) => {
                    let v = py_to_value(c, Subject::Config, 1, 64)
                        .map_err(|e| BridgeError::new(ErrorCode::Config, e.message()))
                        .and_then(|v| {
                            if v.is_object() {
                                Ok(v)
                            } else {
                                Err(BridgeError::config(
                                    "",
                                    format!("the configuration must be a dict, not {}", type_name(c)),
                                ))
                            }
                        })
                        .map_err(|e| to_pyerr(py, &e))?;
                    BridgeConfig::from_value(v).map_err(|e| to_pyerr(py, &e))?
                }
            };
            BridgeManager::new(cfg).map(Self::wrap).map_err(|e| to_pyerr(py, &e))
        })
    }

    #[staticmethod]
    fn from_yaml(py: Python<'_>, text: &Bound<'_, PyString>) -> PyResult<Self> {
        guard(py, || {
            let text = text_arg(py, text, "config text", ErrorCode::Config)?;
            BridgeManager::from_yaml(&text).map(Self::wrap).map_err(|e| to_pyerr(py, &e))
        })
    }

    #[staticmethod]
    fn from_file(py: Python<'_>, path: &Bound<'_, PyAny>) -> PyResult<Self> {
        guard(py, || {
            let path = config_path_arg(py, path, "path")?;
            BridgeManager::from_file(path).map(Self::wrap).map_err(|e| to_pyerr(py, &e))
        })
    }

    fn initialize(&self, py: Python<'_>, completer: &Bound<'_, Completer>) -> PyResult<Py<PyAny>> {
        self.check(py)?;
        guard(py, || {
            let c = completer.get();
            // No Python call while the lock is held (it could release the GIL).
            let event_loop = c.get_loop(py)?;
            self.home.lock().get_or_insert(event_loop);
            let b = self.bridge.clone();
            run_or_spawn(py, c, async move { b.initialize().await }, conv_none)?.value()
        })
    }

    fn shutdown(&self, py: Python<'_>, completer: &Bound<'_, Completer>) -> PyResult<Py<PyAny>> {
        self.check(py)?;
        guard(py, || {
            let b = self.bridge.clone();
            run_or_spawn(
                py,
                completer.get(),
                async move {
                    b.shutdown().await;
                    Ok(())
                },
                conv_none,
            )?
            .value()
        })
    }

    fn is_running(&self) -> bool {
        self.generation == fork_generation() && self.bridge.is_running()
    }

    /// `event_loop`: the loop the handler runs on (None: the bridge's home loop).
    fn register_route(
        &self,
        py: Python<'_>,
        pattern: &Bound<'_, PyString>,
        func: Py<PyAny>,
        event_loop: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        self.check(py)?;
        let pattern = text_arg(py, pattern, "pattern", ErrorCode::InvalidMessage)?;
        if !func.bind(py).is_callable() {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "a handler must be callable, not {}",
                type_name(func.bind(py))
            )));
        }
        let h = PyHandler::new(func, event_loop, self.home.clone(), self.max_depth);
        self.bridge.register_route(&pattern, Arc::new(h)).map_err(|e| to_pyerr(py, &e))
    }

    fn unregister_route(&self, py: Python<'_>, pattern: &Bound<'_, PyString>) -> PyResult<bool> {
        Ok(self.bridge.unregister_route(&text_arg(py, pattern, "pattern", ErrorCode::InvalidMessage)?))
    }

    fn routes(&self) -> Vec<String> {
        self.bridge.routes()
    }

    /// Always returns a future: a finished `Done` when the call
    /// finished on this thread (errors included), pending when tokio has the
    /// work; or a [`Direct`] when a Python handler on this loop suspended and
    /// Python must run the rest of it.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (completer, destination, payload, token = None, timeout = None, headers = None))]
    fn route(
        &self,
        py: Python<'_>,
        completer: &Bound<'_, Completer>,
        destination: &Bound<'_, PyAny>,
        payload: &Bound<'_, PyAny>,
        token: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        headers: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        self.route_on(py, completer.get(), destination, payload, token, timeout, headers)
    }

    #[pyo3(signature = (completer, destination, payload, token = None, headers = None))]
    fn publish(
        &self,
        py: Python<'_>,
        completer: &Bound<'_, Completer>,
        destination: &Bound<'_, PyAny>,
        payload: &Bound<'_, PyAny>,
        token: Option<&Bound<'_, PyAny>>,
        headers: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        self.check(py)?;
        guard(py, || {
            let msg = self.message_arg(py, destination, payload, headers)?;
            let opts = CallOptions { token: token_arg(py, token)?, timeout: None };
            let b = self.bridge.clone();
            run_or_spawn(
                py,
                completer.get(),
                async move { b.publish(msg, opts).await.map(|id| id.to_string()) },
                conv_str,
            )?
            .value()
        })
    }

    fn authenticate(&self, py: Python<'_>, credentials: &Bound<'_, PyAny>) -> PyResult<PyToken> {
        self.check(py)?;
        guard(py, || {
            let creds = credentials_arg(py, credentials)?;
            let b = &self.bridge;
            py.detach(|| b.authenticate(&creds)).map(PyToken::from).map_err(|e| to_pyerr(py, &e))
        })
    }

    /// `action` has no default here: the package's `authorize` passes it.
    fn authorize(
        &self,
        py: Python<'_>,
        token: &Bound<'_, PyAny>,
        resource: &Bound<'_, PyString>,
        action: &Bound<'_, PyString>,
    ) -> PyResult<bool> {
        self.check(py)?;
        guard(py, || {
            let resource = text_arg(py, resource, "resource", ErrorCode::InvalidMessage)?;
            let action = action_arg(py, action)?;
            let token = token_arg(py, Some(token))?.unwrap_or_default();
            self.bridge.authorize(&token, action, &resource).map_err(|e| to_pyerr(py, &e))
        })
    }

    fn revoke(&self, py: Python<'_>, token: &Bound<'_, PyAny>) -> PyResult<()> {
        self.check(py)?;
        guard(py, || {
            let token = token_arg(py, Some(token))?.unwrap_or_default();
            self.bridge.revoke(&token).map_err(|e| to_pyerr(py, &e))
        })
    }

    fn metrics(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        guard(py, || {
            let v = serde_json::to_value(self.bridge.metrics())
                .map_err(|e| to_pyerr(py, &BridgeError::internal(format!("metrics snapshot: {e}"))))?;
            conv_json(py, v)
        })
    }

    fn metrics_text(&self) -> String {
        self.bridge.metrics_text()
    }

    fn health(&self, py: Python<'_>, completer: &Bound<'_, Completer>) -> PyResult<Py<PyAny>> {
        self.check(py)?;
        guard(py, || {
            let b = self.bridge.clone();
            let fut = async move {
                serde_json::to_value(b.health().await).map_err(|e| BridgeError::internal(format!("health report: {e}")))
            };
            run_or_spawn(py, completer.get(), fut, conv_json)?.value()
        })
    }

    fn dead_letters(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        guard(py, || {
            let list = PyList::empty(py);
            for d in self.bridge.dead_letters() {
                let mut v = serde_json::to_value(&d)
                    .map_err(|e| to_pyerr(py, &BridgeError::internal(format!("dead letter: {e}"))))?;
                // Payloads as the caller sent them (bytes as bytes).
                let payload = payload_to_py(py, &d.message.payload)?;
                if let Some(m) = v.get_mut("message").and_then(|m| m.as_object_mut()) {
                    m.remove("payload");
                }
                let obj = value_to_py(py, &v)?;
                if let Ok(m) = obj.get_item("message") {
                    m.set_item("payload", payload)?;
                }
                list.append(obj)?;
            }
            Ok(list.into_any().unbind())
        })
    }

    fn replay(
        &self,
        py: Python<'_>,
        completer: &Bound<'_, Completer>,
        id: &Bound<'_, PyString>,
    ) -> PyResult<Py<PyAny>> {
        self.check(py)?;
        guard(py, || {
            let id = text_arg(py, id, "id", ErrorCode::InvalidMessage)?;
            let id = uuid::Uuid::parse_str(&id).map_err(|_| invalid(py, format!("{id:?} is not a message id")))?;
            let b = self.bridge.clone();
            run_or_spawn(py, completer.get(), async move { b.replay(id).await }, conv_none)?.value()
        })
    }

    /// Bench/test only: route `pattern` to a Rust handler that echoes the
    /// payload: synchronous (`sync_handler_fn`, answered through
    /// `Call::deliver_now`) or, with `asynchronous`, an async `handler_fn`
    /// (polled once inline).
    #[pyo3(signature = (pattern, asynchronous = false))]
    fn _register_rust_echo(&self, py: Python<'_>, pattern: &str, asynchronous: bool) -> PyResult<()> {
        let h = if asynchronous {
            handler_fn(|msg: dreamos_bridge::Message| async move { Ok(msg.payload) })
        } else {
            sync_handler_fn(|msg: dreamos_bridge::Message| Ok(msg.payload))
        };
        self.bridge.register_route(pattern, h).map_err(|e| to_pyerr(py, &e))
    }

    /// Test only: a Rust panic inside the binding, on the caller's thread
    /// (`sync`) or in a future finished on tokio. Both must reach Python as
    /// `InternalError` (code INTERNAL), never as a crash or a `PanicException`.
    fn _test_panic(&self, py: Python<'_>, completer: &Bound<'_, Completer>, sync: bool) -> PyResult<Py<PyAny>> {
        guard(py, || {
            if sync {
                return Err(explode("on the caller's thread"));
            }
            let fut = async move {
                // Suspend once so that the panic happens on a tokio thread.
                tokio::task::yield_now().await;
                Err::<(), _>(explode("in a future on tokio"))
            };
            run_or_spawn(py, completer.get(), fut, conv_none)?.value()
        })
    }

    /// Bench only: the same route through plain `future_into_py` (the naive binding).
    fn _route_naive<'py>(
        &self,
        py: Python<'py>,
        destination: &Bound<'py, PyAny>,
        payload: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let msg = self.message_arg(py, destination, payload, None)?;
        let b = self.bridge.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let r = b.route(msg, CallOptions::default()).await;
            Python::attach(|py| conv_result(py, r, conv_payload))
        })
    }
}

/// A route to a Python handler on the caller's loop whose handler
/// suspended: Python runs the rest (`awaitable`, already stepped once when
/// `started`) under the deadline and reports how it went.
#[pyclass(module = "dreamos_bridge._native", frozen)]
pub struct Direct {
    call: Mutex<Option<Call>>,
    deadline: Instant,
    max_depth: usize,
    awaitable: Option<Py<PyAny>>,
    /// What the first `send(None)` yielded, for a coroutine that was stepped.
    step: Option<Py<PyAny>>,
}

impl Direct {
    fn end(&self, r: &Result<Payload, BridgeError>) {
        if let Some(call) = self.call.lock().take() {
            call.finish(r);
        }
    }

    /// The handler returned `value`: check it is JSON-shaped and pass it on.
    fn finish_value(&self, py: Python<'_>, value: Py<PyAny>) -> PyResult<Py<PyAny>> {
        match check_reply(value.bind(py), self.max_depth) {
            Ok(()) => {
                self.end(&Ok(Payload::default()));
                Ok(value)
            }
            Err(e) => {
                let e = BridgeError::handler(format!("the handler's reply is not valid: {}", e.message()));
                self.end(&Err(e.clone()));
                Err(to_pyerr(py, &e))
            }
        }
    }

    /// The handler raised `e` synchronously: a completed future holding the
    /// `HandlerError` (caused by `e`). A `BaseException` that is not an
    /// `Exception` propagates as it is; the call then counts as cancelled.
    fn failed(&self, py: Python<'_>, c: &Completer, e: PyErr) -> PyResult<Py<PyAny>> {
        if !e.is_instance_of::<PyException>(py) {
            return Err(e);
        }
        let he = PyErr::from_value(self.fail(py, e.value(py)).into_bound(py));
        he.set_cause(py, Some(e));
        ready(py, c, Err(he))
    }
}

#[pymethods]
impl Direct {
    /// The handler's awaitable (a coroutine already stepped once if `started`).
    #[getter]
    fn awaitable(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.awaitable.as_ref().map(|a| a.clone_ref(py))
    }

    /// What the first step yielded.
    #[getter]
    fn step(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.step.as_ref().map(|a| a.clone_ref(py))
    }

    /// Was the awaitable stepped already?
    #[getter]
    fn started(&self) -> bool {
        self.step.is_some()
    }

    /// Seconds left before the deadline.
    fn remaining(&self) -> f64 {
        self.deadline.saturating_duration_since(Instant::now()).as_secs_f64()
    }

    /// The handler returned `value`: check it is JSON-shaped and pass it on.
    fn finish(&self, py: Python<'_>, value: Py<PyAny>) -> PyResult<Py<PyAny>> {
        self.finish_value(py, value)
    }

    /// The handler raised `exc`: the `HandlerError` to raise instead.
    fn fail(&self, py: Python<'_>, exc: &Bound<'_, PyAny>) -> Py<PyAny> {
        let e = handler_error(py, exc);
        self.end(&Err(e.clone()));
        to_pyerr(py, &e).into_value(py).into_any()
    }

    /// The deadline passed: the `BridgeTimeoutError` to raise.
    fn timed_out(&self, py: Python<'_>) -> Py<PyAny> {
        let e = BridgeError::timeout(
            "no reply from the handler within the deadline; raise the timeout or check the handler",
        );
        self.end(&Err(e.clone()));
        to_pyerr(py, &e).into_value(py).into_any()
    }

    /// The caller was cancelled: counted as cancelled.
    fn cancel(&self) {
        drop(self.call.lock().take());
    }

    /// A future on the completer's loop that completes when shutdown gives
    /// up on in-flight work (None once the call is over). The handler is
    /// raced against it, as against the deadline: without it a suspended
    /// handler kept running past the grace period and shutdown waited for it.
    /// Cancel the future when the call ends: that drops its engine task.
    fn shutdown_signal(&self, py: Python<'_>, completer: &Bound<'_, Completer>) -> PyResult<Option<Py<PyAny>>> {
        let Some(cancelled) = self.call.lock().as_ref().map(Call::cancelled) else { return Ok(None) };
        let fut = async move {
            cancelled.await;
            Ok(())
        };
        run_or_spawn(py, completer.get(), fut, conv_none)?.value().map(Some)
    }

    /// Shutdown gave up on the call: the `ShutdownError` to raise.
    fn shut_down(&self, py: Python<'_>) -> Py<PyAny> {
        let e = BridgeError::shutdown();
        self.end(&Err(e.clone()));
        to_pyerr(py, &e).into_value(py).into_any()
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        // Dropping an unfinished Call counts it as cancelled.
        drop(self.call.get_mut().take());
    }
}
