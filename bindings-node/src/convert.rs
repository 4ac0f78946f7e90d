//! JS values ↔ engine values, written against the raw N-API.
//!
//! Every call crosses this module twice (payload in, reply out), so it walks
//! values directly instead of going through serde, and it is where non-JSON
//! input (functions, symbols, BigInt, cycles, NaN) is turned into a clear
//! `INVALID_MESSAGE` before the engine sees it.

use std::ffi::c_void;
use std::ptr;

use bytes::Bytes;
use dreamos_bridge::{BridgeError, Message, Payload};
use napi::sys;
use serde_json::{Map, Number, Value};

/// A raw N-API value (only valid inside the current call's handle scope).
pub(crate) type RawValue = sys::napi_value;

/// Why a JS value could not be converted: the path to the bad part and what it was.
#[derive(Debug)]
pub(crate) struct ConvError {
    path: Vec<String>,
    what: String,
}

impl ConvError {
    fn new(what: impl Into<String>) -> Self {
        ConvError { path: Vec::new(), what: what.into() }
    }

    fn at(mut self, seg: impl Into<String>) -> Self {
        self.path.push(seg.into());
        self
    }

    /// `INVALID_MESSAGE` naming `what_is_it` (e.g. "payload") and the path.
    pub(crate) fn into_bridge(self, what_is_it: &str) -> BridgeError {
        let path: String = self.path.iter().rev().map(String::as_str).collect();
        BridgeError::invalid(format!("{what_is_it}{path} {}", self.what))
    }
}

type CResult<T> = Result<T, ConvError>;

/// An N-API status as a conversion result. Reading a property can run JS (a
/// getter, a Proxy trap) that throws: the exception is taken off the env and
/// its message put in the error, so the call rejects with `INVALID_MESSAGE`
/// instead of the caller's exception escaping synchronously.
fn ok(env: sys::napi_env, status: sys::napi_status) -> CResult<()> {
    if status == sys::Status::napi_ok {
        return Ok(());
    }
    match take_exception(env) {
        Some(thrown) => Err(ConvError::new(format!("could not be read: {thrown}"))),
        None => Err(ConvError::new(format!("could not be read (N-API status {status})"))),
    }
}

/// Take the pending JS exception, if any, and describe it: an Error's
/// `message`, or the thrown value as a string. Reading that message may
/// itself throw; such a throw is dropped too, leaving the env clean.
fn take_exception(env: sys::napi_env) -> Option<String> {
    let mut pending = false;
    let mut exc = ptr::null_mut();
    // SAFETY: plain queries on the current env.
    unsafe {
        if sys::napi_is_exception_pending(env, &mut pending) != sys::Status::napi_ok || !pending {
            return None;
        }
        if sys::napi_get_and_clear_last_exception(env, &mut exc) != sys::Status::napi_ok || exc.is_null() {
            return Some("it threw".to_string());
        }
    }
    let text = describe_thrown(env, exc);
    clear_exception(env);
    // A message is for people: bounded, so a huge thrown string stays out of logs.
    const MAX: usize = 200;
    Some(match text {
        Some(t) if t.len() > MAX => {
            let cut = (0..=MAX).rev().find(|i| t.is_char_boundary(*i)).unwrap_or(0);
            format!("{}...", &t[..cut])
        }
        Some(t) if !t.is_empty() => t,
        _ => "it threw".to_string(),
    })
}

fn describe_thrown(env: sys::napi_env, exc: RawValue) -> Option<String> {
    let mut is_error = false;
    // SAFETY: `exc` is a live value of `env`.
    unsafe { sys::napi_is_error(env, exc, &mut is_error) };
    if is_error {
        let mut msg = ptr::null_mut();
        // SAFETY: `exc` is an object; a throwing `message` getter fails the call (cleared by the caller).
        let status = unsafe { sys::napi_get_named_property(env, exc, c"message".as_ptr(), &mut msg) };
        if status == sys::Status::napi_ok && type_of(env, msg) == sys::ValueType::napi_string {
            return get_string(env, msg).ok();
        }
        return None;
    }
    let mut s = ptr::null_mut();
    // SAFETY: coercion may run the value's toString; a throw fails the call (cleared by the caller).
    let status = unsafe { sys::napi_coerce_to_string(env, exc, &mut s) };
    if status == sys::Status::napi_ok { get_string(env, s).ok() } else { None }
}

