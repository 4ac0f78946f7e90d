//! Typed configuration: YAML or a binding's dict, `${VAR}` expansion,
//! human durations and rates, and errors that name the key path.
//!
//! Every source goes through one pipeline so that YAML files, Python dicts,
//! JS objects and C strings behave identically:
//! text or value → JSON value → `${VAR}` expansion → typed structs
//! (unknown keys rejected) → cross-field validation.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::error::{BridgeError, Result};
use crate::message::Limits;
use crate::routing::subject::validate_pattern;

/// The whole configuration. `BridgeConfig::default()` is the embedded
/// default: in-process handlers only, no services, no security.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    /// The seed's `bridge` section, extended with engine knobs.
    pub bridge: BridgeSection,
    /// Security; absent (or `auth_type: none`) means security is off.
    pub security: Option<SecurityConfig>,
    /// The seed's `monitoring` section.
    pub monitoring: MonitoringConfig,
    /// External HTTP services by name.
    pub services: BTreeMap<String, ServiceConfig>,
    /// Subject patterns mapped to services, or limits for in-process routes.
    pub routes: Vec<RouteConfig>,
    /// Message validation limits.
    pub limits: LimitsConfig,
}

/// The seed's `bridge` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeSection {
    /// Server listen host.
    #[serde(deserialize_with = "text")]
    pub host: String,
    /// Server listen port.
    pub port: u16,
    /// Most concurrent connections per service (and, in server mode, clients).
    pub max_connections: usize,
    /// Time allowed to open a connection.
    pub connection_timeout: Seconds,
    /// Retries after the first attempt of a delivery.
    pub retry_attempts: u32,
    /// Base delay of the exponential backoff between retries.
    pub retry_delay: Seconds,
    /// Deadline of a `route` call when the caller gives no timeout.
    pub request_timeout: Seconds,
    /// Time `shutdown()` lets in-flight work finish before failing it.
    pub shutdown_grace: Seconds,
    /// Most failed publishes kept for listing and replay.
    pub dead_letter_capacity: usize,
    /// On a rate limit: `wait` within the deadline, or `reject` at once.
    pub rate_limit_mode: RateLimitMode,
    /// Default for routes without their own `queue_size`.
    pub queue_size: usize,
    /// Default for routes without their own `max_concurrency` (0: unlimited).
    pub max_concurrency: usize,
    /// Server TLS (cert and key files, PEM).
    pub tls: Option<TlsConfig>,
}

impl Default for BridgeSection {
    fn default() -> Self {
        BridgeSection {
            host: "localhost".into(),
            port: 8000,
            max_connections: 100,
            connection_timeout: Seconds::from_secs(30),
            retry_attempts: 3,
            retry_delay: Seconds::from_secs(5),
            request_timeout: Seconds::from_secs(30),
            shutdown_grace: Seconds::from_secs(10),
            dead_letter_capacity: 10_000,
            rate_limit_mode: RateLimitMode::Wait,
            queue_size: 1024,
            max_concurrency: 0,
            tls: None,
        }
    }
}

/// What to do when a rate limit is hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitMode {
    /// Wait for a slot if one comes before the caller's deadline, else reject.
    #[default]
    Wait,
    /// Reject at once with `RATE_LIMITED` and a retry-after.
    Reject,
}

/// Server TLS material.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain file.
    pub cert: PathBuf,
    /// PEM private key file.
    pub key: PathBuf,
}

/// The seed's `security` section, extended with keys, roles and signing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// `token` (security on) or `none` (security off).
    pub auth_type: AuthType,
    /// Lifetime of issued bridge tokens.
    pub token_expiry: Seconds,
    /// Per-principal rate limit.
    pub rate_limit: Option<Rate>,
    /// Burst allowed above the per-principal rate (default: one second's worth).
    pub rate_limit_burst: Option<u32>,
    /// Origins allowed by the server's CORS policy (exact matches).
    pub allowed_origins: Vec<String>,
    /// Bridge-token keys: the first signs, all verify.
    pub signing_keys: Vec<SigningKey>,
    /// API keys, stored as SHA-256 hashes.
    pub api_keys: Vec<ApiKeyConfig>,
    /// Role name to permissions.
    pub roles: BTreeMap<String, RoleConfig>,
    /// External OAuth2/OIDC token issuer.
    pub oidc: Option<OidcConfig>,
    /// HMAC signing of messages that come from outside the process.
    pub message_signing: Option<MessageSigningConfig>,
    /// Append audit records as JSON lines to this file.
    pub audit_log: Option<PathBuf>,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            auth_type: AuthType::Token,
            token_expiry: Seconds::from_secs(3600),
            rate_limit: None,
            rate_limit_burst: None,
            allowed_origins: Vec::new(),
            signing_keys: Vec::new(),
            api_keys: Vec::new(),
            roles: BTreeMap::new(),
            oidc: None,
            message_signing: None,
            audit_log: None,
        }
    }
}

/// How callers authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthType {
    /// Callers present bridge tokens (from API keys or OIDC tokens).
    #[default]
    Token,
    /// Security off: everything is allowed.
    None,
}

/// A bridge-token signing key.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKey {
    /// Key id, written into the token's `kid` header.
    #[serde(deserialize_with = "text")]
    pub id: String,
    /// The HMAC secret (at least 32 bytes; use `${ENV}`).
    pub secret: Secret,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("id", &self.id).field("secret", &self.secret).finish()
    }
}

/// An API key entry: the key itself is never stored, only its SHA-256.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The principal this key authenticates as.
    #[serde(deserialize_with = "text")]
    pub principal: String,
    /// Hex SHA-256 of the key (`dreamos-bridge hash-key` prints it).
    pub sha256: String,
    /// Roles granted to the principal.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// Allow lists per action, and a deny list that wins over all of them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoleConfig {
    /// Patterns this role may `route` (request/reply) to.
    pub route: Vec<String>,
    /// Patterns this role may `publish` to.
    pub publish: Vec<String>,
    /// Patterns this role may serve (connected services, handlers).
    pub handle: Vec<String>,
    /// Patterns this role may administer (admin implies every action).
    pub admin: Vec<String>,
    /// Patterns denied for every action.
    pub deny: Vec<String>,
}

