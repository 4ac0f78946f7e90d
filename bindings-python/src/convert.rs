//! Python objects ⇄ message payloads.
//!
//! `pythonize` has no release for pyo3 0.30, and the walk is short: JSON-shaped
//! values (dict with str keys, list, tuple, str, int, float, bool, None) become
//! `serde_json::Value`; `bytes`/`bytearray` as the whole payload become
//! [`Payload::Bytes`]. Anything else is refused with `INVALID_MESSAGE` naming
//! the type, before the engine sees it. The walk has its own depth cap so that
//! a self-referencing list or a 100,000-deep nest cannot overflow the stack;
//! the engine's `limits.max_json_depth` check then applies as everywhere.
//! The same walk reads credentials and configuration dicts; its errors name
//! what was converted ([`Subject`]), so a bad api_key is not called a payload.

use dreamos_bridge::message::Limits;
use dreamos_bridge::{BridgeError, Payload};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};

use crate::capi::{str_of, utf8_len};

/// What is being converted: the errors name it, with the right verb.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    /// A message payload or a handler's reply.
    Payload,
    /// `authenticate`'s / `connect`'s credentials: their values are secrets
    /// (no error quotes a value, for any subject).
    Credentials,
    /// A configuration dict.
    Config,
}

impl Subject {
    /// "payload contains" / "credentials contain".
    fn contains(self) -> &'static str {
        match self {
            Subject::Payload => "payload contains",
            Subject::Credentials => "credentials contain",
            Subject::Config => "the configuration contains",
        }
    }

    /// "payload has" / "credentials have".
    fn has(self) -> &'static str {
        match self {
            Subject::Payload => "payload has",
            Subject::Credentials => "credentials have",
            Subject::Config => "the configuration has",
        }
    }

    /// "payload is" / "credentials are".
    fn is(self) -> &'static str {
        match self {
            Subject::Payload => "payload is",
            Subject::Credentials => "credentials are",
            Subject::Config => "the configuration is",
        }
    }
}

/// Build a payload from a Python object. `max_depth` is the engine's limit.
pub fn py_to_payload(obj: &Bound<'_, PyAny>, max_depth: usize) -> Result<Payload, BridgeError> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Payload::Bytes(bytes::Bytes::copy_from_slice(b.as_bytes())));
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Ok(Payload::Bytes(bytes::Bytes::from(b.to_vec())));
    }
    py_to_value(obj, Subject::Payload, 1, max_depth).map(Payload::Json)
}

fn too_deep(subject: Subject, max_depth: usize) -> BridgeError {
    // Only a payload's limit is the configurable one.
    let limit = if subject == Subject::Payload { " (limits.max_json_depth)" } else { "" };
    BridgeError::invalid(format!("{} nested deeper than {max_depth} levels{limit}; flatten it", subject.is()))
}

fn not_json(subject: Subject, obj: &Bound<'_, PyAny>) -> BridgeError {
    let name = obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
    let hint = match subject {
        Subject::Payload if obj.is_instance_of::<PyBytes>() || obj.is_instance_of::<PyByteArray>() => {
            "bytes are accepted only as the whole payload"
        }
        Subject::Payload => "use dict, list, tuple, str, int, float, bool or None (or bytes as the whole payload)",
        Subject::Credentials | Subject::Config => "use dict, list, tuple, str, int, float, bool or None",
    };
    BridgeError::invalid(format!("{} an object of type {name:?}, which is not JSON-shaped: {hint}", subject.contains()))
}

fn bad_str(subject: Subject) -> BridgeError {
    let hint = if subject == Subject::Payload { "; encode it first" } else { "" };
    BridgeError::invalid(format!("{} a str that is not valid UTF-8 (lone surrogates){hint}", subject.contains()))
}

fn bad_key(subject: Subject) -> BridgeError {
    BridgeError::invalid(format!("{} a dict key that is not valid UTF-8 (lone surrogates)", subject.has()))
}