/// Turn an N-API status into an `INTERNAL` error.
pub(crate) fn check(status: sys::napi_status, what: &str) -> Result<(), BridgeError> {
    if status == sys::Status::napi_ok {
        Ok(())
    } else {
        Err(BridgeError::internal(format!("N-API call failed while {what} (status {status})")))
    }
}

pub(crate) fn type_of(env: sys::napi_env, v: RawValue) -> sys::napi_valuetype {
    let mut t = 0;
    // SAFETY: `v` is a live value of `env`; on failure `t` stays `undefined`.
    unsafe { sys::napi_typeof(env, v, &mut t) };
    t
}

fn is(env: sys::napi_env, v: RawValue, f: unsafe extern "C" fn(sys::napi_env, RawValue, *mut bool) -> i32) -> bool {
    let mut r = false;
    // SAFETY: `f` is one of the napi_is_* predicates, called on a live value.
    unsafe { f(env, v, &mut r) };
    r
}

pub(crate) fn is_promise(env: sys::napi_env, v: RawValue) -> bool {
    is(env, v, sys::napi_is_promise)
}

/// Read a JS string.
pub(crate) fn get_string(env: sys::napi_env, v: RawValue) -> CResult<String> {
    if type_of(env, v) != sys::ValueType::napi_string {
        return Err(ConvError::new("must be a string"));
    }
    // Most strings (subjects, keys) are short: one call into a stack buffer.
    // A cut-off copy stops at a character boundary, so up to 3 bytes short
    // of the buffer's room; anything shorter than that is the whole string.
    let mut small = [0u8; 256];
    let mut written = 0usize;
    // SAFETY: `small` holds 256 bytes, room for 255 and the NUL.
    ok(env, unsafe { sys::napi_get_value_string_utf8(env, v, small.as_mut_ptr().cast(), small.len(), &mut written) })?;
    if written + 4 < small.len() {
        return std::str::from_utf8(&small[..written])
            .map(str::to_string)
            .map_err(|_| ConvError::new("is not valid UTF-8"));
    }
    let mut len = 0usize;
    // SAFETY: a null buffer asks for the length only.
    ok(env, unsafe { sys::napi_get_value_string_utf8(env, v, ptr::null_mut(), 0, &mut len) })?;
    let mut buf = vec![0u8; len + 1];
    // SAFETY: `buf` holds `len + 1` bytes, room for the string and its NUL.
    ok(env, unsafe { sys::napi_get_value_string_utf8(env, v, buf.as_mut_ptr().cast(), len + 1, &mut written) })?;
    buf.truncate(written);
    String::from_utf8(buf).map_err(|_| ConvError::new("is not valid UTF-8"))
}

fn get_f64(env: sys::napi_env, v: RawValue) -> CResult<f64> {
    let mut n = 0.0;
    // SAFETY: `v` is a number (checked by the caller).
    ok(env, unsafe { sys::napi_get_value_double(env, v, &mut n) })?;
    Ok(n)
}

/// A named property of an object (`undefined` if absent).
pub(crate) fn get_named(env: sys::napi_env, obj: RawValue, name: &str) -> CResult<RawValue> {
    let key = create_string(env, name).map_err(|_| ConvError::new("could not be read"))?;
    let mut out = ptr::null_mut();
    // SAFETY: `obj` is an object of `env`.
    ok(env, unsafe { sys::napi_get_property(env, obj, key, &mut out) })?;
    Ok(out)
}

/// Is this `undefined` or `null`?
pub(crate) fn is_nullish(env: sys::napi_env, v: RawValue) -> bool {
    v.is_null() || matches!(type_of(env, v), sys::ValueType::napi_undefined | sys::ValueType::napi_null)
}

/// Bytes of a Buffer, Uint8Array or ArrayBuffer, if `v` is one.
fn as_bytes(env: sys::napi_env, v: RawValue) -> CResult<Option<Bytes>> {
    if is(env, v, sys::napi_is_typedarray) {
        let (mut kind, mut len, mut data, mut ab, mut off) = (0, 0usize, ptr::null_mut::<c_void>(), ptr::null_mut(), 0);
        // SAFETY: `v` is a typed array.
        ok(env, unsafe { sys::napi_get_typedarray_info(env, v, &mut kind, &mut len, &mut data, &mut ab, &mut off) })?;
        if !matches!(
            kind,
            sys::TypedarrayType::uint8_array
                | sys::TypedarrayType::uint8_clamped_array
                | sys::TypedarrayType::int8_array
        ) {
            return Err(ConvError::new("is a typed array other than Uint8Array: send a Buffer or Uint8Array"));
        }
        return Ok(Some(copy_bytes(data, len)));
    }
    if is(env, v, sys::napi_is_arraybuffer) {
        let (mut data, mut len) = (ptr::null_mut::<c_void>(), 0usize);
        // SAFETY: `v` is an ArrayBuffer.
        ok(env, unsafe { sys::napi_get_arraybuffer_info(env, v, &mut data, &mut len) })?;
        return Ok(Some(copy_bytes(data, len)));
    }
    Ok(None)
}

