//! `Message` and `Token` as Python sees them.
//!
//! A `Message` keeps its payload as the Python object itself: a handler on
//! the caller's loop receives exactly what the caller passed (after the
//! engine validated a converted copy), with no second conversion.

use std::sync::Arc;

use dreamos_bridge::message::now_millis;
use dreamos_bridge::{BridgeError, ErrorCode, Message, Token};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use uuid::Uuid;

use crate::args::text_arg;
use crate::errors::to_pyerr;

/// A message: destination subject, payload, headers and what the bridge knows about it.
#[pyclass(name = "Message", module = "dreamos_bridge._native", frozen)]
pub struct PyMessage {
    pub id: Uuid,
    pub destination: String,
    /// A struct member (read in place by the interpreter, no getter call):
    /// nearly every handler reads it.
    #[pyo3(get)]
    pub payload: Py<PyAny>,
    pub headers: Vec<(String, String)>,
    pub source: Option<Arc<str>>,
    pub timestamp: u64,
    pub priority: i32,
}

/// Headers from a `dict[str, str]` (or None).
pub fn headers_from_py(py: Python<'_>, headers: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<(String, String)>> {
    let Some(h) = headers.filter(|h| !h.is_none()) else { return Ok(Vec::new()) };
    let Ok(d) = h.cast::<PyDict>() else {
        return Err(to_pyerr(py, &BridgeError::invalid("headers must be a dict of str to str")));
    };
    let mut out = Vec::with_capacity(d.len());
    for (k, v) in d.iter() {
        match (k.cast::<PyString>(), v.cast::<PyString>()) {
            (Ok(k), Ok(v)) => {
                // A lone surrogate cannot travel (headers are UTF-8).
                let text = |s: &Bound<'_, PyString>, what: &str| {
                    text_arg(py, s, what, ErrorCode::InvalidMessage).map(|s| s.into_owned())
                };
                out.push((text(k, "header name")?, text(v, "header value")?))
            }
            _ => return Err(to_pyerr(py, &BridgeError::invalid("headers must be a dict of str to str"))),
        }
    }
    Ok(out)
}

#[pymethods]
impl PyMessage {
    #[new]
    #[pyo3(signature = (destination, payload = None, *, headers = None, priority = None))]
    fn new(
        py: Python<'_>,
        destination: &Bound<'_, PyAny>,
        payload: Option<Py<PyAny>>,
        headers: Option<&Bound<'_, PyAny>>,
        priority: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let Ok(destination) = destination.cast::<PyString>() else {
            let name = destination.get_type().name()?.to_string();
            return Err(to_pyerr(py, &BridgeError::invalid(format!("destination must be a str, not {name}"))));
        };
        let Ok(priority) = priority.map_or(Ok(0), |p| p.extract::<i32>()) else {
            return Err(to_pyerr(py, &BridgeError::invalid("priority must be an int in the 32-bit range")));
        };
        let timestamp = now_millis();
        Ok(PyMessage {
            id: dreamos_bridge::message::new_id(timestamp),
            destination: text_arg(py, destination, "destination", ErrorCode::InvalidMessage)?.into_owned(),
            payload: payload.unwrap_or_else(|| py.None()),
            headers: headers_from_py(py, headers)?,
            source: None,
            timestamp,
            priority,
        })
    }

    /// The message id (UUIDv7, time-ordered).
    #[getter]
    fn id(&self) -> String {
        self.id.to_string()
    }
    #[getter]
    fn destination(&self) -> &str {
        &self.destination
    }
    #[getter]
    fn headers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in &self.headers {
            d.set_item(k, v)?;
        }
        Ok(d)
    }
    /// The authenticated principal that sent it, or None without security.
    #[getter]
    fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }
    /// Creation time, Unix seconds.
    #[getter]
    fn timestamp(&self) -> f64 {
        self.timestamp as f64 / 1000.0
    }
    #[getter]
    fn priority(&self) -> i32 {
        self.priority
    }
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "Message(id={:?}, destination={:?}, payload={}, source={:?})",
            self.id.to_string(),
            self.destination,
            self.payload.bind(py).repr()?,
            self.source.as_deref()
        ))
    }
}

impl PyMessage {
    /// The engine's message, with `payload` converted by the caller.
    pub fn to_core(&self, payload: dreamos_bridge::Payload) -> Message {
        let mut m = Message::new(self.destination.clone(), payload);
        m.id = self.id;
        m.headers = self.headers.clone();
        m.timestamp = self.timestamp;
        m.priority = self.priority;
        m
    }

    /// A Python message object for a handler, from the engine's.
    pub fn create(py: Python<'_>, m: &Message, payload: Py<PyAny>) -> PyResult<Py<PyMessage>> {
        Py::new(py, Self::from_core(m, payload))
    }

    /// A Python message for a handler, from the engine's.
    pub fn from_core(m: &Message, payload: Py<PyAny>) -> Self {
        PyMessage {
            id: m.id,
            destination: m.destination.clone(),
            payload,
            headers: m.headers.clone(),
            source: m.source.clone(),
            timestamp: m.timestamp,
            priority: m.priority,
        }
    }
}

/// A bridge token from `authenticate`.
#[pyclass(name = "Token", module = "dreamos_bridge._native", frozen)]
pub struct PyToken {
    /// The JWT string to present.
    #[pyo3(get)]
    pub value: String,
    #[pyo3(get)]
    pub principal: String,
    #[pyo3(get)]
    pub roles: Vec<String>,
    /// Unix seconds.
    #[pyo3(get)]
    pub expires_at: u64,
}

#[pymethods]
impl PyToken {
    fn __repr__(&self) -> String {
        // The value is a credential: never in a repr.
        format!("Token(principal={:?}, roles={:?}, expires_at={})", self.principal, self.roles, self.expires_at)
    }
    fn __str__(&self) -> &str {
        &self.value
    }
}

impl From<Token> for PyToken {
    fn from(t: Token) -> Self {
        PyToken { value: t.value, principal: t.principal, roles: t.roles, expires_at: t.expires_at }
    }
}

/// A token argument: `Token`, `str` or None.
pub fn token_arg(py: Python<'_>, token: Option<&Bound<'_, PyAny>>) -> PyResult<Option<String>> {
    let Some(t) = token.filter(|t| !t.is_none()) else { return Ok(None) };
    if let Ok(t) = t.cast::<PyToken>() {
        return Ok(Some(t.get().value.clone()));
    }
    if let Ok(s) = t.cast::<PyString>() {
        // A token is ASCII when genuine: one with a lone surrogate is simply not valid.
        return text_arg(py, s, "token", ErrorCode::Unauthenticated).map(|s| Some(s.into_owned()));
    }
    let name = t.get_type().name()?.to_string();
    Err(to_pyerr(py, &BridgeError::unauthenticated(format!("token must be a Token or a str, not {name}"))))
}