/// Python → JSON. `depth` counts containers, as the engine's limit does.
pub fn py_to_value(
    obj: &Bound<'_, PyAny>,
    subject: Subject,
    depth: usize,
    max_depth: usize,
) -> Result<Value, BridgeError> {
    if let Ok(s) = obj.cast::<PyString>() {
        return str_of(s).map(|s| Value::String(s.into_owned())).map_err(|_| bad_str(subject));
    }
    if obj.is_none() {
        return Ok(Value::Null);
    }
    // bool before int: bool is an int subclass.
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if let Ok(i) = obj.cast::<PyInt>() {
        if let Ok(v) = i.extract::<i64>() {
            return Ok(Value::Number(v.into()));
        }
        if let Ok(v) = i.extract::<u64>() {
            return Ok(Value::Number(v.into()));
        }
        return Err(BridgeError::invalid(format!(
            "{} an int outside the 64-bit range; send it as a str",
            subject.contains()
        )));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Number::from_f64(f.value()).map(Value::Number).ok_or_else(|| {
            BridgeError::invalid(format!("{} NaN or infinity, which JSON cannot carry", subject.contains()))
        });
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        if depth > max_depth {
            return Err(too_deep(subject, max_depth));
        }
        let mut map = Map::with_capacity(d.len());
        for (k, v) in d.iter() {
            let key = match k.cast::<PyString>() {
                Ok(s) => str_of(s).map_err(|_| bad_key(subject))?,
                Err(_) => {
                    let name = k.get_type().name().map(|n| n.to_string()).unwrap_or_default();
                    return Err(BridgeError::invalid(format!(
                        "{} a dict key of type {name:?}; JSON object keys must be str",
                        subject.has()
                    )));
                }
            };
            map.insert(key.into_owned(), py_to_value(&v, subject, depth + 1, max_depth)?);
        }
        return Ok(Value::Object(map));
    }
    if let Ok(l) = obj.cast::<PyList>() {
        if depth > max_depth {
            return Err(too_deep(subject, max_depth));
        }
        let mut out = Vec::with_capacity(l.len());
        for v in l.iter() {
            out.push(py_to_value(&v, subject, depth + 1, max_depth)?);
        }
        return Ok(Value::Array(out));
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        if depth > max_depth {
            return Err(too_deep(subject, max_depth));
        }
        let mut out = Vec::with_capacity(t.len());
        for v in t.iter() {
            out.push(py_to_value(&v, subject, depth + 1, max_depth)?);
        }
        return Ok(Value::Array(out));
    }
    Err(not_json(subject, obj))
}

/// Check that a handler's reply is JSON-shaped without building a copy
/// (the in-loop fast path hands the object itself to the caller).
pub fn check_reply(obj: &Bound<'_, PyAny>, max_depth: usize) -> Result<(), BridgeError> {
    if obj.is_instance_of::<PyBytes>() || obj.is_instance_of::<PyByteArray>() {
        return Ok(());
    }
    Walk { max_depth, max_bytes: usize::MAX, size: 0 }.value(obj, 1)
}

/// Validate a payload object as the engine validates a converted one
/// (`dreamos_bridge::message::validate_payload`: JSON-shaped, nesting within
/// `limits.max_json_depth`, size estimated the same way within
/// `limits.max_payload_bytes`), without building a copy: for
/// `BridgeManager::begin_with`, so that a payload bound for a Python handler
/// on the caller's loop is never converted at all.
pub fn check_payload(obj: &Bound<'_, PyAny>, limits: &Limits) -> Result<(), BridgeError> {
    let size = if let Ok(b) = obj.cast::<PyBytes>() {
        b.as_bytes().len()
    } else if let Ok(b) = obj.cast::<PyByteArray>() {
        b.len()
    } else {
        let mut w = Walk { max_depth: limits.max_json_depth, max_bytes: limits.max_payload_bytes, size: 0 };
        w.value(obj, 1)?;
        w.size
    };
    if size > limits.max_payload_bytes {
        return Err(BridgeError::invalid(format!(
            "payload is about {size} bytes; the limit is {} (limits.max_payload_bytes)",
            limits.max_payload_bytes
        )));
    }
    Ok(())
}

/// One walk over a Python value: shape, depth, and the engine's size
/// estimate (`json_walk` in the core's message.rs: null 4, bool 5, number 8,
/// str its UTF-8 + 2, containers 2 + one per item, object keys + 4).
struct Walk {
    max_depth: usize,
    max_bytes: usize,
    size: usize,
}

impl Walk {
    fn value(&mut self, obj: &Bound<'_, PyAny>, depth: usize) -> Result<(), BridgeError> {
        // Past the limit the caller reports the size; stop walking (as the core does).
        if self.size > self.max_bytes {
            return Ok(());
        }
        // SAFETY: `obj` is alive and the GIL is held; `exact` runs no Python
        // code, so the containers it borrows from cannot change meanwhile.
        let before = self.size;
        match unsafe { self.exact(obj.py(), obj.as_ptr(), depth) } {
            Some(r) => r,
            None => {
                self.size = before; // `any` walks this value again from the start
                self.any(obj, depth)
            }
        }
    }