fn copy_bytes(data: *mut c_void, len: usize) -> Bytes {
    if data.is_null() || len == 0 {
        return Bytes::new();
    }
    // SAFETY: N-API reported `len` readable bytes at `data`; copied before returning to JS.
    Bytes::copy_from_slice(unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) })
}

/// A payload: Buffer/Uint8Array/ArrayBuffer as bytes, anything else as JSON.
/// `undefined` is `null`. `try_text`: try the text form first (false when
/// the caller already did and it declined).
pub(crate) fn to_payload(env: sys::napi_env, v: RawValue, max_depth: usize, try_text: bool) -> CResult<Payload> {
    if v.is_null() {
        return Ok(Payload::Json(Value::Null));
    }
    if type_of(env, v) == sys::ValueType::napi_object {
        // Plain JSON crosses as text; anything else is walked (see json_text).
        if try_text && let Some(json) = crate::json_text::encode(env, v, max_depth) {
            return Ok(Payload::Json(json));
        }
        if let Some(b) = as_bytes(env, v)? {
            return Ok(Payload::Bytes(b));
        }
    }
    to_json(env, v, max_depth).map(Payload::Json)
}

/// A JSON value. Follows `JSON.stringify` where it is lossless (`undefined`
/// object members are left out, `toJSON()` is honoured) and refuses what
/// JSON cannot carry.
pub(crate) fn to_json(env: sys::napi_env, v: RawValue, max_depth: usize) -> CResult<Value> {
    walk(env, v, 0, max_depth)
}

fn walk(env: sys::napi_env, v: RawValue, depth: usize, max_depth: usize) -> CResult<Value> {
    use sys::ValueType as T;
    match type_of(env, v) {
        T::napi_undefined | T::napi_null => Ok(Value::Null),
        T::napi_boolean => {
            let mut b = false;
            // SAFETY: `v` is a boolean.
            ok(env, unsafe { sys::napi_get_value_bool(env, v, &mut b) })?;
            Ok(Value::Bool(b))
        }
        T::napi_number => {
            let n = get_f64(env, v)?;
            if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
                Ok(Value::Number(Number::from(n as i64)))
            } else {
                Number::from_f64(n)
                    .map(Value::Number)
                    .ok_or_else(|| ConvError::new(format!("is {n}, which JSON cannot carry")))
            }
        }
        T::napi_string => get_string(env, v).map(Value::String),
        T::napi_object => {
            if depth >= max_depth {
                return Err(ConvError::new(format!(
                    "nests deeper than {max_depth} levels (limits.max_json_depth) or refers to itself: flatten it"
                )));
            }
            if is(env, v, sys::napi_is_array) {
                let mut len = 0u32;
                // SAFETY: `v` is an array.
                ok(env, unsafe { sys::napi_get_array_length(env, v, &mut len) })?;
                let mut items = Vec::with_capacity(len as usize);
                for i in 0..len {
                    let mut item = ptr::null_mut();
                    // SAFETY: index within the array's length.
                    ok(env, unsafe { sys::napi_get_element(env, v, i, &mut item) })
                        .map_err(|e| e.at(format!("[{i}]")))?;
                    items.push(walk(env, item, depth + 1, max_depth).map_err(|e| e.at(format!("[{i}]")))?);
                }
                return Ok(Value::Array(items));
            }
            if as_bytes(env, v)?.is_some() {
                return Err(ConvError::new(
                    "is binary data inside a JSON value: send bytes as the whole payload, or base64-encode them",
                ));
            }
            let to_json_fn = get_named(env, v, "toJSON")?;
            if type_of(env, to_json_fn) == T::napi_function {
                let mut out = ptr::null_mut();
                // SAFETY: calling the object's own toJSON with itself as `this`.
                ok(env, unsafe { sys::napi_call_function(env, v, to_json_fn, 0, ptr::null(), &mut out) })
                    .map_err(|_| ConvError::new("has a toJSON() that threw"))?;
                return walk(env, out, depth + 1, max_depth);
            }
            let mut keys = ptr::null_mut();
            // SAFETY: own, enumerable, string keys, like Object.keys.
            ok(env, unsafe {
                sys::napi_get_all_property_names(
                    env,
                    v,
                    sys::KeyCollectionMode::own_only,
                    sys::KeyFilter::enumerable | sys::KeyFilter::skip_symbols,
                    sys::KeyConversion::numbers_to_strings,
                    &mut keys,
                )
            })?;
            let mut len = 0u32;
            // SAFETY: `keys` is an array.
            ok(env, unsafe { sys::napi_get_array_length(env, keys, &mut len) })?;
            let mut map = Map::with_capacity(len as usize);
            for i in 0..len {
                let (mut key, mut item) = (ptr::null_mut(), ptr::null_mut());
                // SAFETY: index within the key array; `key` is a property of `v`.
                ok(env, unsafe { sys::napi_get_element(env, keys, i, &mut key) })?;
                let name = get_string(env, key)?;
                ok(env, unsafe { sys::napi_get_property(env, v, key, &mut item) })
                    .map_err(|e| e.at(format!(".{name}")))?;
                if type_of(env, item) == T::napi_undefined {
                    continue;
                }
                let value = walk(env, item, depth + 1, max_depth).map_err(|e| e.at(format!(".{name}")))?;
                map.insert(name, value);
            }
            Ok(Value::Object(map))
        }
        T::napi_function => Err(ConvError::new("is a function, which JSON cannot carry")),
        T::napi_symbol => Err(ConvError::new("is a Symbol, which JSON cannot carry")),
        T::napi_bigint => Err(ConvError::new("is a BigInt, which JSON cannot carry: send it as a string")),
        _ => Err(ConvError::new("is a native handle, which JSON cannot carry")),
    }
}

