//! `BridgeManager.connect(url, credentials)`: the native side of a bridge
//! that lives in a `dreamos-bridge serve` process.
//!
//! Everything is the Rust client's (`dreamos_bridge_client::RemoteBridge`):
//! HTTP calls with token renewal, one WebSocket session for the handlers
//! this process serves, reconnects, and the server's error bodies turned
//! back into the engine's codes, so the exceptions are the local ones. This
//! module only converts arguments and hands results back. Every call waits
//! on the network, so none is polled inline: each runs on the process's
//! tokio runtime and its result comes back through the caller loop's
//! batched completer, like any other pending call. Handlers registered here
//! are the binding's own [`PyHandler`]s, run on their event loop.
//! In a forked child the parent's connections and session task are not this
//! process's: every call refuses at once with `ShutdownError` (as a local
//! bridge does) instead of waiting on them until it times out.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use dreamos_bridge::message::Limits;
use dreamos_bridge::{BridgeError, CallOptions, ErrorCode, Payload};
use dreamos_bridge_client::{ClientOptions, RemoteBridge};
use futures_util::FutureExt;
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt, PyString};

use crate::args::{config_path_arg, credentials_arg, text_arg};
use crate::bridge::seconds_arg;
use crate::completer::{Abort, Completer, make_result};
use crate::convert::{payload_to_py, py_to_payload, value_to_py};
use crate::errors::{guard, to_pyerr};
use crate::handler::{HomeLoop, PyHandler};
use crate::message::{PyMessage, PyToken, headers_from_py, token_arg};
use crate::runtime::{check_not_forked, fork_generation, runtime};

