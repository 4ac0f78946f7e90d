//! SecurityManager: who is calling, and may they do this?
//!
//! One facade over the parts, each in its own module: API keys
//! ([`apikeys`]), bridge tokens ([`tokens`]), external OIDC tokens
//! ([`oidc`]), role-based access control ([`access`]), HMAC message
//! signatures ([`signing`]) and the audit trail ([`audit`]). The bridge calls
//! [`SecurityManager::verify`] and [`SecurityManager::authorize`] on every
//! routed message, so those two stay allocation-free on the common path.
//!
//! With no `security` section, or `auth_type: none`, security is off: the
//! bridge skips these checks, and the calls that only make sense with
//! security on (`authenticate`, `verify`, ...) say so with `UNAUTHENTICATED`.

pub mod access;
pub mod apikeys;
pub mod audit;
pub mod oidc;
pub mod signing;
pub mod tokens;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use self::access::AccessControl;
use self::apikeys::ApiKeys;
use self::audit::{AuditLog, Decision, Record};
use self::oidc::OidcVerifier;
use self::signing::MessageSigner;
use self::tokens::{Claims, Refusal, TokenService, unix_now};
use crate::config::{AuthType, SecurityConfig};
use crate::error::{BridgeError, Result};
use crate::message::{Message, now_millis};

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

/// A bridge token as returned by `authenticate`. Its Debug output hides
/// `value`, the bearer secret.
#[derive(Clone, Serialize)]
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

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("value", &"***")
            .field("principal", &self.principal)
            .field("roles", &self.roles)
            .field("expires_at", &self.expires_at)
            .finish()
    }
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
pub struct SecurityManager {
    inner: Option<Box<Enabled>>,
}

struct Enabled {
    api_keys: ApiKeys,
    tokens: TokenService,
    oidc: Option<OidcVerifier>,
    access: AccessControl,
    signer: Option<MessageSigner>,
    audit: AuditLog,
}

impl std::fmt::Debug for SecurityManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            None => f.write_str("SecurityManager(off)"),
            Some(e) => f
                .debug_struct("SecurityManager")
                .field("api_keys", &e.api_keys.len())
                .field("tokens", &e.tokens)
                .field("oidc", &e.oidc)
                .field("signer", &e.signer)
                .field("audit", &e.audit)
                .finish(),
        }
    }
}

fn off() -> BridgeError {
    BridgeError::unauthenticated(
        "security is off (no `security` section, or auth_type: none): tokens are neither issued nor needed",
    )
}

impl SecurityManager {
    /// Build from the `security` section (`None`: security off).
    pub fn new(cfg: Option<&SecurityConfig>) -> Result<Self> {
        let Some(cfg) = cfg.filter(|c| c.auth_type != AuthType::None) else {
            return Ok(SecurityManager { inner: None });
        };
        let audit = match &cfg.audit_log {
            Some(path) => AuditLog::to_file(path)?,
            None => AuditLog::tracing_only(),
        };
        let enabled = Enabled {
            api_keys: ApiKeys::new(&cfg.api_keys)?,
            tokens: TokenService::new(&cfg.signing_keys, cfg.token_expiry.get().as_secs()),
            oidc: cfg.oidc.as_ref().map(OidcVerifier::new).transpose()?,
            access: AccessControl::new(&cfg.roles)?,
            signer: cfg.message_signing.as_ref().map(MessageSigner::new).transpose()?,
            audit,
        };
        Ok(SecurityManager { inner: Some(Box::new(enabled)) })
    }

    /// Is security on?
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    fn on(&self) -> Result<&Enabled> {
        self.inner.as_deref().ok_or_else(off)
    }

