//! What travels through the bridge: [`Message`], its [`Payload`], and the
//! validation every message passes before anything else looks at it.
//!
//! Validation lives here, beside the types it checks, so that every entry
//! point (Rust, the bindings, the server) applies exactly the same rules.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{BridgeError, Result};
use crate::routing::subject;

/// A message body: any JSON value, or raw bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Payload {
    /// A JSON value (objects keep their key order).
    Json(serde_json::Value),
    /// Opaque bytes (sent to HTTP services as `application/octet-stream`).
    Bytes(Bytes),
}

impl Default for Payload {
    fn default() -> Self {
        Payload::Json(serde_json::Value::Null)
    }
}

impl From<serde_json::Value> for Payload {
    fn from(v: serde_json::Value) -> Self {
        Payload::Json(v)
    }
}

impl From<Bytes> for Payload {
    fn from(b: Bytes) -> Self {
        Payload::Bytes(b)
    }
}

impl From<Vec<u8>> for Payload {
    fn from(b: Vec<u8>) -> Self {
        Payload::Bytes(Bytes::from(b))
    }
}

impl Payload {
    /// The JSON value, if this is a JSON payload.
    pub fn as_json(&self) -> Option<&serde_json::Value> {
        match self {
            Payload::Json(v) => Some(v),
            Payload::Bytes(_) => None,
        }
    }

    /// The payload as JSON: bytes become `{"$bytes": "<base64>"}` so that
    /// structured outputs (C, dead letters) can carry them.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Payload::Json(v) => v.clone(),
            Payload::Bytes(b) => {
                use base64::Engine;
                serde_json::json!({ "$bytes": base64::engine::general_purpose::STANDARD.encode(b) })
            }
        }
    }
}

/// Message headers: ordered name/value pairs. Names are case-sensitive here;
/// HTTP delivery lower-cases them.
pub type Headers = Vec<(String, String)>;

/// One message: a destination subject, a payload, and what the bridge knows
/// about it.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    /// UUIDv7: time-ordered, unique; also the idempotency key on delivery.
    pub id: Uuid,
    /// The destination subject, e.g. `services.weather.current`.
    pub destination: String,
    /// The body.
    pub payload: Payload,
    /// Caller-supplied headers (validated: no control characters but tab).
    pub headers: Headers,
    /// The authenticated principal that sent it; `None` without security.
    pub source: Option<Arc<str>>,
    /// Creation time, milliseconds since the Unix epoch.
    pub timestamp: u64,
    /// Higher goes first when a route's queue is contended.
    pub priority: i32,
    /// When the caller stops waiting. Set by the bridge from the timeout.
    #[serde(skip)]
    pub deadline: Option<Instant>,
}

impl Message {
    /// A new message to `destination` with a fresh id and the current time.
    pub fn new(destination: impl Into<String>, payload: impl Into<Payload>) -> Self {
        let timestamp = now_millis();
        Message {
            id: new_id(timestamp),
            destination: destination.into(),
            payload: payload.into(),
            headers: Vec::new(),
            source: None,
            timestamp,
            priority: 0,
            deadline: None,
        }
    }

    /// Add a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Set the priority (higher first).
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Time left before the deadline (`None`: no deadline).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The message as the JSON object handed to C handlers and stored in
    /// dead letters: `id`, `destination`, `payload`, `headers`, `source`,
    /// `timestamp`, `priority`.
    pub fn to_json(&self) -> serde_json::Value {
        let headers: serde_json::Map<String, serde_json::Value> =
            self.headers.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
        serde_json::json!({
            "id": self.id.to_string(),
            "destination": self.destination,
            "payload": self.payload.to_json(),
            "headers": headers,
            "source": self.source.as_deref(),
            "timestamp": self.timestamp,
            "priority": self.priority,
        })
    }
}

/// A UUIDv7 for a message created at `millis`: time-ordered to the
/// millisecond, with 74 random bits from the thread-local generator.
/// (`Uuid::now_v7()` makes a `getrandom` system call per id, which was a
/// measurable share of an in-process route.)
pub fn new_id(millis: u64) -> Uuid {
    let random: [u8; 10] = rand::random();
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Limits applied by [`validate`]; from the `limits` config section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload in bytes (JSON counted as its serialized length).
    pub max_payload_bytes: usize,
    /// Deepest JSON nesting allowed.
    pub max_json_depth: usize,
    /// Most headers on one message.
    pub max_headers: usize,
    /// Longest header name plus value, in bytes.
    pub max_header_bytes: usize,
    /// Longest destination subject, in bytes.
    pub max_subject_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: 1024 * 1024,
            max_json_depth: 64,
            max_headers: 64,
            max_header_bytes: 8 * 1024,
            max_subject_bytes: 256,
        }
    }
}

/// Check a message against the limits: destination grammar, payload size and
/// depth, header names and values. Errors are `INVALID_MESSAGE`.
pub fn validate(msg: &Message, limits: &Limits) -> Result<()> {
    validate_envelope(msg, limits)?;
    validate_payload(&msg.payload, limits)
}

/// [`validate`] without the payload: destination and headers.
pub fn validate_envelope(msg: &Message, limits: &Limits) -> Result<()> {
    if msg.destination.len() > limits.max_subject_bytes {
        return Err(BridgeError::invalid(format!(
            "destination is {} bytes long; the limit is {} (limits.max_subject_bytes)",
            msg.destination.len(),
            limits.max_subject_bytes
        )));
    }
    subject::validate_subject(&msg.destination)?;
    validate_headers(&msg.headers, limits)
}

