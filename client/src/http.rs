//! The HTTP half of a remote bridge: one pooled reqwest client, the
//! session's bridge token, and the calls of the server's HTTP API.
//!
//! The token is kept fresh without the caller noticing: it is exchanged
//! again shortly before it expires (checked on every call, one exchange at a
//! time), and a `401` for the session token (expired early, or the server
//! restarted with a new signing key) triggers one exchange and one retry. A rejected-at-authentication call never ran, so the retry
//! cannot deliver a message twice.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dreamos_bridge::{BridgeError, CallOptions, Credentials, ErrorCode, Message, Payload, Result, Token};
use parking_lot::RwLock;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::ClientOptions;
use crate::tls::Trust;
use crate::wire;

/// Extra time the HTTP request gets beyond the call's own deadline, so that
/// the server's `TIMEOUT` answer (not a local one) normally reaches the caller.
const DEADLINE_SLACK: Duration = Duration::from_secs(5);

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The session token and when to exchange it again.
#[derive(Clone)]
struct Held {
    token: Token,
    /// Unix seconds after which the token is exchanged before use.
    renew_at: u64,
}

impl Held {
    fn new(token: Token) -> Self {
        let now = now_secs();
        let lifetime = token.expires_at.saturating_sub(now);
        // Renew when a fifth of the lifetime (at most a minute) is left.
        let margin = (lifetime / 5).clamp(1, 60);
        Held { renew_at: token.expires_at.saturating_sub(margin), token }
    }
}

/// HTTP calls against one server.
pub(crate) struct Api {
    http: reqwest::Client,
    base: String,
    credentials: Option<Credentials>,
    held: RwLock<Option<Held>>,
    renewing: tokio::sync::Mutex<()>,
    request_timeout: Duration,
    /// One permit per request in flight (`ClientOptions::max_connections`).
    slots: tokio::sync::Semaphore,
    max_connections: usize,
}

