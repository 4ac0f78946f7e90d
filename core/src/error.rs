//! One error type for the whole engine.
//!
//! Every failure a caller can see is a [`BridgeError`] with a stable
//! [`ErrorCode`]. The codes are the contract shared by every language binding
//! (Python exception classes, Node `error.code`, C `dreamos_status`), so they
//! never change meaning; the message says what was wrong and what to do.

use std::fmt;
use std::time::Duration;

/// The stable error codes of DESIGN.md section 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The configuration is invalid; the message names the key path.
    Config,
    /// Bad destination, oversize or too-deep payload, bad headers.
    InvalidMessage,
    /// Bad credentials; token missing, malformed, expired or revoked.
    Unauthenticated,
    /// Authenticated, but not allowed this action on this resource.
    Forbidden,
    /// No route matches the destination.
    RouteNotFound,
    /// A rate limit was hit; the error carries a retry-after.
    RateLimited,
    /// Backpressure: no room in the queue within the deadline.
    QueueFull,
    /// The deadline passed.
    Timeout,
    /// Connect failed after retries, circuit open, or service down.
    ServiceUnavailable,
    /// The service answered with an error status.
    UpstreamError,
    /// An in-process handler raised or rejected.
    HandlerError,
    /// The bridge is not running.
    Shutdown,
    /// A bug in the bridge.
    Internal,
}

impl ErrorCode {
    /// Every code, in declaration order (bindings generate their mappings from it).
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::Config,
        ErrorCode::InvalidMessage,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::RouteNotFound,
        ErrorCode::RateLimited,
        ErrorCode::QueueFull,
        ErrorCode::Timeout,
        ErrorCode::ServiceUnavailable,
        ErrorCode::UpstreamError,
        ErrorCode::HandlerError,
        ErrorCode::Shutdown,
        ErrorCode::Internal,
    ];

    /// The code as the string every binding shows, e.g. `"RATE_LIMITED"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Config => "CONFIG",
            ErrorCode::InvalidMessage => "INVALID_MESSAGE",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::RouteNotFound => "ROUTE_NOT_FOUND",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::QueueFull => "QUEUE_FULL",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::ServiceUnavailable => "SERVICE_UNAVAILABLE",
            ErrorCode::UpstreamError => "UPSTREAM_ERROR",
            ErrorCode::HandlerError => "HANDLER_ERROR",
            ErrorCode::Shutdown => "SHUTDOWN",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    /// The HTTP status the server answers with for this code.
    pub const fn http_status(self) -> u16 {
        match self {
            ErrorCode::Config => 500,
            ErrorCode::InvalidMessage => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::RouteNotFound => 404,
            ErrorCode::RateLimited => 429,
            ErrorCode::QueueFull => 503,
            ErrorCode::Timeout => 504,
            ErrorCode::ServiceUnavailable => 503,
            ErrorCode::UpstreamError => 502,
            ErrorCode::HandlerError => 500,
            ErrorCode::Shutdown => 503,
            ErrorCode::Internal => 500,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error every fallible engine call returns.
///
/// `code` is stable; `message` is for people. `retry_after` is set for
/// `RATE_LIMITED` (and for upstream answers that carried `Retry-After`);
/// `status` and `body` for `UPSTREAM_ERROR`.
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeError {
    code: ErrorCode,
    message: String,
    retry_after: Option<Duration>,
    status: Option<u16>,
    body: Option<String>,
}

/// Shorthand for results of engine calls.
pub type Result<T, E = BridgeError> = std::result::Result<T, E>;

impl BridgeError {
    /// An error with a code and a message that says what was wrong and what to do.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        BridgeError { code, message: message.into(), retry_after: None, status: None, body: None }
    }

    /// `CONFIG`: `path` is the key path (`bridge.max_connections`).
    pub fn config(path: &str, message: impl fmt::Display) -> Self {
        if path.is_empty() {
            Self::new(ErrorCode::Config, format!("config: {message}"))
        } else {
            Self::new(ErrorCode::Config, format!("{path}: {message}"))
        }
    }

    /// `INVALID_MESSAGE`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidMessage, message)
    }

    /// `UNAUTHENTICATED`.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, message)
    }

    /// `FORBIDDEN`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// `RATE_LIMITED` with the time after which a retry can succeed.
    pub fn rate_limited(message: impl Into<String>, retry_after: Duration) -> Self {
        Self::new(ErrorCode::RateLimited, message).with_retry_after(retry_after)
    }

    /// `TIMEOUT`.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Timeout, message)
    }

    /// `SHUTDOWN`.
    pub fn shutdown() -> Self {
        Self::new(
            ErrorCode::Shutdown,
            "the bridge is not running: call initialize() first, or create a new bridge after shutdown()",
        )
    }

    /// `INTERNAL`: a bug. The message should let a maintainer find it.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// `HANDLER_ERROR`: an in-process handler raised or rejected.
    pub fn handler(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::HandlerError, message)
    }

    /// `UPSTREAM_ERROR` with the service's status and (already size-capped) body.
    pub fn upstream(status: u16, body: impl Into<String>, message: impl Into<String>) -> Self {
        let mut e = Self::new(ErrorCode::UpstreamError, message);
        e.status = Some(status);
        e.body = Some(body.into());
        e
    }

    /// Attach a retry-after hint.
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The human-readable message (without the code).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// For `RATE_LIMITED`: how long to wait before retrying.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// For `UPSTREAM_ERROR`: the HTTP status the service answered with.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// For `UPSTREAM_ERROR`: the (size-capped) body the service answered with.
    pub fn body(&self) -> Option<&str> {
        self.body.as_deref()
    }

    /// The same error with `context: ` put before its message.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for BridgeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for BridgeError {}

/// A JSON form of an error, for bindings and the server (`{"code", "message", ...}`).
impl serde::Serialize for BridgeError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("code", self.code.as_str())?;
        m.serialize_entry("message", &self.message)?;
        if let Some(r) = self.retry_after {
            m.serialize_entry("retry_after", &r.as_secs_f64())?;
        }
        if let Some(st) = self.status {
            m.serialize_entry("status", &st)?;
        }
        if let Some(b) = &self.body {
            m.serialize_entry("body", b)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_as_strings() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let back: ErrorCode = serde_json::from_str(&json).unwrap();
            assert_eq!(back, code);
        }
    }

    #[test]
    fn display_has_code_then_message() {
        let e = BridgeError::rate_limited("slow down", Duration::from_millis(1500));
        assert_eq!(e.to_string(), "RATE_LIMITED: slow down");
        assert_eq!(e.retry_after(), Some(Duration::from_millis(1500)));
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["code"], "RATE_LIMITED");
        assert_eq!(v["retry_after"], 1.5);
    }

    #[test]
    fn config_error_names_the_path() {
        let e = BridgeError::config("bridge.max_connections", "expected an integer, got \"many\"");
        assert_eq!(e.code(), ErrorCode::Config);
        assert_eq!(e.message(), "bridge.max_connections: expected an integer, got \"many\"");
    }
}