    /// Check credentials and issue a bridge token.
    pub fn authenticate(&self, creds: &Credentials) -> Result<Token> {
        let s = self.on()?;
        let (kind, outcome) = match creds {
            Credentials::ApiKey(key) => (
                "api_key",
                s.api_keys
                    .authenticate(key)
                    .map(|id| (id.principal, id.roles, None, Some(id.fingerprint)))
                    .map_err(|error| Refusal { reason: "unknown api key", error }),
            ),
            Credentials::Jwt(jwt) => (
                "oidc",
                match &s.oidc {
                    None => Err(Refusal {
                        reason: "oidc not configured",
                        error: BridgeError::unauthenticated(
                            "no OIDC issuer is configured (security.oidc), so external tokens are not accepted: authenticate with an api_key",
                        ),
                    }),
                    Some(v) => v.verify(jwt).and_then(|id| {
                        // The subject must not pass for a principal this
                        // bridge knows by its API key: handlers, limits and
                        // the audit would take one for the other.
                        if s.api_keys.has_principal(&id.principal) {
                            let who: String = id.principal.chars().take(64).collect();
                            return Err(Refusal::new(
                                "oidc subject is an api key principal",
                                format!(
                                    "the OIDC token names {who:?}, which is an API-key principal on this bridge: rename one of them (security.api_keys, or security.oidc.principal_claim)"
                                ),
                            ));
                        }
                        // Accepted within the clock-skew leeway, but already
                        // expired: a bridge token capped at it would be dead.
                        if id.expires_at.is_some_and(|exp| exp <= unix_now()) {
                            return Err(Refusal::new(
                                "oidc token expired",
                                "the OIDC token has expired: get a fresh one from the identity provider",
                            ));
                        }
                        // Only roles this bridge defines mean anything here.
                        let roles = s.access.defined(id.roles.iter().map(String::as_str));
                        Ok((id.principal, roles, id.expires_at, None))
                    }),
                },
            ),
        };
        let issued = outcome.and_then(|(principal, roles, max_exp, key)| {
            s.tokens
                .issue(&principal, &roles, max_exp, key.as_deref())
                .map(|t| (principal.clone(), t))
                .map_err(|error| Refusal { reason: "internal", error })
        });
        match issued {
            Ok((principal, token)) => {
                s.audit.record(Record::authn("authenticate", Some(principal), kind, Decision::Allow, "token issued"));
                Ok(token)
            }
            Err(r) => {
                s.audit.record(Record::authn("authenticate", None, kind, Decision::Deny, r.reason));
                Err(r.error)
            }
        }
    }

    /// Mint a bridge token for `principal` with `roles`, valid for `ttl`,
    /// without credentials: for operators holding the config file (the
    /// `dreamos-bridge token issue` command). Every role must be defined
    /// under `security.roles`, and the config must list
    /// `security.signing_keys` (a token signed with the random process-only
    /// key would be refused by every server). Audited.
    pub fn issue_token(&self, principal: &str, roles: &[String], ttl: Duration) -> Result<Token> {
        let s = self.on()?;
        if !s.tokens.keys_configured() {
            return Err(BridgeError::config(
                "security.signing_keys",
                "is empty, so a token minted here would be signed with a random key no server knows: list a key",
            ));
        }
        if principal.trim().is_empty() || principal.len() > 256 {
            return Err(BridgeError::invalid("the principal must be 1 to 256 characters"));
        }
        if let Some(r) = roles.iter().find(|r| !s.access.has_role(r)) {
            let r: String = r.chars().take(64).collect();
            return Err(BridgeError::invalid(format!(
                "role {r:?} is not defined under security.roles: a token with it would grant nothing"
            )));
        }
        let ttl_secs = ttl.as_secs();
        if ttl_secs == 0 {
            return Err(BridgeError::invalid("the token lifetime must be at least one second"));
        }
        let name: Arc<str> = Arc::from(principal);
        let roles: Arc<[Arc<str>]> = roles.iter().map(|r| Arc::from(r.as_str())).collect();
        let token = s.tokens.issue_for(&name, &roles, ttl_secs, None)?;
        s.audit.record(Record::authn("issue_token", Some(name), "operator", Decision::Allow, "token issued"));
        Ok(token)
    }

    /// Verify a bridge token (signature, expiry, revocation); cached.
    #[inline]
    pub fn verify(&self, token: &str) -> Result<Arc<Principal>> {
        let s = self.on()?;
        match s.tokens.verify(token) {
            Ok(p) => Ok(p),
            Err(r) => {
                s.audit.record(Record::authn("verify", None, "bridge_token", Decision::Deny, r.reason));
                Err(r.error)
            }
        }
    }

    /// The refusal for a call that came without a token (audited).
    pub fn missing_token(&self, action: Action, resource: &str) -> BridgeError {
        if let Some(s) = self.inner.as_deref() {
            s.audit.record(Record {
                time_ms: now_millis(),
                action: action.as_str(),
                principal: None,
                resource: Cow::Owned(resource.to_string()),
                decision: Decision::Deny,
                reason: Cow::Borrowed("missing token"),
                role: None,
            });
        }
        BridgeError::unauthenticated("security is on and no token was given: call authenticate() and pass its token")
    }

    /// Allow or refuse `action` on `resource`; deny wins; audited.
    #[inline]
    pub fn authorize(&self, principal: &Principal, action: Action, resource: &str) -> Result<()> {
        let s = self.on()?;
        match s.access.check(principal, action, resource) {
            Ok(role) => {
                s.audit.allowed(&principal.name, action.as_str(), resource, &role);
                Ok(())
            }
            Err(f) => {
                s.audit.record(Record {
                    time_ms: now_millis(),
                    action: action.as_str(),
                    principal: Some(principal.name.clone()),
                    resource: Cow::Owned(resource.to_string()),
                    decision: Decision::Deny,
                    reason: Cow::Borrowed(f.reason),
                    role: f.role,
                });
                Err(f.error)
            }
        }
    }