impl Api {
    pub(crate) fn new(
        url: &str,
        credentials: Option<Credentials>,
        opts: &ClientOptions,
        trust: &Trust,
    ) -> Result<Self> {
        let base = url.trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&base)
            .map_err(|e| BridgeError::config("url", format!("{base:?} is not a URL ({e}): use http://HOST:PORT")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(BridgeError::config(
                "url",
                format!("{base:?}: the bridge server URL must start with http:// or https://"),
            ));
        }
        let mut builder = reqwest::Client::builder();
        for ca in trust.extra() {
            let cert = reqwest::Certificate::from_der(ca.as_ref())
                .map_err(|e| BridgeError::config("ca_file", format!("a certificate is not usable ({e})")))?;
            builder = builder.add_root_certificate(cert);
        }
        if opts.max_connections == 0 {
            return Err(BridgeError::config("max_connections", "must be at least 1"));
        }
        // Semaphore::new panics above its limit; a binding passes user input here.
        if opts.max_connections > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(BridgeError::config(
                "max_connections",
                format!("must be at most {}", tokio::sync::Semaphore::MAX_PERMITS),
            ));
        }
        let http = builder
            .connect_timeout(opts.connect_timeout)
            .pool_max_idle_per_host(opts.pool_max_idle_per_host)
            // Below the server's 10 s keep-alive idle limit, so a request never
            // goes out on a connection the server is closing.
            .pool_idle_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| BridgeError::internal(format!("cannot build the HTTP client: {e}")))?;
        Ok(Api {
            http,
            base,
            credentials,
            held: RwLock::new(None),
            renewing: tokio::sync::Mutex::new(()),
            request_timeout: opts.request_timeout,
            slots: tokio::sync::Semaphore::new(opts.max_connections),
            max_connections: opts.max_connections,
        })
    }

    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    pub(crate) fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// The session token, if the server runs with security.
    pub(crate) fn token(&self) -> Option<Token> {
        self.held.read().as_ref().map(|h| h.token.clone())
    }

    /// Exchange the session credentials for a fresh token (no-op without credentials).
    pub(crate) async fn login(&self) -> Result<()> {
        let Some(creds) = &self.credentials else { return Ok(()) };
        let token = self.exchange(creds).await?;
        *self.held.write() = Some(Held::new(token));
        Ok(())
    }

    /// `POST /v1/auth/token`.
    pub(crate) async fn exchange(&self, creds: &Credentials) -> Result<Token> {
        let v = self.send(Method::POST, "/v1/auth/token", None, Some(&wire::credentials_json(creds)), None).await?;
        let field = |k: &str| v.get(k).ok_or_else(|| bad_answer("/v1/auth/token", k));
        let roles = field("roles")?
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default();
        Ok(Token {
            value: field("token")?.as_str().ok_or_else(|| bad_answer("/v1/auth/token", "token"))?.to_string(),
            principal: field("principal")?.as_str().unwrap_or_default().to_string(),
            roles,
            expires_at: field("expires_at")?.as_u64().unwrap_or(0),
        })
    }

    /// The token to send: the caller's own, else the session's (renewed if due).
    async fn bearer(&self, opts: &CallOptions) -> Result<Option<String>> {
        if let Some(t) = &opts.token {
            return Ok(Some(t.clone()));
        }
        if self.credentials.is_none() {
            return Ok(None);
        }
        let due = |held: &Option<Held>| held.as_ref().is_none_or(|h| now_secs() >= h.renew_at);
        if due(&self.held.read()) {
            let _one_at_a_time = self.renewing.lock().await;
            if due(&self.held.read()) {
                self.login().await?;
            }
        }
        Ok(self.held.read().as_ref().map(|h| h.token.value.clone()))
    }

    /// Was the session token refused (worth one renewal and retry)? It
    /// expired, or the server restarted with a new signing key; the
    /// credentials decide whether a new one is granted.
    fn renewable(&self, e: &BridgeError, opts: &CallOptions, sent: Option<&str>) -> bool {
        e.code() == ErrorCode::Unauthenticated && opts.token.is_none() && self.credentials.is_some() && sent.is_some()
    }

    /// An authenticated message call; one renewal and retry if the session
    /// token expired meanwhile. The call's timeout covers the wait for a free
    /// connection too: the server gets what is left of it.
    async fn call(&self, path: &str, msg: &Message, opts: &CallOptions) -> Result<Value> {
        let deadline = opts.timeout.map(|t| Instant::now() + t);
        let token = self.bearer(opts).await?;
        match self.post_message(path, msg, token.as_deref(), deadline).await {
            Err(e) if self.renewable(&e, opts, token.as_deref()) => {
                {
                    let _one_at_a_time = self.renewing.lock().await;
                    let current = self.held.read().as_ref().map(|h| h.token.value.clone());
                    if current == token {
                        self.login().await?;
                    }
                }
                let token = self.bearer(opts).await?;
                self.post_message(path, msg, token.as_deref(), deadline).await
            }
            r => r,
        }
    }

    async fn post_message(
        &self,
        path: &str,
        msg: &Message,
        token: Option<&str>,
        deadline: Option<Instant>,
    ) -> Result<Value> {
        let _slot = self.slot(deadline).await?;
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let body = wire::message_body(msg, left);
        self.request(Method::POST, path, token, Some(&body), left.map(|t| t + DEADLINE_SLACK)).await
    }

    /// A free connection slot, waiting at most until `deadline` (default:
    /// the request timeout).
    async fn slot(&self, deadline: Option<Instant>) -> Result<tokio::sync::SemaphorePermit<'_>> {
        let deadline = deadline.unwrap_or_else(|| Instant::now() + self.request_timeout);
        match tokio::time::timeout_at(deadline.into(), self.slots.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed.
            Ok(Err(_)) => Err(BridgeError::internal("the connection slots of the remote client were closed")),
            Err(_) => Err(BridgeError::timeout(format!(
                "no free connection to {} within the deadline: all {} (max_connections) were busy; \
                 raise the timeout or ClientOptions::max_connections",
                self.base, self.max_connections
            ))),
        }
    }

    /// `POST /v1/route`.
    pub(crate) async fn route(&self, msg: &Message, opts: &CallOptions) -> Result<Payload> {
        let v = self.call("/v1/route", msg, opts).await?;
        match v {
            Value::Object(mut m) => {
                Ok(wire::payload_from_json(m.remove("payload").ok_or_else(|| bad_answer("/v1/route", "payload"))?))
            }
            _ => Err(bad_answer("/v1/route", "payload")),
        }
    }

    /// `POST /v1/publish`.
    pub(crate) async fn publish(&self, msg: &Message, opts: &CallOptions) -> Result<uuid::Uuid> {
        let v = self.call("/v1/publish", msg, opts).await?;
        v.get("id")
            .and_then(Value::as_str)
            .and_then(|s| uuid::Uuid::parse_str(s).ok())
            .ok_or_else(|| bad_answer("/v1/publish", "id"))
    }

    /// `GET /v1/admin/metrics.json` with the session token (needs the admin role).
    pub(crate) async fn metrics(&self) -> Result<Value> {
        let token = self.bearer(&CallOptions::default()).await?;
        self.send(Method::GET, "/v1/admin/metrics.json", token.as_deref(), None, None).await
    }

    /// `GET /health`: the report, also when the server says it is down (503).
    pub(crate) async fn health(&self) -> Result<Value> {
        self.send(Method::GET, "/health", None, None, None).await
    }

    /// One request in a connection slot; a JSON answer, or the server's
    /// error as the engine error.
    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        wait: Option<Duration>,
    ) -> Result<Value> {
        let _slot = self.slot(wait.map(|w| Instant::now() + w)).await?;
        self.request(method, path, token, body, wait).await
    }

    /// One request (the caller holds a slot).
    async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        wait: Option<Duration>,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let wait = wait.unwrap_or(self.request_timeout);
        let mut rb = self.http.request(method, &url).timeout(wait);
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let resp = rb.send().await.map_err(|e| wire::transport_error(&e, &url, Some(wait)))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| wire::transport_error(&e, &url, Some(wait)))?;
        if status == StatusCode::SERVICE_UNAVAILABLE
            && path == "/health"
            && let Ok(v) = serde_json::from_str::<Value>(&text)
            && v.get("status").is_some()
        {
            return Ok(v);
        }
        if !status.is_success() {
            return Err(wire::error_from_response(status.as_u16(), &text, &url));
        }
        serde_json::from_str(&text).map_err(|e| {
            BridgeError::internal(format!("{url} answered with invalid JSON ({e}): is this a dreamos-bridge server?"))
        })
    }
}

fn bad_answer(path: &str, field: &str) -> BridgeError {
    BridgeError::internal(format!(
        "the server's answer to {path} has no valid {field:?}: is the server a matching dreamos-bridge version?"
    ))
}