// ---------------------------------------------------------------------------
// Rust → JS.

type JResult<T> = Result<T, BridgeError>;

pub(crate) fn create_string(env: sys::napi_env, s: &str) -> JResult<RawValue> {
    let mut out = ptr::null_mut();
    // SAFETY: `s` is valid UTF-8 of the given length.
    check(
        unsafe { sys::napi_create_string_utf8(env, s.as_ptr().cast(), s.len() as isize, &mut out) },
        "creating a string",
    )?;
    Ok(out)
}

pub(crate) fn create_f64(env: sys::napi_env, n: f64) -> JResult<RawValue> {
    let mut out = ptr::null_mut();
    // SAFETY: plain value creation.
    check(unsafe { sys::napi_create_double(env, n, &mut out) }, "creating a number")?;
    Ok(out)
}

pub(crate) fn create_bool(env: sys::napi_env, b: bool) -> JResult<RawValue> {
    let mut out = ptr::null_mut();
    // SAFETY: plain value creation.
    check(unsafe { sys::napi_get_boolean(env, b, &mut out) }, "creating a boolean")?;
    Ok(out)
}

pub(crate) fn null(env: sys::napi_env) -> JResult<RawValue> {
    let mut out = ptr::null_mut();
    // SAFETY: plain value creation.
    check(unsafe { sys::napi_get_null(env, &mut out) }, "creating null")?;
    Ok(out)
}

pub(crate) fn undefined(env: sys::napi_env) -> JResult<RawValue> {
    let mut out = ptr::null_mut();
    // SAFETY: plain value creation.
    check(unsafe { sys::napi_get_undefined(env, &mut out) }, "creating undefined")?;
    Ok(out)
}

pub(crate) fn create_object(env: sys::napi_env) -> JResult<RawValue> {
    let mut out = ptr::null_mut();
    // SAFETY: plain value creation.
    check(unsafe { sys::napi_create_object(env, &mut out) }, "creating an object")?;
    Ok(out)
}

pub(crate) fn set(env: sys::napi_env, obj: RawValue, name: &str, value: RawValue) -> JResult<()> {
    let key = create_string(env, name)?;
    // SAFETY: `obj` is an object we created.
    check(unsafe { sys::napi_set_property(env, obj, key, value) }, "setting a property")
}