/// An external OAuth2/OIDC issuer whose JWTs the bridge accepts.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Expected `iss`.
    #[serde(deserialize_with = "text")]
    pub issuer: String,
    /// Expected `aud` (any of them; numeric client ids are common).
    #[serde(deserialize_with = "texts")]
    pub audience: Vec<String>,
    /// The JWKS document inline.
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// Or a file holding the JWKS document.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Allowed algorithms (default `[RS256]`); `none` is never accepted.
    #[serde(default = "default_oidc_algorithms")]
    pub algorithms: Vec<String>,
    /// Claim holding the roles (a list of strings, or a space-separated string).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Claim naming the principal.
    #[serde(default = "default_principal_claim")]
    pub principal_claim: String,
}

/// Inline JWKS may hold symmetric (`oct`) keys: Debug shows only key ids.
impl std::fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Option<Vec<&str>> = self.jwks.as_ref().map(|j| {
            j.get("keys")
                .and_then(|k| k.as_array())
                .map(|keys| keys.iter().map(|k| k.get("kid").and_then(|v| v.as_str()).unwrap_or("?")).collect())
                .unwrap_or_default()
        });
        f.debug_struct("OidcConfig")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("jwks_kids", &kids)
            .field("jwks_file", &self.jwks_file)
            .field("algorithms", &self.algorithms)
            .field("roles_claim", &self.roles_claim)
            .field("principal_claim", &self.principal_claim)
            .finish()
    }
}

fn default_oidc_algorithms() -> Vec<String> {
    vec!["RS256".into()]
}
fn default_roles_claim() -> String {
    "roles".into()
}
fn default_principal_claim() -> String {
    "sub".into()
}

/// HMAC-SHA256 message signing for messages from outside the process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageSigningConfig {
    /// Keys by id; a signature names the key it used.
    pub keys: Vec<SigningKey>,
    /// How far a signed timestamp may be from now.
    #[serde(default = "default_signing_window")]
    pub window: Seconds,
    /// Refuse unsigned messages from outside the process.
    #[serde(default)]
    pub required: bool,
}

fn default_signing_window() -> Seconds {
    Seconds::from_secs(300)
}

/// The seed's `monitoring` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitoringConfig {
    /// Collect metrics.
    pub metrics_enabled: bool,
    /// Interval of active service health checks and alert evaluation.
    pub health_check_interval: Seconds,
    /// `TRACE`, `DEBUG`, `INFO`, `WARN` or `ERROR`.
    pub log_level: String,
    /// An alert fires when a route's or service's success ratio over the
    /// last interval falls below this (0 to 1).
    pub alert_threshold: f64,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        MonitoringConfig {
            metrics_enabled: true,
            health_check_interval: Seconds::from_secs(30),
            log_level: "INFO".into(),
            alert_threshold: 0.9,
        }
    }
}

/// An external HTTP service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Base URL; route paths are appended to it.
    pub url: String,
    /// Credentials the bridge adds to every request.
    #[serde(default)]
    pub auth: Option<ServiceAuth>,
    /// Requests per second to this service.
    #[serde(default)]
    pub rate_limit: Option<Rate>,
    /// Burst above the rate (default: one second's worth).
    #[serde(default)]
    pub burst: Option<u32>,
    /// Deadline for one exchange when the message has none shorter.
    #[serde(default)]
    pub timeout: Option<Seconds>,
    /// Path probed by the health monitor (`GET`, 2xx is healthy).
    #[serde(default)]
    pub health_check: Option<String>,
    /// Pool size (default `bridge.max_connections`).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Override `bridge.retry_attempts` for this service.
    #[serde(default)]
    pub retry_attempts: Option<u32>,
    /// Override `bridge.retry_delay` for this service.
    #[serde(default)]
    pub retry_delay: Option<Seconds>,
    /// Follow HTTP redirects (default: no).
    #[serde(default)]
    pub follow_redirects: bool,
    /// Largest response body accepted, in bytes (default 10 MiB).
    #[serde(default)]
    pub max_response_bytes: Option<usize>,
    /// Consecutive failures that open the circuit breaker (default 5).
    #[serde(default)]
    pub breaker_failures: Option<u32>,
    /// How long the breaker stays open before a probe (default 30s).
    #[serde(default)]
    pub breaker_cooldown: Option<Seconds>,
    /// Failure ratio over the last 20 attempts (at least 10 seen) that also
    /// opens the breaker (default 0.5; 0 to 1; 1 turns this rule off).
    #[serde(default)]
    pub breaker_failure_rate: Option<f64>,
    /// Retries allowed as a fraction of requests (default 0.2), on top of a
    /// floor of 10, so that retries cannot multiply an outage (0 to 1).
    #[serde(default)]
    pub retry_budget: Option<f64>,
}

/// Outgoing credentials held by the bridge for one service.
#[derive(Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServiceAuth {
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The token.
        token: Secret,
    },
    /// A key in a header.
    ApiKey {
        /// Header name (default `X-API-Key`).
        #[serde(default = "default_api_key_header", deserialize_with = "text")]
        header: String,
        /// The key.
        key: Secret,
    },
    /// HTTP basic auth.
    Basic {
        /// User name.
        #[serde(deserialize_with = "text")]
        username: String,
        /// Password.
        password: Secret,
    },
    /// OAuth2 client credentials grant; the token is cached and refreshed.
    Oauth2ClientCredentials {
        /// Token endpoint.
        token_url: String,
        /// Client id.
        #[serde(deserialize_with = "text")]
        client_id: String,
        /// Client secret.
        client_secret: Secret,
        /// Scopes requested.
        #[serde(default)]
        scopes: Vec<String>,
    },
}