    /// The walk for the exact built-in types (nearly every payload), by type
    /// pointer and borrowed references: no `isinstance` chain, no reference
    /// counting. `None` for anything else (subclasses, other types, an int
    /// past 64 bits), which [`any`](Self::any) then handles.
    unsafe fn exact(
        &mut self,
        py: Python<'_>,
        obj: *mut ffi::PyObject,
        depth: usize,
    ) -> Option<Result<(), BridgeError>> {
        use std::ptr::addr_of_mut;
        // SAFETY (whole body): see `value`; the type objects are CPython's statics.
        unsafe {
            let tp = ffi::Py_TYPE(obj);
            if tp == addr_of_mut!(ffi::PyUnicode_Type) {
                return Some(self.str_len(py, obj).map(|n| self.size += 2 + n));
            }
            if obj == ffi::Py_None() {
                self.size += 4;
                return Some(Ok(()));
            }
            if tp == addr_of_mut!(ffi::PyBool_Type) {
                self.size += 5;
                return Some(Ok(()));
            }
            if tp == addr_of_mut!(ffi::PyLong_Type) {
                let mut overflow: std::os::raw::c_int = 0;
                let v = ffi::PyLong_AsLongLongAndOverflow(obj, &mut overflow);
                if overflow != 0 || (v == -1 && !ffi::PyErr_Occurred().is_null()) {
                    ffi::PyErr_Clear();
                    return None; // past i64: the converter decides (u64, or the error)
                }
                self.size += 8;
                return Some(Ok(()));
            }
            if tp == addr_of_mut!(ffi::PyFloat_Type) {
                if !ffi::PyFloat_AsDouble(obj).is_finite() {
                    return None; // the converter's error
                }
                self.size += 8;
                return Some(Ok(()));
            }
            if tp == addr_of_mut!(ffi::PyDict_Type) {
                if depth > self.max_depth {
                    return Some(Err(too_deep(Subject::Payload, self.max_depth)));
                }
                self.size += 2;
                let mut pos: ffi::Py_ssize_t = 0;
                let mut k: *mut ffi::PyObject = std::ptr::null_mut();
                let mut v: *mut ffi::PyObject = std::ptr::null_mut();
                while ffi::PyDict_Next(obj, &mut pos, &mut k, &mut v) != 0 {
                    if ffi::Py_TYPE(k) != addr_of_mut!(ffi::PyUnicode_Type) {
                        return None; // a str subclass or a bad key: the slow walk says which
                    }
                    match self.str_len(py, k) {
                        Ok(n) => self.size += 4 + n,
                        Err(_) => {
                            return Some(Err(bad_key(Subject::Payload)));
                        }
                    }
                    if let Err(e) = self.value(&Bound::from_borrowed_ptr(py, v), depth + 1) {
                        return Some(Err(e));
                    }
                }
                return Some(Ok(()));
            }
            let list = tp == addr_of_mut!(ffi::PyList_Type);
            if list || tp == addr_of_mut!(ffi::PyTuple_Type) {
                if depth > self.max_depth {
                    return Some(Err(too_deep(Subject::Payload, self.max_depth)));
                }
                let n = if list { ffi::PyList_Size(obj) } else { ffi::PyTuple_Size(obj) };
                self.size += 2 + n.max(0) as usize;
                for i in 0..n {
                    let item = if list { ffi::PyList_GetItem(obj, i) } else { ffi::PyTuple_GetItem(obj, i) };
                    if item.is_null() {
                        ffi::PyErr_Clear();
                        return None;
                    }
                    if let Err(e) = self.value(&Bound::from_borrowed_ptr(py, item), depth + 1) {
                        return Some(Err(e));
                    }
                }
                return Some(Ok(()));
            }
            None
        }
    }

    /// A str's UTF-8 length; lone surrogates are an error.
    unsafe fn str_len(&self, py: Python<'_>, s: *mut ffi::PyObject) -> Result<usize, BridgeError> {
        // SAFETY: `s` is a live exact str (checked by the caller).
        let s = unsafe { Bound::from_borrowed_ptr(py, s) };
        let s = s.cast::<PyString>().map_err(|_| BridgeError::internal("str_len on a non-str"))?;
        utf8_len(s).map_err(|_| bad_str(Subject::Payload))
    }