/// A JSON value as a JS value.
pub(crate) fn from_json(env: sys::napi_env, v: &Value) -> JResult<RawValue> {
    match v {
        Value::Null => null(env),
        Value::Bool(b) => create_bool(env, *b),
        Value::Number(n) => create_f64(env, n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => create_string(env, s),
        Value::Array(items) => {
            if let Some(js) = crate::json_text::to_js(env, v) {
                return Ok(js);
            }
            let mut arr = ptr::null_mut();
            // SAFETY: plain value creation.
            check(unsafe { sys::napi_create_array_with_length(env, items.len(), &mut arr) }, "creating an array")?;
            for (i, item) in items.iter().enumerate() {
                let value = from_json(env, item)?;
                // SAFETY: `arr` is an array we created.
                check(unsafe { sys::napi_set_element(env, arr, i as u32, value) }, "filling an array")?;
            }
            Ok(arr)
        }
        Value::Object(map) => {
            if let Some(js) = crate::json_text::to_js(env, v) {
                return Ok(js);
            }
            let obj = create_object(env)?;
            for (k, item) in map {
                let value = from_json(env, item)?;
                set(env, obj, k, value)?;
            }
            Ok(obj)
        }
    }
}

/// A payload as a JS value: JSON, or a Buffer for bytes.
pub(crate) fn from_payload(env: sys::napi_env, p: &Payload) -> JResult<RawValue> {
    match p {
        Payload::Json(v) => from_json(env, v),
        Payload::Bytes(b) => {
            let (mut data, mut out) = (ptr::null_mut(), ptr::null_mut());
            // SAFETY: copies `b.len()` bytes from `b` into a new Buffer.
            check(
                unsafe { sys::napi_create_buffer_copy(env, b.len(), b.as_ptr().cast(), &mut data, &mut out) },
                "creating a Buffer",
            )?;
            Ok(out)
        }
    }
}

/// The message object a JS handler receives.
pub(crate) fn from_message(env: sys::napi_env, msg: &Message) -> JResult<RawValue> {
    let obj = create_object(env)?;
    set(env, obj, "id", create_string(env, &msg.id.to_string())?)?;
    set(env, obj, "destination", create_string(env, &msg.destination)?)?;
    set(env, obj, "payload", from_payload(env, &msg.payload)?)?;
    let headers = create_object(env)?;
    for (k, v) in &msg.headers {
        set(env, headers, k, create_string(env, v)?)?;
    }
    set(env, obj, "headers", headers)?;
    let source = match &msg.source {
        Some(s) => create_string(env, s)?,
        None => null(env)?,
    };
    set(env, obj, "source", source)?;
    set(env, obj, "timestamp", create_f64(env, msg.timestamp as f64)?)?;
    set(env, obj, "priority", create_f64(env, f64::from(msg.priority))?)?;
    Ok(obj)
}

/// A `BridgeError` as a JS `Error` with `.code`, and `.retryAfter`
/// (seconds), `.status` and `.body` where they apply.
pub(crate) fn from_error(env: sys::napi_env, e: &BridgeError) -> JResult<RawValue> {
    let code = create_string(env, e.code().as_str())?;
    let msg = create_string(env, e.message())?;
    let mut err = ptr::null_mut();
    // SAFETY: `code` and `msg` are strings; napi_create_error sets `.code`.
    check(unsafe { sys::napi_create_error(env, code, msg, &mut err) }, "creating an Error")?;
    if let Some(r) = e.retry_after() {
        set(env, err, "retryAfter", create_f64(env, r.as_secs_f64())?)?;
    }
    if let Some(s) = e.status() {
        set(env, err, "status", create_f64(env, f64::from(s))?)?;
    }
    if let Some(b) = e.body() {
        set(env, err, "body", create_string(env, b)?)?;
    }
    Ok(err)
}

/// The message of a thrown JS value: `err.message` for Errors, else its string form.
pub(crate) fn thrown_message(env: sys::napi_env, v: RawValue) -> String {
    if type_of(env, v) == sys::ValueType::napi_object
        && let Ok(m) = get_named(env, v, "message")
        && let Ok(s) = get_string(env, m)
    {
        return s;
    }
    let mut s = ptr::null_mut();
    // SAFETY: String(v); on failure fall through to a generic text.
    if unsafe { sys::napi_coerce_to_string(env, v, &mut s) } == sys::Status::napi_ok
        && let Ok(text) = get_string(env, s)
    {
        return text;
    }
    clear_exception(env);
    "the handler threw a value that cannot be shown".into()
}

/// Drop a pending JS exception (from a call we made on the user's behalf
/// and already turned into an error), so that later N-API calls work.
pub(crate) fn clear_exception(env: sys::napi_env) {
    let mut pending = false;
    // SAFETY: plain queries on the current env.
    unsafe {
        if sys::napi_is_exception_pending(env, &mut pending) == sys::Status::napi_ok && pending {
            let mut exc = ptr::null_mut();
            sys::napi_get_and_clear_last_exception(env, &mut exc);
        }
    }
}