fn default_api_key_header() -> String {
    "X-API-Key".into()
}

impl fmt::Debug for ServiceAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceAuth::Bearer { .. } => f.write_str("Bearer(***)"),
            ServiceAuth::ApiKey { header, .. } => write!(f, "ApiKey({header}: ***)"),
            ServiceAuth::Basic { username, .. } => write!(f, "Basic({username}:***)"),
            ServiceAuth::Oauth2ClientCredentials { token_url, client_id, scopes, .. } => {
                write!(f, "Oauth2ClientCredentials({token_url}, {client_id}, {scopes:?}, ***)")
            }
        }
    }
}

/// A route: a pattern mapped to a service, or limits for an in-process route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Subject pattern.
    pub pattern: String,
    /// Service that serves it; absent: limits for the in-process handler
    /// registered under the same pattern.
    #[serde(default)]
    pub service: Option<String>,
    /// HTTP method (default POST).
    #[serde(default)]
    pub method: Option<String>,
    /// Path template; `{rest}` is the subject tokens after the literal prefix.
    #[serde(default)]
    pub path: Option<String>,
    /// Messages per second on this route.
    #[serde(default)]
    pub rate_limit: Option<Rate>,
    /// Burst above the rate.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Most messages delivered at once (0: unlimited).
    #[serde(default)]
    pub max_concurrency: Option<usize>,
    /// Most messages waiting for a delivery slot.
    #[serde(default)]
    pub queue_size: Option<usize>,
    /// Default deadline for messages on this route.
    #[serde(default)]
    pub timeout: Option<Seconds>,
}

/// The deepest `limits.max_json_depth` accepted: payload walks recurse once
/// per level and must stay well inside a 2 MiB thread stack.
pub const MAX_JSON_DEPTH: usize = 512;

/// The `limits` section: message validation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest payload, in bytes.
    pub max_payload_bytes: usize,
    /// Deepest JSON nesting.
    pub max_json_depth: usize,
    /// Most headers per message.
    pub max_headers: usize,
    /// Longest header (name plus value), in bytes.
    pub max_header_bytes: usize,
    /// Longest destination, in bytes.
    pub max_subject_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let l = Limits::default();
        LimitsConfig {
            max_payload_bytes: l.max_payload_bytes,
            max_json_depth: l.max_json_depth,
            max_headers: l.max_headers,
            max_header_bytes: l.max_header_bytes,
            max_subject_bytes: l.max_subject_bytes,
        }
    }
}

impl LimitsConfig {
    /// The limits as the validator takes them.
    pub fn to_limits(&self) -> Limits {
        Limits {
            max_payload_bytes: self.max_payload_bytes,
            max_json_depth: self.max_json_depth,
            max_headers: self.max_headers,
            max_header_bytes: self.max_header_bytes,
            max_subject_bytes: self.max_subject_bytes,
        }
    }
}

// ---------------------------------------------------------------------------
// Value types: durations, rates, secrets.

/// A duration written as seconds (`30`, `0.25`) or with a unit (`250ms`,
/// `30s`, `5m`, `1h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seconds(pub Duration);

impl Seconds {
    /// Whole seconds.
    pub const fn from_secs(s: u64) -> Self {
        Seconds(Duration::from_secs(s))
    }
    /// Milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Seconds(Duration::from_millis(ms))
    }
    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

/// Parse `250ms`, `30s`, `5m`, `1h`, `2d` or a bare number of seconds.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("expected a duration like 250ms, 30s, 5m or a number of seconds, got {text:?}"))?;
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 0.001,
        "us" => 0.000_001,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        other => return Err(format!("unknown duration unit {other:?} in {text:?}: use ms, s, m, h or d")),
    };
    seconds_to_duration(value * scale).ok_or_else(|| format!("duration {text:?} is out of range"))
}

fn seconds_to_duration(s: f64) -> Option<Duration> {
    (s.is_finite() && (0.0..1e12).contains(&s)).then(|| Duration::from_secs_f64(s))
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match NumOrStr::deserialize(d)? {
            NumOrStr::Num(n) => seconds_to_duration(n)
                .map(Seconds)
                .ok_or_else(|| serde::de::Error::custom(format!("expected a non-negative duration, got {n}"))),
            NumOrStr::Str(s) => parse_duration(&s).map(Seconds).map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged, expecting = "a number or a string")]
enum NumOrStr {
    Num(f64),
    Str(String),
}

/// A rate: a number per second, or a string like `60/min`, `10/s`, `5000/h`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Events per second (> 0).
    pub per_second: f64,
}

impl Rate {
    /// A rate of `n` per second.
    pub fn per_second(n: f64) -> Self {
        Rate { per_second: n }
    }
}

