//! SecurityManager: who is calling, and may they do this?
//!
//! STUB: interface only; the full implementation (API keys, bridge tokens,
//! OIDC, access control, message signing, audit) replaces this file.

use std::sync::Arc;

use serde::Serialize;

use crate::config::SecurityConfig;
use crate::error::{BridgeError, Result};
use crate::message::Message;

/// The actions roles grant, per subject pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Request/reply.
    Route,
    /// Fire-and-forget.
    Publish,
    /// Serve a pattern (connected services).
    Handle,
    /// Administration (metrics, dead letters, token admin); implies all.
    Admin,
}

impl Action {
    /// Lower-case name as used in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Route => "route",
            Action::Publish => "publish",
            Action::Handle => "handle",
            Action::Admin => "admin",
        }
    }
}

/// An authenticated identity, from a verified token.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Principal name (API key principal, or the OIDC subject).
    pub name: Arc<str>,
    /// Granted roles.
    pub roles: Arc<[Arc<str>]>,
    /// Token expiry, Unix seconds.
    pub expires_at: u64,
}

/// A bridge token as returned by `authenticate`.
#[derive(Debug, Clone, Serialize)]
pub struct Token {
    /// The JWT string to present.
    pub value: String,
    /// Who it authenticates.
    pub principal: String,
    /// Roles granted.
    pub roles: Vec<String>,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
}

/// What a caller presents to `authenticate`.
#[derive(Clone)]
pub enum Credentials {
    /// An API key.
    ApiKey(String),
    /// A JWT from the configured OIDC issuer.
    Jwt(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::ApiKey(_) => f.write_str("ApiKey(***)"),
            Credentials::Jwt(_) => f.write_str("Jwt(***)"),
        }
    }
}

impl Credentials {
    /// From the credential dict every binding takes: `{"api_key": ...}` or `{"token": ...}`.
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        let obj = v.as_object().ok_or_else(|| {
            BridgeError::unauthenticated(
                "credentials must be a mapping like {\"api_key\": \"...\"} or {\"token\": \"<jwt>\"}",
            )
        })?;
        if let Some(k) = obj.get("api_key").and_then(|k| k.as_str()) {
            return Ok(Credentials::ApiKey(k.to_string()));
        }
        if let Some(t) = obj.get("token").and_then(|k| k.as_str()) {
            return Ok(Credentials::Jwt(t.to_string()));
        }
        Err(BridgeError::unauthenticated("credentials need an `api_key` or a `token` (an OIDC JWT) string"))
    }
}

/// The security layer.
#[derive(Debug)]
pub struct SecurityManager {
    enabled: bool,
}

impl SecurityManager {
    /// Build from the `security` section (`None`: security off).
    pub fn new(cfg: Option<&SecurityConfig>) -> Result<Self> {
        Ok(SecurityManager { enabled: cfg.is_some_and(|c| c.auth_type != crate::config::AuthType::None) })
    }

    /// Is security on?
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Check credentials and issue a bridge token.
    pub fn authenticate(&self, _creds: &Credentials) -> Result<Token> {
        Err(BridgeError::unauthenticated("not implemented"))
    }

    /// Verify a bridge token (signature, expiry, revocation); cached.
    pub fn verify(&self, _token: &str) -> Result<Arc<Principal>> {
        Err(BridgeError::unauthenticated("not implemented"))
    }

    /// Allow or refuse `action` on `resource`; deny wins; audited.
    pub fn authorize(&self, _principal: &Principal, _action: Action, _resource: &str) -> Result<()> {
        Err(BridgeError::forbidden("not implemented"))
    }

    /// Revoke a token (until its expiry).
    pub fn revoke(&self, _token: &str) -> Result<()> {
        Ok(())
    }

    /// A new token for the same principal, from a valid one.
    pub fn refresh(&self, _token: &str) -> Result<Token> {
        Err(BridgeError::unauthenticated("not implemented"))
    }

    /// Verify an HMAC signature over a message (server-mode inbound).
    pub fn verify_message(&self, _msg: &Message, _signature: &str) -> Result<()> {
        Ok(())
    }
}