/// Run `fut` on tokio; a pending future the caller's loop completes
/// (cancelling it drops the work).
fn spawn<T, F>(
    py: Python<'_>,
    completer: &Completer,
    fut: F,
    conv: fn(Python<'_>, T) -> PyResult<Py<PyAny>>,
) -> PyResult<Py<PyAny>>
where
    T: Send + 'static,
    F: Future<Output = Result<T, BridgeError>> + Send + 'static,
{
    let rt = runtime().map_err(|e| to_pyerr(py, &e))?;
    if !completer.valid() {
        return Err(to_pyerr(py, &BridgeError::internal("event-loop completer used across fork()")));
    }
    let future = completer.create_future(py)?;
    let target = future.clone().unbind();
    let shared = completer.shared.clone();
    let handle = rt.spawn(async move {
        let r = AssertUnwindSafe(fut).catch_unwind().await.unwrap_or_else(|_| {
            Err(BridgeError::internal("bug in dreamos_bridge: the remote client panicked (please report it)"))
        });
        shared.push(target, make_result(r, conv));
    });
    future.setattr(pyo3::intern!(py, "_abort"), Abort::new(handle.abort_handle()))?;
    Ok(future.unbind())
}

fn conv_payload(py: Python<'_>, p: Payload) -> PyResult<Py<PyAny>> {
    Ok(payload_to_py(py, &p)?.unbind())
}

fn conv_none(py: Python<'_>, _: ()) -> PyResult<Py<PyAny>> {
    Ok(py.None())
}

fn conv_str(py: Python<'_>, s: String) -> PyResult<Py<PyAny>> {
    Ok(PyString::new(py, &s).into_any().unbind())
}

fn conv_json(py: Python<'_>, v: serde_json::Value) -> PyResult<Py<PyAny>> {
    Ok(value_to_py(py, &v)?.unbind())
}

fn conv_token(py: Python<'_>, t: dreamos_bridge::Token) -> PyResult<Py<PyAny>> {
    Ok(Py::new(py, PyToken::from(t))?.into_any())
}

fn invalid(py: Python<'_>, msg: impl Into<String>) -> PyErr {
    to_pyerr(py, &BridgeError::invalid(msg))
}

/// A positive count such as `max_connections` (an int, not a bool or float).
fn count_arg(py: Python<'_>, what: &str, n: Option<&Bound<'_, PyAny>>) -> PyResult<Option<usize>> {
    let Some(n) = n.filter(|n| !n.is_none()) else { return Ok(None) };
    let count =
        if n.is_instance_of::<PyInt>() && !n.is_instance_of::<PyBool>() { n.extract::<usize>().ok() } else { None };
    match count {
        Some(c) if c > 0 => Ok(Some(c)),
        _ => Err(invalid(py, format!("{what} must be a positive integer, not {}", n.repr()?))),
    }
}

/// The native remote bridge; `dreamos_bridge.RemoteBridge` wraps it.
#[pyclass(name = "Remote", module = "dreamos_bridge._native", frozen)]
pub struct PyRemote {
    remote: RemoteBridge,
    home: HomeLoop,
    max_depth: usize,
    /// The fork generation of the process that connected.
    generation: u64,
}

fn conv_remote(py: Python<'_>, (remote, home): (RemoteBridge, HomeLoop)) -> PyResult<Py<PyAny>> {
    let max_depth = Limits::default().max_json_depth;
    Ok(Py::new(py, PyRemote { remote, home, max_depth, generation: fork_generation() })?.into_any())
}

impl PyRemote {
    /// Refuse a remote bridge carried over from the parent by `fork()`.
    fn check(&self, py: Python<'_>) -> PyResult<()> {
        check_not_forked(
            self.generation,
            "this RemoteBridge was connected before fork(); connect again in the child process",
        )
        .map_err(|e| to_pyerr(py, &e))
    }

    fn message_arg(
        &self,
        py: Python<'_>,
        destination: &Bound<'_, PyAny>,
        payload: &Bound<'_, PyAny>,
        headers: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<dreamos_bridge::Message> {
        if let Ok(m) = destination.cast::<PyMessage>() {
            if !payload.is_none() {
                return Err(invalid(py, "pass the payload inside the Message, not as a second argument"));
            }
            let m = m.get();
            let mut core = m.to_core(py_to_payload(m.payload.bind(py), self.max_depth).map_err(|e| to_pyerr(py, &e))?);
            core.headers.extend(headers_from_py(py, headers)?);
            return Ok(core);
        }
        let Ok(dest) = destination.cast::<PyString>() else {
            let name = destination.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
            return Err(invalid(py, format!("destination must be a str or a Message, not {name}")));
        };
        let body = py_to_payload(payload, self.max_depth).map_err(|e| to_pyerr(py, &e))?;
        let dest = text_arg(py, dest, "destination", ErrorCode::InvalidMessage)?;
        let mut core = dreamos_bridge::Message::new(dest, body);
        core.headers = headers_from_py(py, headers)?;
        Ok(core)
    }
}

#[pymethods]
impl PyRemote {
    /// Connect and authenticate; handlers registered later default to the caller's loop.
    #[staticmethod]
    #[pyo3(signature = (completer, url, credentials = None, timeout = None, ca_file = None, max_connections = None))]
    fn connect(
        py: Python<'_>,
        completer: &Bound<'_, Completer>,
        url: &Bound<'_, PyString>,
        credentials: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        ca_file: Option<&Bound<'_, PyAny>>,
        max_connections: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        guard(py, || {
            let url = text_arg(py, url, "url", ErrorCode::Config)?.into_owned();
            let creds = match credentials.filter(|c| !c.is_none()) {
                Some(c) => Some(credentials_arg(py, c)?),
                None => None,
            };
            let mut opts = ClientOptions::default();
            if let Some(t) = seconds_arg(py, "timeout", timeout)? {
                opts.connect_timeout = t;
            }
            if let Some(n) = count_arg(py, "max_connections", max_connections)? {
                opts.max_connections = n;
            }
            opts.ca_file = ca_file.filter(|p| !p.is_none()).map(|p| config_path_arg(py, p, "ca_file")).transpose()?;
            let c = completer.get();
            let home: HomeLoop = Arc::new(Mutex::new(Some(c.get_loop(py)?)));
            let fut = async move {
                let remote = match creds {
                    Some(creds) => RemoteBridge::connect(&url, &creds, opts).await?,
                    None => RemoteBridge::connect_anonymous(&url, opts).await?,
                };
                Ok((remote, home))
            };
            spawn(py, c, fut, conv_remote)
        })
    }

    #[getter]
    fn url(&self) -> String {
        self.remote.url().to_string()
    }

    #[getter]
    fn token(&self, py: Python<'_>) -> PyResult<Option<PyToken>> {
        self.check(py)?;
        Ok(self.remote.token().map(PyToken::from))
    }

    /// True in a forked child too: there the connection is not usable.
    fn is_closed(&self) -> bool {
        self.generation != fork_generation() || self.remote.is_closed()
    }

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
        self.check(py)?;
        guard(py, || {
            let msg = self.message_arg(py, destination, payload, headers)?;
            let opts = CallOptions { token: token_arg(py, token)?, timeout: seconds_arg(py, "timeout", timeout)? };
            let r = self.remote.clone();
            spawn(py, completer.get(), async move { r.route(msg, opts).await }, conv_payload)
        })
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
            let r = self.remote.clone();
            spawn(py, completer.get(), async move { r.publish(msg, opts).await.map(|id| id.to_string()) }, conv_str)
        })
    }

    fn authenticate(
        &self,
        py: Python<'_>,
        completer: &Bound<'_, Completer>,
        credentials: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        self.check(py)?;
        guard(py, || {
            let creds = credentials_arg(py, credentials)?;
            let r = self.remote.clone();
            spawn(py, completer.get(), async move { r.authenticate(&creds).await }, conv_token)
        })
    }

    /// `event_loop`: the loop the handler runs on (None: the loop that connected).
    fn register_route(
        &self,
        py: Python<'_>,
        completer: &Bound<'_, Completer>,
        pattern: &Bound<'_, PyString>,
        func: Py<PyAny>,
        event_loop: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        self.check(py)?;
        let pattern = text_arg(py, pattern, "pattern", ErrorCode::InvalidMessage)?.into_owned();
        if !func.bind(py).is_callable() {
            let name = func.bind(py).get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
            return Err(pyo3::exceptions::PyTypeError::new_err(format!("a handler must be callable, not {name}")));
        }
        guard(py, || {
            let h = Arc::new(PyHandler::new(func, event_loop, self.home.clone(), self.max_depth));
            let r = self.remote.clone();
            spawn(py, completer.get(), async move { r.register_route(&pattern, h).await }, conv_none)
        })
    }

    fn unregister_route(&self, py: Python<'_>, pattern: &Bound<'_, PyString>) -> PyResult<bool> {
        self.check(py)?;
        Ok(self.remote.unregister_route(&text_arg(py, pattern, "pattern", ErrorCode::InvalidMessage)?))
    }

    fn routes(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        self.check(py)?;
        Ok(self.remote.routes())
    }

    fn metrics(&self, py: Python<'_>, completer: &Bound<'_, Completer>) -> PyResult<Py<PyAny>> {
        self.check(py)?;
        guard(py, || {
            let r = self.remote.clone();
            spawn(py, completer.get(), async move { r.metrics().await }, conv_json)
        })
    }

    fn health(&self, py: Python<'_>, completer: &Bound<'_, Completer>) -> PyResult<Py<PyAny>> {
        self.check(py)?;
        guard(py, || {
            let r = self.remote.clone();
            spawn(py, completer.get(), async move { r.health().await }, conv_json)
        })
    }

    /// In a forked child this refuses too, as a local bridge's `shutdown()`
    /// does, and touches nothing: the client's locks may have been held by
    /// the parent's threads at the fork.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.check(py)?;
        self.remote.close();
        Ok(())
    }
}
