//! Outgoing credentials: what the bridge adds to requests to a service.
//!
//! Agents never hold service credentials: the bridge reads them from its
//! configuration (usually `${ENV}`), adds them to each request, and never
//! takes them from the caller. Header values are marked *sensitive* so
//! that the HTTP stack never prints them, no error or log line here names
//! them, and [`Credentials::redact`] scrubs them from anything a service
//! echoes back before it reaches an error.
//!
//! OAuth2 client credentials: the access token is cached and refreshed
//! shortly before it expires; concurrent callers that find no valid token
//! share one fetch (the first takes an async lock and fetches, the others
//! wait on the lock and then find the fresh token).

use std::time::{Duration, Instant};

use base64::Engine;
use parking_lot::RwLock;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use crate::config::{Secret, ServiceAuth};
use crate::error::{BridgeError, ErrorCode, Result};

/// Tokens are refreshed this long before they expire (at most; a tenth of
/// the lifetime for short-lived tokens).
const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// Lifetime assumed when the token endpoint gives no `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// Largest token endpoint answer read.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

/// The credentials of one service.
pub(crate) enum Credentials {
    None,
    /// A fixed header (bearer, api key, basic), already encoded.
    Static {
        name: HeaderName,
        value: HeaderValue,
        secrets: Vec<String>,
    },
    OAuth2(Box<OAuth2>),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::Static { name, .. } => write!(f, "Static({name}: ***)"),
            Credentials::OAuth2(o) => write!(f, "OAuth2({}, {})", o.token_url, o.client_id),
        }
    }
}

/// Why adding credentials failed.
#[derive(Debug)]
pub(crate) struct CredentialError {
    pub error: BridgeError,
    /// A retry may help (the token endpoint was unreachable or answered 5xx).
    pub retryable: bool,
}

impl Credentials {
    /// Encode the configured credentials; `service` names the config path in errors.
    pub fn new(service: &str, auth: Option<&ServiceAuth>, client: reqwest::Client) -> Result<Self> {
        let path = format!("services.{service}.auth");
        let bad = |what: &str| {
            BridgeError::config(&path, format!("the {what} has characters that cannot go into an HTTP header"))
        };
        Ok(match auth {
            None => Credentials::None,
            Some(ServiceAuth::Bearer { token }) => Credentials::Static {
                name: AUTHORIZATION,
                value: sensitive(&format!("Bearer {}", token.expose())).ok_or_else(|| bad("token"))?,
                secrets: vec![token.expose().to_string()],
            },
            Some(ServiceAuth::ApiKey { header, key }) => Credentials::Static {
                name: HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                    BridgeError::config(&format!("{path}.header"), format!("{header:?} is not a valid header name"))
                })?,
                value: sensitive(key.expose()).ok_or_else(|| bad("key"))?,
                secrets: vec![key.expose().to_string()],
            },
            Some(ServiceAuth::Basic { username, password }) => {
                let raw = format!("{username}:{}", password.expose());
                let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
                Credentials::Static {
                    name: AUTHORIZATION,
                    value: sensitive(&format!("Basic {encoded}")).ok_or_else(|| bad("password"))?,
                    secrets: vec![password.expose().to_string(), encoded],
                }
            }
            Some(ServiceAuth::Oauth2ClientCredentials { token_url, client_id, client_secret, scopes }) => {
                let token_url = url::Url::parse(token_url)
                    .map_err(|e| BridgeError::config(&format!("{path}.token_url"), format!("not a valid URL ({e})")))?;
                Credentials::OAuth2(Box::new(OAuth2 {
                    service: service.to_string(),
                    token_url,
                    client_id: client_id.clone(),
                    client_secret: client_secret.clone(),
                    scopes: scopes.join(" "),
                    client,
                    cached: RwLock::new(None),
                    fetch: tokio::sync::Mutex::new(()),
                }))
            }
        })
    }

    /// The header name the credentials use (callers may not set it).
    pub fn header_name(&self) -> Option<&HeaderName> {
        match self {
            Credentials::None => None,
            Credentials::Static { name, .. } => Some(name),
            Credentials::OAuth2(_) => Some(&AUTHORIZATION),
        }
    }

    /// Add the credentials to a request's headers without waiting: `false`
    /// when an OAuth2 token must be fetched first (then call [`apply`](Self::apply)).
    pub fn apply_now(&self, headers: &mut HeaderMap) -> bool {
        match self {
            Credentials::None => true,
            Credentials::Static { name, value, .. } => {
                headers.insert(name.clone(), value.clone());
                true
            }
            Credentials::OAuth2(o) => match o.fresh() {
                Some(token) => {
                    headers.insert(AUTHORIZATION, token);
                    true
                }
                None => false,
            },
        }
    }

    /// Add the credentials to a request's headers, fetching a token if needed.
    pub async fn apply(&self, headers: &mut HeaderMap, deadline: Instant) -> Result<(), CredentialError> {
        if !self.apply_now(headers)
            && let Credentials::OAuth2(o) = self
        {
            headers.insert(AUTHORIZATION, o.token(deadline).await?);
        }
        Ok(())
    }

    /// The service refused our credentials: drop a cached token so that the
    /// next call fetches a new one.
    pub fn rejected(&self) {
        if let Credentials::OAuth2(o) = self {
            *o.cached.write() = None;
        }
    }

    /// Replace every secret this service holds in `text` with `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        let mut scrub = |s: &str| {
            if !s.is_empty() && out.contains(s) {
                out = out.replace(s, "***");
            }
        };
        match self {
            Credentials::None => {}
            Credentials::Static { secrets, .. } => secrets.iter().for_each(|s| scrub(s)),
            Credentials::OAuth2(o) => {
                scrub(o.client_secret.expose());
                if let Some(t) = o.cached.read().as_ref() {
                    scrub(&t.raw);
                }
            }
        }
        out
    }
}