/// Header names are HTTP tokens; values have no control characters but tab
/// (CR and LF would allow header injection on HTTP delivery; the others
/// cannot be sent in an HTTP header at all, so a message carrying one would
/// be accepted and then fail at delivery).
pub fn validate_headers(headers: &Headers, limits: &Limits) -> Result<()> {
    if headers.len() > limits.max_headers {
        return Err(BridgeError::invalid(format!(
            "{} headers; at most {} are allowed (limits.max_headers)",
            headers.len(),
            limits.max_headers
        )));
    }
    for (name, value) in headers {
        if name.is_empty() || !name.bytes().all(is_header_name_byte) {
            return Err(BridgeError::invalid(format!(
                "header name {name:?} is not valid: use letters, digits and !#$%&'*+-.^_`|~"
            )));
        }
        if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(BridgeError::invalid(format!(
                "header {name:?} has a control character (CR, LF, NUL or another below 0x20 but tab, or DEL) \
                 in its value; remove it"
            )));
        }
        if name.len() + value.len() > limits.max_header_bytes {
            return Err(BridgeError::invalid(format!(
                "header {name:?} is {} bytes; the limit is {} (limits.max_header_bytes)",
                name.len() + value.len(),
                limits.max_header_bytes
            )));
        }
    }
    Ok(())
}

fn is_header_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Payload size and JSON depth, measured in one walk without serializing.
pub fn validate_payload(payload: &Payload, limits: &Limits) -> Result<()> {
    let size = match payload {
        Payload::Bytes(b) => b.len(),
        Payload::Json(v) => {
            let mut size = 0usize;
            json_walk(v, 1, limits, &mut size)?;
            size
        }
    };
    if size > limits.max_payload_bytes {
        return Err(BridgeError::invalid(format!(
            "payload is about {size} bytes; the limit is {} (limits.max_payload_bytes)",
            limits.max_payload_bytes
        )));
    }
    Ok(())
}

/// Adds an estimate of the serialized size of `v` to `size`, failing as soon
/// as the depth or the size limit is passed (so a huge payload costs little).
fn json_walk(v: &serde_json::Value, depth: usize, limits: &Limits, size: &mut usize) -> Result<()> {
    use serde_json::Value;
    if *size > limits.max_payload_bytes {
        return Ok(());
    }
    match v {
        Value::Null => *size += 4,
        Value::Bool(_) => *size += 5,
        Value::Number(_) => *size += 8,
        Value::String(s) => *size += s.len() + 2,
        Value::Array(items) => {
            check_depth(depth, limits)?;
            *size += 2 + items.len();
            for item in items {
                json_walk(item, depth + 1, limits, size)?;
            }
        }
        Value::Object(map) => {
            check_depth(depth, limits)?;
            *size += 2;
            for (k, item) in map {
                *size += k.len() + 4;
                json_walk(item, depth + 1, limits, size)?;
            }
        }
    }
    Ok(())
}

fn check_depth(depth: usize, limits: &Limits) -> Result<()> {
    if depth > limits.max_json_depth {
        return Err(BridgeError::invalid(format!(
            "payload nests deeper than {} levels (limits.max_json_depth); flatten it",
            limits.max_json_depth
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use serde_json::json;

    fn msg(dest: &str) -> Message {
        Message::new(dest, json!({"a": 1}))
    }

    #[test]
    fn ids_are_v7_and_unique() {
        let a = msg("a.b");
        let b = msg("a.b");
        assert_eq!(a.id.get_version_num(), 7);
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn accepts_a_good_message() {
        validate(&msg("services.weather.current").with_header("x-trace", "1"), &Limits::default()).unwrap();
    }

    #[test]
    fn rejects_bad_destinations() {
        for bad in ["", "a..b", ".a", "a.", "a b", "a.*", "a.>", "é.b"] {
            let e = validate(&msg(bad), &Limits::default()).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidMessage, "{bad:?}");
        }
    }

    #[test]
    fn rejects_control_characters_in_headers() {
        for v in ["a\r\nb", "a\nb", "a\0b", "a\x01b", "a\x7fb", "a\x1bb"] {
            let e = validate(&msg("a.b").with_header("x", v), &Limits::default()).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidMessage);
            assert!(e.message().contains("control character"));
        }
        let e = validate(&msg("a.b").with_header("bad name", "v"), &Limits::default()).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidMessage);
        // Tab and non-ASCII text are fine in HTTP header values.
        validate(&msg("a.b").with_header("x", "a\tb é"), &Limits::default()).unwrap();
    }

    #[test]
    fn rejects_oversize_payloads() {
        let limits = Limits { max_payload_bytes: 100, ..Limits::default() };
        let big = Message::new("a.b", json!({"s": "x".repeat(200)}));
        assert_eq!(validate(&big, &limits).unwrap_err().code(), ErrorCode::InvalidMessage);
        let bytes = Message::new("a.b", vec![0u8; 101]);
        assert_eq!(validate(&bytes, &limits).unwrap_err().code(), ErrorCode::InvalidMessage);
        let ok = Message::new("a.b", vec![0u8; 100]);
        validate(&ok, &limits).unwrap();
    }

    #[test]
    fn rejects_too_deep_payloads() {
        let limits = Limits { max_json_depth: 3, ..Limits::default() };
        validate(&Message::new("a.b", json!([[[1]]])), &limits).unwrap();
        let e = validate(&Message::new("a.b", json!([[[[1]]]])), &limits).unwrap_err();
        assert!(e.message().contains("deeper than 3"));
    }

    #[test]
    fn bytes_payload_to_json_is_base64() {
        let p = Payload::from(vec![1u8, 2, 3]);
        assert_eq!(p.to_json(), json!({"$bytes": "AQID"}));
    }
}