    /// Revoke a token and every token refreshed from it.
    pub fn revoke(&self, token: &str) -> Result<()> {
        let s = self.on()?;
        match s.tokens.revoke(token) {
            Ok(principal) => {
                s.audit.record(Record::authn("revoke", Some(principal), "bridge_token", Decision::Allow, "revoked"));
                Ok(())
            }
            Err(r) => {
                s.audit.record(Record::authn("revoke", None, "bridge_token", Decision::Deny, r.reason));
                Err(r.error)
            }
        }
    }

    /// A new token for the same principal, from a valid one (which is
    /// revoked), with the roles the current config gives: a token from an
    /// API key takes that key's roles now, and is refused if the key is no
    /// longer configured; other tokens keep the roles still defined.
    pub fn refresh(&self, token: &str) -> Result<Token> {
        let s = self.on()?;
        let roles_now = |claims: &Claims| match &claims.key {
            Some(fingerprint) => match s.api_keys.identity_of(fingerprint) {
                Some(id) if *id.principal == *claims.sub => Ok(id.roles),
                _ => Err(Refusal::new(
                    "api key removed",
                    "the API key this token was issued for is no longer configured: authenticate again",
                )),
            },
            None => Ok(s.access.defined(claims.roles.iter().map(String::as_str))),
        };
        match s.tokens.refresh(token, roles_now) {
            Ok(t) => {
                let who: Arc<str> = Arc::from(t.principal.as_str());
                s.audit.record(Record::authn("refresh", Some(who), "bridge_token", Decision::Allow, "token issued"));
                Ok(t)
            }
            Err(r) => {
                s.audit.record(Record::authn("refresh", None, "bridge_token", Decision::Deny, r.reason));
                Err(r.error)
            }
        }
    }

    /// Verify an HMAC signature over a message (server-mode inbound).
    /// Without `security.message_signing` nothing can be verified, so this
    /// refuses.
    pub fn verify_message(&self, msg: &Message, signature: &str) -> Result<()> {
        let s = self.on()?;
        let Some(signer) = &s.signer else {
            return Err(BridgeError::unauthenticated(
                "message signatures are not configured (security.message_signing), so this signature cannot be checked",
            ));
        };
        let outcome = signer.verify(msg, signature);
        let (decision, reason) = match &outcome {
            Ok(_) => (Decision::Allow, "signature verified"),
            Err(r) => (Decision::Deny, r.reason),
        };
        s.audit.record(Record {
            time_ms: now_millis(),
            action: "verify_message",
            principal: msg.source.clone(),
            resource: Cow::Owned(msg.destination.clone()),
            decision,
            reason: Cow::Borrowed(reason),
            role: None,
        });
        outcome.map(|_| ()).map_err(|r| r.error)
    }

    /// A signature header for `msg` made with message-signing key `key_id`
    /// (for clients and tests; see [`signing`] for the format).
    pub fn sign_message(&self, key_id: &str, msg: &Message) -> Result<String> {
        let s = self.on()?;
        let signer = s.signer.as_ref().ok_or_else(|| {
            BridgeError::invalid("message signing is not configured: add keys under security.message_signing")
        })?;
        signer.sign(key_id, msg)
    }

    /// Must messages from outside the process carry a signature?
    pub fn signing_required(&self) -> bool {
        self.inner.as_ref().and_then(|s| s.signer.as_ref()).is_some_and(|s| s.required())
    }

    /// Wait until every audit record so far is written (`true`), or
    /// `timeout` passes (`false`). Not for the hot path.
    pub fn flush_audit(&self, timeout: Duration) -> bool {
        self.inner.as_ref().is_none_or(|s| s.audit.flush(timeout))
    }

    /// Audit records dropped because the file writer fell behind.
    pub fn audit_dropped(&self) -> u64 {
        self.inner.as_ref().map_or(0, |s| s.audit.dropped())
    }
}

impl Record {
    fn authn(
        action: &'static str,
        principal: Option<Arc<str>>,
        kind: &'static str,
        decision: Decision,
        reason: &'static str,
    ) -> Self {
        Record {
            time_ms: now_millis(),
            action,
            principal,
            resource: Cow::Borrowed(kind),
            decision,
            reason: Cow::Borrowed(reason),
            role: None,
        }
    }
}