fn sensitive(value: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(value).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// OAuth2 client credentials grant (RFC 6749 section 4.4) with a token cache.
pub(crate) struct OAuth2 {
    service: String,
    token_url: url::Url,
    client_id: String,
    client_secret: Secret,
    scopes: String,
    client: reqwest::Client,
    cached: RwLock<Option<CachedToken>>,
    /// Held while fetching: the single flight.
    fetch: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
struct CachedToken {
    header: HeaderValue,
    raw: String,
    refresh_at: Instant,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    /// Seconds; some endpoints send it as a string ("3599"). A value that
    /// is neither is ignored (the default lifetime applies).
    #[serde(default, deserialize_with = "lenient_seconds")]
    expires_in: Option<f64>,
}

fn lenient_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    })
}

impl OAuth2 {
    fn fresh(&self) -> Option<HeaderValue> {
        self.cached.read().as_ref().filter(|t| Instant::now() < t.refresh_at).map(|t| t.header.clone())
    }

    async fn token(&self, deadline: Instant) -> Result<HeaderValue, CredentialError> {
        if let Some(h) = self.fresh() {
            return Ok(h);
        }
        let _flight = match tokio::time::timeout_at(deadline.into(), self.fetch.lock()).await {
            Ok(g) => g,
            Err(_) => {
                return Err(CredentialError {
                    error: BridgeError::timeout(format!(
                        "timed out waiting for an OAuth2 token for service {:?}",
                        self.service
                    )),
                    retryable: false,
                });
            }
        };
        // Whoever held the lock before us may have fetched it already.
        if let Some(h) = self.fresh() {
            return Ok(h);
        }
        let fetched = tokio::time::timeout_at(deadline.into(), self.fetch_token()).await.unwrap_or_else(|_| {
            Err(CredentialError {
                error: BridgeError::timeout(format!(
                    "the OAuth2 token endpoint of service {:?} did not answer within the deadline",
                    self.service
                )),
                retryable: false,
            })
        })?;
        let header = fetched.header.clone();
        *self.cached.write() = Some(fetched);
        Ok(header)
    }

    async fn fetch_token(&self) -> Result<CachedToken, CredentialError> {
        let unavailable = |why: String, retryable: bool| CredentialError {
            error: BridgeError::new(
                ErrorCode::ServiceUnavailable,
                format!(
                    "could not get an OAuth2 token for service {:?} from {}: {why}",
                    self.service,
                    origin(&self.token_url)
                ),
            ),
            retryable,
        };
        let mut form = vec![("grant_type", "client_credentials")];
        if !self.scopes.is_empty() {
            form.push(("scope", self.scopes.as_str()));
        }
        let started = Instant::now();
        tracing::debug!(service = %self.service, "fetching an OAuth2 access token");
        let resp = self
            .client
            .post(self.token_url.clone())
            .basic_auth(&self.client_id, Some(self.client_secret.expose()))
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| unavailable(describe_reqwest(&e), true))?;
        let status = resp.status();
        if !status.is_success() {
            let hint = match status.as_u16() {
                400 | 401 | 403 => " (check client_id, client_secret and scopes)",
                _ => "",
            };
            return Err(unavailable(format!("status {status}{hint}"), status.is_server_error() || status == 429));
        }
        let body = read_capped(resp, MAX_TOKEN_RESPONSE)
            .await
            .map_err(|_| unavailable("the answer was unreadable or too large".into(), true))?;
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| unavailable("the answer is not a JSON object with an access_token".into(), false))?;
        if parsed.token_type.as_deref().is_some_and(|t| !t.eq_ignore_ascii_case("bearer")) {
            return Err(unavailable("the token type is not Bearer".into(), false));
        }
        let lifetime = parsed
            .expires_in
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(|s| Duration::from_secs_f64(s.min(1e9)))
            .unwrap_or(DEFAULT_LIFETIME);
        let margin = REFRESH_MARGIN.min(lifetime / 10);
        let header = sensitive(&format!("Bearer {}", parsed.access_token))
            .ok_or_else(|| unavailable("the access token has characters not allowed in a header".into(), false))?;
        tracing::debug!(service = %self.service, ?lifetime, "OAuth2 access token cached");
        Ok(CachedToken { header, raw: parsed.access_token, refresh_at: started + lifetime - margin })
    }
}