/// Parse `60/min`, `10/s`, `5000/h`, `100/d` or a bare number per second.
pub fn parse_rate(text: &str) -> std::result::Result<Rate, String> {
    let bad = || format!("expected a rate like 10, 10/s, 60/min or 5000/h, got {text:?}");
    let (num, unit) = match text.split_once('/') {
        Some((n, u)) => (n.trim(), u.trim()),
        None => (text.trim(), "s"),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let per = match unit {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        "d" | "day" => 86_400.0,
        _ => return Err(bad()),
    };
    rate_from(n / per).ok_or_else(bad)
}

fn rate_from(per_second: f64) -> Option<Rate> {
    (per_second.is_finite() && per_second > 0.0).then_some(Rate { per_second })
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match NumOrStr::deserialize(d)? {
            NumOrStr::Num(n) => {
                rate_from(n).ok_or_else(|| serde::de::Error::custom(format!("expected a rate above 0, got {n}")))
            }
            NumOrStr::Str(s) => parse_rate(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// A secret string: `Debug` never shows it.
///
/// A number or boolean is taken as its text: a secret from `${VAR}` whose
/// value happens to be all digits arrives as a number (see [`expand_env`]),
/// and must not be refused with its value in the error.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(#[serde(deserialize_with = "text")] String);

/// A string field that also takes a number or boolean as its text (for
/// values that come from `${VAR}`: ids, user names, secrets).
fn text<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::Bool(b) => Ok(b.to_string()),
        // The value is not echoed: this may be a secret.
        _ => Err(serde::de::Error::custom("expected a string")),
    }
}

/// A list of [`text`] values.
fn texts<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    struct Text(#[serde(deserialize_with = "text")] String);
    Ok(Vec::<Text>::deserialize(d)?.into_iter().map(|t| t.0).collect())
}

impl Secret {
    /// Wrap a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself: only for the code that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

// ---------------------------------------------------------------------------
// Loading.

impl BridgeConfig {
    /// Parse YAML text (expanding `${VAR}` from the environment).
    pub fn from_yaml(text: &str) -> Result<Self> {
        // Through YAML's own value first: it refuses duplicate keys (a
        // second `security:` must not silently replace the first), and
        // `.inf`/`.nan` are caught here with their key path (JSON has no
        // such numbers; they would read as "not set").
        let mut yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| {
            let at = e.location().map(|l| format!(" (line {}, column {})", l.line(), l.column())).unwrap_or_default();
            BridgeError::config("", format!("not valid YAML{at}: {e}"))
        })?;
        // Merge keys (`<<: *defaults`), for services and routes that share settings.
        yaml.apply_merge()
            .map_err(|e| BridgeError::config("", format!("a merge key (`<<`) cannot be applied: {e}")))?;
        let value = yaml_to_json(yaml, &mut String::new())?;
        // An empty document is the embedded default.
        let value = if value.is_null() { serde_json::Value::Object(Default::default()) } else { value };
        Self::from_value(value)
    }

    /// Read and parse a YAML file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| BridgeError::config("", format!("cannot read config file {}: {e}", path.display())))?;
        Self::from_yaml(&text).map_err(|e| e.context(path.display()))
    }

    /// Build from a JSON-shaped value (a binding's dict), with `${VAR}` expansion.
    pub fn from_value(mut value: serde_json::Value) -> Result<Self> {
        if !value.is_object() {
            return Err(BridgeError::config(
                "",
                "the configuration must be a mapping with sections like `bridge:` and `security:`",
            ));
        }
        // `security:` with nothing under it (all commented out, say) must
        // not read as "no security section": that would turn security off.
        if value.get("security").is_some_and(serde_json::Value::is_null) {
            return Err(BridgeError::config(
                "security",
                "is empty: fill it in, or write `auth_type: none` to run without security",
            ));
        }
        expand_env(&mut value, &mut String::new(), &|name| std::env::var(name).ok())?;
        let config: BridgeConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            BridgeError::config(&path, humanize(&e.inner().to_string()))
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Is security on?
    pub fn security_enabled(&self) -> bool {
        self.security.as_ref().is_some_and(|s| s.auth_type != AuthType::None)
    }

    /// Cross-field checks that types alone cannot express.
    pub fn validate(&self) -> Result<()> {
        let b = &self.bridge;
        if b.max_connections == 0 {
            return Err(BridgeError::config("bridge.max_connections", "must be at least 1"));
        }
        if b.queue_size == 0 {
            return Err(BridgeError::config("bridge.queue_size", "must be at least 1"));
        }
        if b.dead_letter_capacity == 0 {
            return Err(BridgeError::config("bridge.dead_letter_capacity", "must be at least 1"));
        }
        for (key, value) in [
            ("limits.max_payload_bytes", self.limits.max_payload_bytes),
            ("limits.max_subject_bytes", self.limits.max_subject_bytes),
        ] {
            if value == 0 {
                return Err(BridgeError::config(key, "must be at least 1 (0 would refuse every message)"));
            }
        }
        let depth = self.limits.max_json_depth;
        if !(1..=MAX_JSON_DEPTH).contains(&depth) {
            // Payload walks recurse once per level; far deeper nesting would
            // overflow a thread's stack (a crash, not an error).
            return Err(BridgeError::config(
                "limits.max_json_depth",
                format!("must be between 1 and {MAX_JSON_DEPTH}, got {depth}"),
            ));
        }
        let m = &self.monitoring;
        if !(0.0..=1.0).contains(&m.alert_threshold) {
            return Err(BridgeError::config(
                "monitoring.alert_threshold",
                format!("must be between 0 and 1, got {}", m.alert_threshold),
            ));
        }
        if !["TRACE", "DEBUG", "INFO", "WARN", "WARNING", "ERROR"].contains(&m.log_level.to_ascii_uppercase().as_str())
        {
            return Err(BridgeError::config(
                "monitoring.log_level",
                format!("expected TRACE, DEBUG, INFO, WARN or ERROR, got {:?}", m.log_level),
            ));
        }
        if m.health_check_interval.get().is_zero() {
            return Err(BridgeError::config("monitoring.health_check_interval", "must be above 0"));
        }
        if let Some(s) = &self.security {
            s.validate()?;
        }
        for (name, svc) in &self.services {
            let path = format!("services.{name}");
            if !name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-') {
                return Err(BridgeError::config(&path, "service names use letters, digits, `_` and `-`"));
            }
            // The value is not echoed: a URL may carry a password or a key.
            let url = url::Url::parse(&svc.url)
                .map_err(|e| BridgeError::config(&format!("{path}.url"), format!("not a valid http(s) URL ({e})")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(BridgeError::config(&format!("{path}.url"), "must be an http:// or https:// URL"));
            }
            if let Some(ServiceAuth::Oauth2ClientCredentials { token_url, .. }) = &svc.auth {
                url::Url::parse(token_url).map_err(|e| {
                    BridgeError::config(&format!("{path}.auth.token_url"), format!("not a valid URL ({e})"))
                })?;
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err(BridgeError::config(
                    &format!("{path}.url"),
                    "must not carry credentials; use `auth: {type: basic, username: ..., password: ...}`",
                ));
            }
            if url.query().is_some() || url.fragment().is_some() {
                return Err(BridgeError::config(&format!("{path}.url"), "must not have a query or fragment"));
            }
            for (key, v) in [("breaker_failure_rate", svc.breaker_failure_rate), ("retry_budget", svc.retry_budget)] {
                if let Some(v) = v
                    && !(0.0..=1.0).contains(&v)
                {
                    return Err(BridgeError::config(
                        &format!("{path}.{key}"),
                        format!("must be between 0 and 1, got {v}"),
                    ));
                }
            }
            if svc.max_response_bytes == Some(0) {
                return Err(BridgeError::config(&format!("{path}.max_response_bytes"), "must be at least 1"));
            }
            if svc.breaker_failures == Some(0) {
                return Err(BridgeError::config(&format!("{path}.breaker_failures"), "must be at least 1"));
            }
            if svc.max_connections == Some(0) {
                return Err(BridgeError::config(&format!("{path}.max_connections"), "must be at least 1"));
            }
            if let Some(h) = &svc.health_check
                && !h.starts_with('/')
            {
                return Err(BridgeError::config(&format!("{path}.health_check"), "must be a path starting with `/`"));
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            let path = format!("routes[{i}]");
            validate_pattern(&r.pattern).map_err(|e| BridgeError::config(&format!("{path}.pattern"), e.message()))?;
            match &r.service {
                Some(svc) if !self.services.contains_key(svc) => {
                    let known: Vec<&str> = self.services.keys().map(String::as_str).collect();
                    return Err(BridgeError::config(
                        &format!("{path}.service"),
                        format!("no service named {svc:?} under `services` (known: {})", known.join(", ")),
                    ));
                }
                None if r.method.is_some() || r.path.is_some() => {
                    return Err(BridgeError::config(&path, "`method` and `path` need a `service`"));
                }
                _ => {}
            }
            if let Some(m) = &r.method
                && !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&m.to_ascii_uppercase().as_str())
            {
                return Err(BridgeError::config(
                    &format!("{path}.method"),
                    format!("expected GET, POST, PUT, PATCH or DELETE, got {m:?}"),
                ));
            }
            if r.queue_size == Some(0) {
                return Err(BridgeError::config(&format!("{path}.queue_size"), "must be at least 1"));
            }
        }
        Ok(())
    }
}

impl SecurityConfig {
    fn validate(&self) -> Result<()> {
        for (i, k) in self.signing_keys.iter().enumerate() {
            if k.secret.expose().len() < 32 {
                return Err(BridgeError::config(
                    &format!("security.signing_keys[{i}].secret"),
                    "must be at least 32 bytes (e.g. the output of `openssl rand -hex 32`)",
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, k) in self.signing_keys.iter().enumerate() {
            if !seen.insert(&k.id) {
                return Err(BridgeError::config(
                    &format!("security.signing_keys[{i}].id"),
                    format!("duplicate key id {:?}", k.id),
                ));
            }
        }
        let mut hashes = std::collections::HashMap::new();
        for (i, k) in self.api_keys.iter().enumerate() {
            let path = format!("security.api_keys[{i}]");
            if k.sha256.len() != 64 || !k.sha256.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(BridgeError::config(
                    &format!("{path}.sha256"),
                    "expected 64 hex digits, the SHA-256 of the key (`dreamos-bridge hash-key` prints it); never put the key itself here",
                ));
            }
            // One key, two entries: which principal and roles it gets would
            // depend on the order of the list.
            if let Some(first) = hashes.insert(k.sha256.to_ascii_lowercase(), i) {
                return Err(BridgeError::config(
                    &format!("{path}.sha256"),
                    format!(
                        "is the same key as security.api_keys[{first}]: one key authenticates one principal; remove one entry"
                    ),
                ));
            }
            for r in &k.roles {
                if !self.roles.contains_key(r) {
                    return Err(BridgeError::config(
                        &format!("{path}.roles"),
                        format!("no role named {r:?} under security.roles"),
                    ));
                }
            }
        }
        for (name, role) in &self.roles {
            for (action, list) in [
                ("route", &role.route),
                ("publish", &role.publish),
                ("handle", &role.handle),
                ("admin", &role.admin),
                ("deny", &role.deny),
            ] {
                for (i, p) in list.iter().enumerate() {
                    validate_pattern(p).map_err(|e| {
                        BridgeError::config(&format!("security.roles.{name}.{action}[{i}]"), e.message())
                    })?;
                }
            }
        }
        if let Some(o) = &self.oidc {
            if o.jwks.is_none() && o.jwks_file.is_none() {
                return Err(BridgeError::config(
                    "security.oidc",
                    "give the issuer's keys as `jwks` (inline) or `jwks_file`",
                ));
            }
            if o.algorithms.is_empty() {
                return Err(BridgeError::config(
                    "security.oidc.algorithms",
                    "list at least one algorithm, e.g. [RS256]",
                ));
            }
            for a in &o.algorithms {
                if a.eq_ignore_ascii_case("none") || a.parse::<jsonwebtoken::Algorithm>().is_err() {
                    return Err(BridgeError::config(
                        "security.oidc.algorithms",
                        format!("{a:?} is not an accepted algorithm"),
                    ));
                }
            }
        }
        if let Some(ms) = &self.message_signing {
            if ms.keys.is_empty() {
                return Err(BridgeError::config("security.message_signing.keys", "list at least one key"));
            }
            for (i, k) in ms.keys.iter().enumerate() {
                if k.secret.expose().len() < 32 {
                    return Err(BridgeError::config(
                        &format!("security.message_signing.keys[{i}].secret"),
                        "must be at least 32 bytes",
                    ));
                }
            }
        }
        if self.token_expiry.get() < Duration::from_secs(1) {
            return Err(BridgeError::config("security.token_expiry", "must be at least 1 second"));
        }
        Ok(())
    }
}

/// Replace `${VAR}` in every string; `$$` is a literal `$`. A string that is
/// exactly one `${VAR}` whose value reads as a number (written as a number
/// is written back: `8080`, not `1e5`) or a boolean becomes that number or
/// boolean, so `port: ${PORT}` works; string fields take it back as text.
fn expand_env(value: &mut serde_json::Value, path: &mut String, lookup: &dyn Fn(&str) -> Option<String>) -> Result<()> {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('$') => {
            let whole_var = s.starts_with("${") && s.ends_with('}') && s[2..].find('}') == Some(s.len() - 3);
            let expanded = expand_str(s, path, lookup)?;
            // A number only when it reads back as the same text: "1e5" or
            // "007" stay strings (a secret must arrive exactly as it is).
            *value = match whole_var {
                true => serde_yaml_ng::from_str::<Value>(&expanded)
                    .ok()
                    .filter(|v| match v {
                        Value::Bool(b) => b.to_string() == expanded,
                        Value::Number(n) => n.to_string() == expanded,
                        _ => false,
                    })
                    .unwrap_or(Value::String(expanded)),
                false => Value::String(expanded),
            };
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                expand_env(item, path, lookup)?;
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                expand_env(item, path, lookup)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

/// YAML's value as JSON's. Keys that are scalars become their text;
/// numbers must be finite.
fn yaml_to_json(value: serde_yaml_ng::Value, path: &mut String) -> Result<serde_json::Value> {
    use serde_json::Value;
    use serde_yaml_ng::Value as Yaml;
    Ok(match value {
        Yaml::Null => Value::Null,
        Yaml::Bool(b) => Value::Bool(b),
        Yaml::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                let number = serde_json::Number::from_f64(f).ok_or_else(|| {
                    BridgeError::config(path, format!("{n} is not a finite number; write a number such as 30"))
                })?;
                Value::Number(number)
            }
        }
        Yaml::String(s) => Value::String(s),
        Yaml::Sequence(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                out.push(yaml_to_json(item, path)?);
                path.truncate(len);
            }
            Value::Array(out)
        }
        Yaml::Mapping(map) => {
            let mut out = serde_json::Map::with_capacity(map.len());
            for (k, item) in map {
                let key = match k {
                    Yaml::String(s) => s,
                    Yaml::Number(n) => n.to_string(),
                    Yaml::Bool(b) => b.to_string(),
                    _ => return Err(BridgeError::config(path, "keys must be plain text")),
                };
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&key);
                let item = yaml_to_json(item, path)?;
                // `42:` and `'42':` are two keys to YAML, one to us.
                if out.contains_key(&key) {
                    return Err(BridgeError::config(
                        path,
                        "is given twice (once as text, once as a number or boolean)",
                    ));
                }
                path.truncate(len);
                out.insert(key, item);
            }
            Value::Object(out)
        }
        Yaml::Tagged(tagged) => yaml_to_json(tagged.value, path)?,
    })
}

fn expand_str(s: &str, path: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('{') {
            let end = r
                .find('}')
                .ok_or_else(|| BridgeError::config(path, "unterminated `${` (write `$$` for a literal `$`)"))?;
            let name = &r[..end];
            if name.is_empty() || !name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
                return Err(BridgeError::config(path, format!("`${{{name}}}` is not a valid variable name")));
            }
            let v = lookup(name).ok_or_else(|| {
                BridgeError::config(path, format!("environment variable {name} is not set (referenced as ${{{name}}})"))
            })?;
            out.push_str(&v);
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Turn serde's wording into the contract's: `expected an integer, got "many"`.
fn humanize(msg: &str) -> String {
    let Some(rest) = msg.strip_prefix("invalid type: ").or_else(|| msg.strip_prefix("invalid value: ")) else {
        return msg.to_string();
    };
    let Some((got, expected)) = rest.split_once(", expected ") else { return msg.to_string() };
    let expected = match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" | "i32" | "i64" => "an integer",
        "f64" | "f32" => "a number",
        "a boolean" | "bool" => "true or false",
        "a string" | "string" => "a string",
        e if e.starts_with("struct ") || e.starts_with("a map") => "a mapping",
        e if e.starts_with("a sequence") => "a list",
        e => e,
    };
    let got = got
        .strip_prefix("string ")
        .map(str::to_string)
        .or_else(|| got.strip_prefix("integer ").map(|n| n.trim_matches('`').to_string()))
        .or_else(|| got.strip_prefix("floating point ").map(|n| n.trim_matches('`').to_string()))
        .unwrap_or_else(|| got.to_string());
    format!("expected {expected}, got {got}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn err(yaml: &str) -> String {
        let e = BridgeConfig::from_yaml(yaml).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Config);
        e.message().to_string()
    }

    #[test]
    fn debug_output_shows_jwks_key_ids_not_keys() {
        let c = BridgeConfig::from_yaml(
            "security:\n  auth_type: token\n  oidc:\n    issuer: https://idp\n    audience: [b]\n    algorithms: [HS256]\n    jwks: {keys: [{kty: oct, kid: shared-1, k: c2VjcmV0LXN5bW1ldHJpYy1rZXk}]}\n",
        )
        .unwrap();
        let shown = format!("{c:?}");
        assert!(shown.contains("shared-1") && !shown.contains("c2VjcmV0LXN5bW1ldHJpYy1rZXk"), "{shown}");
    }

    #[test]
    fn empty_is_the_embedded_default() {
        let c = BridgeConfig::from_yaml("").unwrap();
        assert!(!c.security_enabled());
        assert_eq!(c.bridge.port, 8000);
        assert!(c.services.is_empty());
    }

    #[test]
    fn seed_sections_load_verbatim() {
        let c = BridgeConfig::from_yaml(
            "bridge:\n  host: localhost\n  port: 8000\n  max_connections: 100\n  connection_timeout: 30\n  retry_attempts: 3\n  retry_delay: 5\n\
             security:\n  auth_type: token\n  token_expiry: 3600\n  rate_limit: 1000\n  allowed_origins:\n    - https://api.example.com\n    - https://service.example.com\n\
             monitoring:\n  metrics_enabled: true\n  health_check_interval: 30\n  log_level: INFO\n  alert_threshold: 0.9\n",
        )
        .unwrap();
        assert_eq!(c.bridge.retry_delay.get(), Duration::from_secs(5));
        assert!(c.security_enabled());
        assert_eq!(c.security.unwrap().rate_limit.unwrap().per_second, 1000.0);
        assert_eq!(c.monitoring.alert_threshold, 0.9);
    }

    #[test]
    fn wrong_type_names_the_path() {
        assert_eq!(
            err("bridge:\n  max_connections: many\n"),
            "bridge.max_connections: expected an integer, got \"many\""
        );
    }

    #[test]
    fn json_depth_stays_within_what_the_stack_can_walk() {
        let m = err("limits:\n  max_json_depth: 100000\n");
        assert!(m.contains("limits.max_json_depth") && m.contains("between 1 and 512"), "{m}");
        assert!(err("limits:\n  max_json_depth: 0\n").contains("limits.max_json_depth"));
        let c = BridgeConfig::from_yaml(&format!("limits:\n  max_json_depth: {MAX_JSON_DEPTH}\n")).unwrap();
        assert_eq!(c.limits.max_json_depth, MAX_JSON_DEPTH);
    }

    #[test]
    fn unknown_keys_name_the_path() {
        let m = err("bridge:\n  max_conections: 5\n");
        assert!(m.starts_with("bridge"), "{m}");
        assert!(m.contains("max_conections"), "{m}");
        let m = err("nope: 1\n");
        assert!(m.contains("nope"), "{m}");
    }

    #[test]
    fn durations_and_rates() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1").is_err());
        assert_eq!(parse_rate("60/min").unwrap().per_second, 1.0);
        assert_eq!(parse_rate("10").unwrap().per_second, 10.0);
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("ten/s").is_err());
        let m = err("bridge:\n  retry_delay: soon\n");
        assert!(m.starts_with("bridge.retry_delay: "), "{m}");
    }

    #[test]
    fn env_expansion() {
        let env = |n: &str| match n {
            "PORT" => Some("9001".to_string()),
            "KEY" => Some("s3cr3t".to_string()),
            _ => None,
        };
        let mut v = serde_json::json!({"a": "${PORT}", "b": "x-${KEY}-$$-${PORT}", "c": ["${KEY}"]});
        expand_env(&mut v, &mut String::new(), &env).unwrap();
        assert_eq!(v, serde_json::json!({"a": 9001, "b": "x-s3cr3t-$-9001", "c": ["s3cr3t"]}));
        let mut v = serde_json::json!({"services": {"w": {"token": "${MISSING}"}}});
        let e = expand_env(&mut v, &mut String::new(), &env).unwrap_err();
        assert!(
            e.message().starts_with("services.w.token: environment variable MISSING is not set"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn numbers_from_env_stay_exact_and_string_fields_take_them() {
        let env = |n: &str| match n {
            "EXP" => Some("1e5".to_string()),
            "ZEROS" => Some("007".to_string()),
            "DIGITS" => Some("98765432101234".to_string()),
            _ => None,
        };
        let mut v = serde_json::json!({"a": "${EXP}", "b": "${ZEROS}", "c": "${DIGITS}"});
        expand_env(&mut v, &mut String::new(), &env).unwrap();
        assert_eq!(v, serde_json::json!({"a": "1e5", "b": "007", "c": 98765432101234u64}));
        // A secret, a client id and a user name that arrive as numbers are taken as their text.
        let cfg = BridgeConfig::from_value(serde_json::json!({"services": {
            "t": {"url": "http://127.0.0.1:1", "auth": {"type": "bearer", "token": 98765432101234u64}},
            "b": {"url": "http://127.0.0.1:1", "auth": {"type": "basic", "username": 42, "password": true}},
        }}))
        .unwrap();
        match &cfg.services["t"].auth {
            Some(ServiceAuth::Bearer { token }) => assert_eq!(token.expose(), "98765432101234"),
            other => panic!("{other:?}"),
        }
        match &cfg.services["b"].auth {
            Some(ServiceAuth::Basic { username, password }) => {
                assert_eq!((username.as_str(), password.expose()), ("42", "true"))
            }
            other => panic!("{other:?}"),
        }
        // A secret of the wrong shape is refused without being echoed.
        let e = BridgeConfig::from_value(serde_json::json!({"services": {
            "t": {"url": "http://127.0.0.1:1", "auth": {"type": "bearer", "token": ["hunter2"]}},
        }}))
        .unwrap_err();
        assert!(!e.message().contains("hunter2"), "{}", e.message());
    }

    #[test]
    fn empty_security_duplicate_keys_and_non_finite_numbers_are_refused() {
        // An emptied security section would otherwise turn security off.
        let m = err("security:\n  # auth_type: token\n");
        assert!(m.starts_with("security: is empty"), "{m}");
        assert!(BridgeConfig::from_value(serde_json::json!({"security": null})).is_err());
        // A second key must not silently replace the first.
        let m = err("security:\n  auth_type: token\nsecurity:\n  auth_type: none\n");
        assert!(m.contains("duplicate"), "{m}");
        assert!(err("bridge:\n  port: 1\n  port: 2\n").contains("duplicate"));
        // .nan/.inf would read as "not set".
        let m = err("security:\n  auth_type: token\n  rate_limit: .nan\n");
        assert!(m.starts_with("security.rate_limit: .nan is not a finite number"), "{m}");
        let m = err("routes:\n  - pattern: a.b\n    timeout: -.inf\n");
        assert!(m.starts_with("routes[0].timeout: "), "{m}");
        // `42:` and `'42':` are two keys to YAML, one here.
        let m = err("services:\n  42:\n    url: http://127.0.0.1:1\n  '42':\n    url: http://127.0.0.1:2\n");
        assert!(m.starts_with("services.42: is given twice"), "{m}");
        // Merge keys apply; the key written beside them wins.
        let c = BridgeConfig::from_yaml(
            "x-defaults: &svc\n  url: http://127.0.0.1:1\n  timeout: 5s\nservices:\n  a:\n    <<: *svc\n  b:\n    <<: *svc\n    timeout: 9s\n",
        );
        assert!(c.is_err(), "x-defaults is an unknown top-level key");
        let c = BridgeConfig::from_yaml(
            "services:\n  a: &svc\n    url: http://127.0.0.1:1\n    timeout: 5s\n  b:\n    <<: *svc\n    timeout: 9s\n",
        )
        .unwrap();
        assert_eq!(c.services["b"].url, "http://127.0.0.1:1");
        assert_eq!(c.services["b"].timeout.map(|t| t.get().as_secs()), Some(9));
        // Numbers, tags and numeric keys still load.
        let c = BridgeConfig::from_yaml(
            "bridge:\n  port: !!int 8081\n  retry_delay: 0.5\nservices:\n  '42':\n    url: http://127.0.0.1:1\n",
        )
        .unwrap();
        assert_eq!(c.bridge.port, 8081);
        assert!(c.services.contains_key("42"));
    }

    #[test]
    fn url_errors_do_not_echo_the_url() {
        let m = err("services:\n  s:\n    url: \"https://api.example.com:70000/?key=topsecretvalue\"\n");
        assert!(m.starts_with("services.s.url: not a valid http(s) URL") && !m.contains("topsecretvalue"), "{m}");
    }

    #[test]
    fn limits_of_zero_are_refused() {
        assert!(err("limits:\n  max_payload_bytes: 0\n").starts_with("limits.max_payload_bytes: must be at least 1"));
        assert!(err("limits:\n  max_subject_bytes: 0\n").starts_with("limits.max_subject_bytes: must be at least 1"));
    }

    #[test]
    fn env_values_keep_their_case_and_id_fields_take_numbers() {
        let env = |n: &str| match n {
            "TOK" => Some("True".to_string()),
            "FLAG" => Some("true".to_string()),
            _ => None,
        };
        let mut v = serde_json::json!({"a": "${TOK}", "b": "${FLAG}"});
        expand_env(&mut v, &mut String::new(), &env).unwrap();
        assert_eq!(v, serde_json::json!({"a": "True", "b": true}));
        let c = BridgeConfig::from_value(serde_json::json!({
            "bridge": {"host": 2024},
            "security": {
                "auth_type": "token",
                "signing_keys": [{"id": 2024, "secret": "0123456789abcdef0123456789abcdef"}],
                "api_keys": [{"principal": 42, "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}],
                "oidc": {"issuer": 7, "audience": [123456789], "jwks": {"keys": []}},
            },
            "services": {"s": {"url": "http://127.0.0.1:1", "auth": {"type": "api_key", "header": 1, "key": 5}}},
        }))
        .unwrap();
        let s = c.security.as_ref().unwrap();
        assert_eq!(
            (c.bridge.host.as_str(), s.signing_keys[0].id.as_str(), s.api_keys[0].principal.as_str()),
            ("2024", "2024", "42")
        );
        assert_eq!(s.oidc.as_ref().unwrap().audience, vec!["123456789".to_string()]);
    }

    #[test]
    fn routes_must_name_known_services() {
        let m = err("routes:\n  - pattern: a.>\n    service: ghost\n");
        assert!(m.starts_with("routes[0].service: no service named \"ghost\""), "{m}");
        let m = err("routes:\n  - pattern: a.>.b\n");
        assert!(m.starts_with("routes[0].pattern:"), "{m}");
    }

    #[test]
    fn service_settings_are_checked() {
        let m = err("services:\n  s:\n    url: http://user:pw@127.0.0.1:1\n");
        assert!(m.starts_with("services.s.url: must not carry credentials"), "{m}");
        assert!(!m.contains("pw"), "{m}");
        let m = err("services:\n  s:\n    url: http://127.0.0.1:1\n    retry_budget: 1.5\n");
        assert!(m.starts_with("services.s.retry_budget: must be between 0 and 1"), "{m}");
        let m = err("services:\n  s:\n    url: http://127.0.0.1:1\n    breaker_failure_rate: -1\n");
        assert!(m.starts_with("services.s.breaker_failure_rate:"), "{m}");
        let m = err("services:\n  s:\n    url: http://127.0.0.1:1\n    breaker_failures: 0\n");
        assert!(m.starts_with("services.s.breaker_failures:"), "{m}");
        let m = err("services:\n  s:\n    url: http://127.0.0.1:1?a=b\n");
        assert!(m.starts_with("services.s.url: must not have a query"), "{m}");
        let m = err("services:\n  s:\n    url: http://127.0.0.1:1\n    retries: 3\n");
        assert!(m.starts_with("services.s"), "{m}");
        let ok = BridgeConfig::from_yaml(
            "services:\n  s:\n    url: http://127.0.0.1:1\n    retry_budget: 0.1\n    breaker_failure_rate: 0.3\n",
        )
        .unwrap();
        assert_eq!(ok.services["s"].retry_budget, Some(0.1));
        assert_eq!(ok.services["s"].breaker_failure_rate, Some(0.3));
    }

    #[test]
    fn api_keys_must_be_hashes() {
        let m = err("security:\n  api_keys:\n    - principal: p\n      sha256: dk_live_plaintext\n");
        assert!(m.starts_with("security.api_keys[0].sha256:"), "{m}");
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        let a = ServiceAuth::Bearer { token: s };
        assert!(!format!("{a:?}").contains("hunter2"));
    }

    #[test]
    fn oidc_rejects_alg_none() {
        let m = err(
            "security:\n  oidc:\n    issuer: https://i\n    audience: [a]\n    jwks: {keys: []}\n    algorithms: [none]\n",
        );
        assert!(m.starts_with("security.oidc.algorithms"), "{m}");
    }
}
