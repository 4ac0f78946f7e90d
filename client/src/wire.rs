//! The server's JSON wire forms, both ways.
//!
//! A remote call must fail exactly like a local one, and carry the same
//! values, so this module is the single place that knows how the server
//! spells payloads (`{"$bytes": base64}` for raw bytes), message frames and
//! errors (`{"code", "message", "retry_after", "status", "body"}`), and how
//! transport failures become the engine's codes.

use std::time::{Duration, Instant};

use base64::Engine;
use dreamos_bridge::{BridgeError, Credentials, ErrorCode, Message, Payload};
use serde_json::{Map, Value, json};

/// `{"$bytes": "<base64>"}` is a bytes payload; anything else is JSON
/// (the same rule as the server's `payload_from_json`).
pub fn payload_from_json(v: Value) -> Payload {
    if let Value::Object(m) = &v
        && m.len() == 1
        && let Some(Value::String(b64)) = m.get("$bytes")
        && let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64)
    {
        return Payload::Bytes(bytes.into());
    }
    Payload::Json(v)
}

/// The body of `POST /v1/route` and `/v1/publish`.
pub fn message_body(msg: &Message, timeout: Option<Duration>) -> Value {
    let mut body = Map::new();
    body.insert("destination".into(), Value::String(msg.destination.clone()));
    body.insert("payload".into(), msg.payload.to_json());
    if !msg.headers.is_empty() {
        let headers: Map<String, Value> =
            msg.headers.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        body.insert("headers".into(), Value::Object(headers));
    }
    if let Some(t) = timeout {
        body.insert("timeout".into(), json!(t.as_secs_f64()));
    }
    if msg.priority != 0 {
        body.insert("priority".into(), json!(msg.priority));
    }
    Value::Object(body)
}

/// Credentials as the server takes them (`/v1/auth/token`, the WebSocket auth frame).
pub fn credentials_json(c: &Credentials) -> Value {
    match c {
        Credentials::ApiKey(k) => json!({ "api_key": k }),
        Credentials::Jwt(t) => json!({ "token": t }),
    }
}

fn code_from_str(s: &str) -> Option<ErrorCode> {
    ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
}

/// A server error body `{"code", "message", ...}` as the engine error it was
/// on the server; `None` if the body is not one (a proxy's page, say).
pub fn error_from_json(v: &Value) -> Option<BridgeError> {
    let code = code_from_str(v.get("code")?.as_str()?)?;
    let message = v.get("message").and_then(Value::as_str).unwrap_or("the server gave no message");
    let mut e = match (code, v.get("status").and_then(Value::as_u64)) {
        (ErrorCode::UpstreamError, Some(status)) => BridgeError::upstream(
            u16::try_from(status).unwrap_or(0),
            v.get("body").and_then(Value::as_str).unwrap_or_default(),
            message,
        ),
        _ => BridgeError::new(code, message),
    };
    if let Some(secs) = v.get("retry_after").and_then(Value::as_f64)
        && secs.is_finite()
        && secs >= 0.0
    {
        e = e.with_retry_after(Duration::from_secs_f64(secs.min(1e9)));
    }
    Some(e)
}

/// An error answer (status and body text) as an engine error: the server's
/// own error when the body is one, else a code chosen from the status.
pub fn error_from_response(status: u16, text: &str, url: &str) -> BridgeError {
    if let Ok(v) = serde_json::from_str::<Value>(text)
        && let Some(e) = error_from_json(&v)
    {
        return e;
    }
    let snippet: String = text.chars().take(200).collect();
    let what = format!("{url} answered HTTP {status} without a bridge error body ({snippet:?})");
    match status {
        504 => BridgeError::timeout(format!("{what}: a proxy in front of the bridge gave up")),
        502 | 503 => BridgeError::new(
            ErrorCode::ServiceUnavailable,
            format!("{what}: is the bridge server behind the proxy running?"),
        ),
        401 => BridgeError::unauthenticated(what),
        403 => BridgeError::forbidden(what),
        404 => {
            BridgeError::new(ErrorCode::RouteNotFound, format!("{what}: is this the URL of a dreamos-bridge server?"))
        }
        _ => BridgeError::internal(format!("{what}: is this the URL of a dreamos-bridge server?")),
    }
}