/// `scheme://host:port` of a URL, for messages (never a path or query).
pub(crate) fn origin(url: &url::Url) -> String {
    url.origin().ascii_serialization()
}

/// A reqwest error in words, without its URL.
pub(crate) fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut out = if e.is_connect() {
        "connection failed".to_string()
    } else if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_body() || e.is_decode() {
        "the connection broke while reading the answer".to_string()
    } else if e.is_request() {
        "the request could not be sent (connection reset or closed)".to_string()
    } else {
        "request failed".to_string()
    };
    // The innermost cause says what happened (refused, reset, DNS, TLS).
    let mut source = std::error::Error::source(e);
    let mut last = None;
    while let Some(s) = source {
        last = Some(s.to_string());
        source = s.source();
    }
    if let Some(l) = last {
        out.push_str(": ");
        out.push_str(&l);
    }
    out
}

/// Read a body up to `cap` bytes; `Err(true)` if it is larger, `Err(false)`
/// if the connection broke.
pub(crate) async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<bytes::Bytes, bool> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(true);
    }
    // Most answers arrive as one chunk: hand it over without copying.
    let first = match resp.chunk().await {
        Ok(Some(chunk)) if chunk.len() > cap => return Err(true),
        Ok(Some(chunk)) => chunk,
        Ok(None) => return Ok(bytes::Bytes::new()),
        Err(_) => return Err(false),
    };
    let second = match resp.chunk().await {
        Ok(Some(chunk)) => chunk,
        Ok(None) => return Ok(first),
        Err(_) => return Err(false),
    };
    if first.len() + second.len() > cap {
        return Err(true);
    }
    let mut buf = bytes::BytesMut::with_capacity(first.len() + second.len());
    buf.extend_from_slice(&first);
    buf.extend_from_slice(&second);
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > cap {
                    return Err(true);
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf.freeze()),
            Err(_) => return Err(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_may_be_a_number_or_a_numeric_string() {
        let parse = |body: &str| serde_json::from_str::<TokenResponse>(body).unwrap().expires_in;
        assert_eq!(parse(r#"{"access_token": "t", "expires_in": 3599}"#), Some(3599.0));
        assert_eq!(parse(r#"{"access_token": "t", "expires_in": "3599"}"#), Some(3599.0));
        assert_eq!(parse(r#"{"access_token": "t", "expires_in": "soon"}"#), None);
        assert_eq!(parse(r#"{"access_token": "t", "expires_in": null}"#), None);
        assert_eq!(parse(r#"{"access_token": "t"}"#), None);
    }

    fn client() -> reqwest::Client {
        reqwest::Client::new()
    }

    #[test]
    fn static_credentials_are_sensitive_and_redacted() {
        let auth = ServiceAuth::Basic { username: "u".into(), password: Secret::new("pa55word") };
        let c = Credentials::new("s", Some(&auth), client()).unwrap();
        let Credentials::Static { value, .. } = &c else { panic!("static") };
        assert!(value.is_sensitive());
        assert!(!format!("{c:?}").contains("pa55word"));
        assert_eq!(c.redact("echo: u:pa55word and dTpwYTU1d29yZA=="), "echo: u:*** and ***");

        let auth = ServiceAuth::ApiKey { header: "bad header".into(), key: Secret::new("k") };
        let e = Credentials::new("s", Some(&auth), client()).unwrap_err();
        assert!(e.message().starts_with("services.s.auth.header"), "{e}");

        let auth = ServiceAuth::Bearer { token: Secret::new("line\nbreak") };
        let e = Credentials::new("s", Some(&auth), client()).unwrap_err();
        assert!(!e.message().contains("line"), "{e}");
    }
}
