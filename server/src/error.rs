//! How a [`BridgeError`] becomes an HTTP answer.
//!
//! The code, message and extras come from the core's own serialization, so
//! HTTP clients see exactly the JSON every binding sees; the status comes
//! from [`ErrorCode::http_status`], and `RATE_LIMITED` adds `Retry-After`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dreamos_bridge::{BridgeError, ErrorCode};

/// A [`BridgeError`] on its way to an HTTP client.
#[derive(Debug)]
pub struct ApiError {
    error: BridgeError,
    /// A status other than the code's own (413 for an oversize body, 405).
    status: Option<StatusCode>,
}

impl ApiError {
    /// The error with the status of its code.
    pub fn new(error: BridgeError) -> Self {
        ApiError { error, status: None }
    }

    /// The error with a specific status (the body keeps the error's code).
    pub fn with_status(error: BridgeError, status: StatusCode) -> Self {
        ApiError { error, status: Some(status) }
    }

    /// `INVALID_MESSAGE` (400).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(BridgeError::invalid(message))
    }

    /// The error inside.
    pub fn error(&self) -> &BridgeError {
        &self.error
    }
}

impl From<BridgeError> for ApiError {
    fn from(e: BridgeError) -> Self {
        ApiError::new(e)
    }
}

/// The HTTP status for an error code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status.unwrap_or_else(|| status_of(self.error.code()));
        let body = serde_json::to_vec(&self.error)
            .unwrap_or_else(|_| br#"{"code":"INTERNAL","message":"error serialization failed"}"#.to_vec());
        let mut resp =
            (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response();
        if let Some(wait) = self.error.retry_after() {
            // Whole seconds, rounded up: a client that waits this long is not refused again for the same reason.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}