/// A transport failure (nothing usable came back) as an engine error.
pub fn transport_error(e: &reqwest::Error, url: &str, waited: Option<Duration>) -> BridgeError {
    if e.is_timeout() {
        let waited = waited.map(|d| format!(" within {:.1}s", d.as_secs_f64())).unwrap_or_default();
        return BridgeError::timeout(format!(
            "no answer from the bridge server at {url}{waited}: raise the timeout, or check the server's load"
        ));
    }
    // reqwest's Display hides the cause (connection refused, reset, ...); show the chain.
    let mut cause = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        cause = format!("{cause}: {s}");
        src = s.source();
    }
    if e.is_connect() {
        BridgeError::new(
            ErrorCode::ServiceUnavailable,
            format!("cannot connect to the bridge server at {url} ({cause}): is `dreamos-bridge serve` running there?"),
        )
    } else {
        BridgeError::new(
            ErrorCode::ServiceUnavailable,
            format!("the connection to the bridge server at {url} failed ({cause}): the call may or may not have run"),
        )
    }
}

/// A `message` frame of the WebSocket protocol as the message a handler gets.
pub fn message_from_frame(frame: &Value) -> Result<Message, String> {
    let id = frame
        .get("id")
        .and_then(Value::as_str)
        .and_then(|s| uuid::Uuid::parse_str(s).ok())
        .ok_or("a message frame without a valid \"id\"")?;
    let destination =
        frame.get("destination").and_then(Value::as_str).ok_or("a message frame without a destination")?;
    let payload = payload_from_json(frame.get("payload").cloned().unwrap_or(Value::Null));
    let mut msg = Message::new(destination, payload);
    msg.id = id;
    if let Some(Value::Object(h)) = frame.get("headers") {
        msg.headers = h.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))).collect();
    }
    msg.source = frame.get("source").and_then(Value::as_str).map(Into::into);
    msg.deadline = frame.get("timeout_ms").and_then(Value::as_u64).map(|ms| Instant::now() + Duration::from_millis(ms));
    Ok(msg)
}

/// "This client does not serve that destination (any more)": the server
/// hands the message to another subscriber, or answers `ROUTE_NOT_FOUND`.
/// The message did not run, so passing it on cannot run it twice.
pub fn declined_frame(id: &uuid::Uuid, message: &str) -> String {
    json!({"type": "error", "id": id.to_string(), "code": "ROUTE_NOT_FOUND", "message": message}).to_string()
}

/// The answer frame to a message: `reply` with the payload, or `error`.
pub fn answer_frame(id: &uuid::Uuid, result: &dreamos_bridge::Result<Payload>) -> String {
    match result {
        Ok(p) => json!({"type": "reply", "id": id.to_string(), "payload": p.to_json()}),
        Err(e) => json!({"type": "error", "id": id.to_string(), "message": e.message()}),
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_through_the_wire_form() {
        for p in [Payload::Json(json!({"a": [1, "x", null]})), Payload::Bytes(vec![0u8, 1, 255].into())] {
            assert_eq!(payload_from_json(p.to_json()), p);
        }
        // A "$bytes" key beside others is plain JSON.
        let v = json!({"$bytes": "AAE=", "other": 1});
        assert_eq!(payload_from_json(v.clone()), Payload::Json(v));
    }

    #[test]
    fn every_error_round_trips_through_its_json() {
        for code in ErrorCode::ALL {
            let e = BridgeError::new(code, "why").with_retry_after(Duration::from_millis(1500));
            let back = error_from_json(&serde_json::to_value(&e).unwrap()).unwrap();
            assert_eq!(back, e);
        }
        let up = BridgeError::upstream(418, "teapot", "the service refused");
        assert_eq!(error_from_json(&serde_json::to_value(&up).unwrap()).unwrap(), up);
    }

    #[test]
    fn foreign_error_bodies_get_a_code_from_the_status() {
        assert_eq!(error_from_response(502, "<html>", "u").code(), ErrorCode::ServiceUnavailable);
        assert_eq!(error_from_response(504, "", "u").code(), ErrorCode::Timeout);
        assert_eq!(error_from_response(418, "", "u").code(), ErrorCode::Internal);
    }
}