    /// The walk for every other object: subclasses of the JSON types, and
    /// the errors naming what is wrong.
    fn any(&mut self, obj: &Bound<'_, PyAny>, depth: usize) -> Result<(), BridgeError> {
        if let Ok(s) = obj.cast::<PyString>() {
            self.size += 2 + utf8_len(s).map_err(|_| bad_str(Subject::Payload))?;
            return Ok(());
        }
        if obj.is_none() {
            self.size += 4;
            return Ok(());
        }
        // bool before int: bool is an int subclass.
        if obj.is_instance_of::<PyBool>() {
            self.size += 5;
            return Ok(());
        }
        if obj.is_instance_of::<PyInt>() || obj.is_instance_of::<PyFloat>() {
            // Range and NaN checks are the converter's; reuse it for scalars.
            py_to_value(obj, Subject::Payload, depth, self.max_depth)?;
            self.size += 8;
            return Ok(());
        }
        if let Ok(d) = obj.cast::<PyDict>() {
            if depth > self.max_depth {
                return Err(too_deep(Subject::Payload, self.max_depth));
            }
            self.size += 2;
            for (k, v) in d.iter() {
                let Ok(key) = k.cast::<PyString>() else {
                    // The converter names the key's type.
                    return py_to_value(obj, Subject::Payload, depth, self.max_depth).map(drop);
                };
                self.size += 4 + utf8_len(key).map_err(|_| bad_key(Subject::Payload))?;
                self.value(&v, depth + 1)?;
            }
            return Ok(());
        }
        if let Ok(l) = obj.cast::<PyList>() {
            if depth > self.max_depth {
                return Err(too_deep(Subject::Payload, self.max_depth));
            }
            self.size += 2 + l.len();
            return l.iter().try_for_each(|v| self.value(&v, depth + 1));
        }
        if let Ok(t) = obj.cast::<PyTuple>() {
            if depth > self.max_depth {
                return Err(too_deep(Subject::Payload, self.max_depth));
            }
            self.size += 2 + t.len();
            return t.iter().try_for_each(|v| self.value(&v, depth + 1));
        }
        Err(not_json(Subject::Payload, obj))
    }
}

/// JSON → Python (objects keep their key order).
pub fn value_to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(a) => {
            let list = PyList::empty(py);
            for item in a {
                list.append(value_to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(m) => {
            let dict = PyDict::new(py);
            for (k, item) in m {
                dict.set_item(k, value_to_py(py, item)?)?;
            }
            dict.into_any()
        }
    })
}

/// A payload as the Python object a caller or handler sees.
pub fn payload_to_py<'py>(py: Python<'py>, p: &Payload) -> PyResult<Bound<'py, PyAny>> {
    match p {
        Payload::Json(v) => value_to_py(py, v),
        Payload::Bytes(b) => Ok(PyBytes::new(py, b).into_any()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_json_shapes_and_refuses_others() {
        Python::initialize();
        Python::attach(|py| {
            let v = json!({"a": [1, 2.5, "x", null, true, {"b": -3}], "big": u64::MAX});
            let obj = value_to_py(py, &v).unwrap();
            assert_eq!(py_to_value(&obj, Subject::Payload, 1, 64).unwrap(), v);
            check_reply(&obj, 64).unwrap();

            let bad = py.eval(c"object()", None, None).unwrap();
            let e = py_to_value(&bad, Subject::Payload, 1, 64).unwrap_err();
            assert_eq!(e.code(), dreamos_bridge::ErrorCode::InvalidMessage);
            assert!(e.message().contains("\"object\""), "{}", e.message());
            assert!(check_reply(&bad, 64).is_err());

            let nan = py.eval(c"float('nan')", None, None).unwrap();
            assert!(py_to_value(&nan, Subject::Payload, 1, 64).is_err());
            let huge = py.eval(c"10**30", None, None).unwrap();
            assert!(py_to_value(&huge, Subject::Payload, 1, 64).is_err());
            let key = py.eval(c"{1: 2}", None, None).unwrap();
            assert!(py_to_value(&key, Subject::Payload, 1, 64).is_err());
            assert!(check_reply(&key, 64).is_err());

            // Credentials are named as such, in the plural, and never quoted.
            let secret = py.eval(c"{'api_key': 'dk_secret_\\ud800'}", None, None).unwrap();
            let e = py_to_value(&secret, Subject::Credentials, 1, 8).unwrap_err();
            assert!(e.message().starts_with("credentials contain a str"), "{}", e.message());
            assert!(!e.message().contains("dk_secret"), "{}", e.message());

            let cyclic = py.eval(c"(lambda l: (l.append(l), l)[1])([])", None, None).unwrap();
            let e = py_to_value(&cyclic, Subject::Payload, 1, 64).unwrap_err();
            assert!(e.message().contains("deeper"), "{}", e.message());

            let b = PyBytes::new(py, b"\x00\x01");
            assert_eq!(py_to_payload(b.as_any(), 64).unwrap(), Payload::Bytes(bytes::Bytes::from_static(b"\x00\x01")));
        });
    }
}
