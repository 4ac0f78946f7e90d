//! One external HTTP service: its pooled client, its routes' path
//! templates, and the delivery of one message (attempts, retries, breaker).
//!
//! Everything a crafted subject could influence is confined here: the path
//! is built only from percent-encoded subject tokens and the route's
//! literal template, and the resolved URL must keep the configured scheme,
//! host and port (and stay under the configured base path), so a message
//! can never make the bridge call another host. Caller headers are not
//! forwarded blindly: only `x-` headers pass, never one that carries the
//! service's credentials.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use url::Url;
use uuid::Uuid;

use super::breaker::CircuitBreaker;
use super::credentials::{Credentials, describe_reqwest, origin, read_capped};
use super::health::{HealthMonitor, ServiceHealth, Signal};
use super::retry::RetryManager;
use super::slots::{ConnectionSlots, NoSlot, Slot};
use crate::config::{BridgeConfig, RouteConfig, ServiceConfig};
use crate::error::{BridgeError, ErrorCode, Result};
use crate::message::{Message, Payload};
use crate::metrics::{HealthStatus, ServiceStats};
use crate::routing::subject::literal_prefix_len;

/// Default cap on response bodies.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 10 * 1024 * 1024;
/// How much of an error answer's body is kept in the error.
const ERROR_BODY_CAP: usize = 4 * 1024;
/// Redirect hops followed at most (when a service enables redirects).
const MAX_REDIRECTS: usize = 5;
/// Default deadline when a message somehow has none.
const FALLBACK_DEADLINE: Duration = Duration::from_secs(30);

/// Characters escaped in a path segment: all but unreserved ones.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Caller headers never forwarded even with an `x-` prefix: they would let
/// a caller pose as a proxy.
const DROPPED_X_HEADERS: &[&str] = &["x-forwarded-", "x-real-ip"];

// ---------------------------------------------------------------------------
// Path templates.

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(String),
    /// The subject tokens after the pattern's literal prefix, joined by `/`.
    Rest,
    /// One subject token by position (0-based).
    Token(usize),
}

/// A route's `path`, compiled: literal text, `{rest}` and `{N}` placeholders.
#[derive(Debug, Clone)]
pub struct PathTemplate {
    parts: Vec<Part>,
}

impl PathTemplate {
    /// Compile a template. `tokens`: the pattern's token count (for `{N}`).
    pub fn parse(template: &str, tokens: usize) -> std::result::Result<Self, String> {
        if !template.starts_with('/') {
            return Err(format!("{template:?} must start with `/`"));
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('{') {
                let Some(end) = after.find('}') else {
                    return Err(format!("{template:?} has an unclosed `{{`"));
                };
                let name = &after[..end];
                parts.push(match name {
                    "rest" => Part::Rest,
                    n if n.parse::<usize>().is_ok_and(|i| i < tokens) => Part::Token(n.parse().unwrap_or(0)),
                    n => {
                        return Err(format!(
                            "{template:?}: unknown placeholder {{{n}}}; use {{rest}} or a token position 0..{tokens}"
                        ));
                    }
                });
                rest = &after[end + 1..];
            } else {
                let end = rest.find('{').unwrap_or(rest.len());
                let lit = &rest[..end];
                if let Some(c) = lit.chars().find(|c| !(c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/".contains(*c)))
                {
                    return Err(format!(
                        "{template:?} has {c:?}; literal parts may use letters, digits, `/` and -._~!$&'()*+,;=:@"
                    ));
                }
                if lit.contains("//") || lit.split('/').any(|seg| seg == "." || seg == "..") {
                    return Err(format!("{template:?} has an empty, `.` or `..` path segment"));
                }
                parts.push(Part::Literal(lit.to_string()));
                rest = &rest[end..];
            }
        }
        Ok(PathTemplate { parts })
    }

    /// The default: `/{rest}`.
    pub fn default_rest() -> Self {
        PathTemplate { parts: vec![Part::Literal("/".into()), Part::Rest] }
    }

    /// The path for `subject`, every token percent-encoded.
    pub fn render(&self, subject: &str, prefix_len: usize) -> String {
        let tokens: Vec<&str> = subject.split('.').collect();
        let mut out = String::with_capacity(subject.len() + 16);
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Rest => {
                    for (i, t) in tokens.iter().skip(prefix_len).enumerate() {
                        if i > 0 {
                            out.push('/');
                        }
                        out.extend(utf8_percent_encode(t, SEGMENT));
                    }
                }
                Part::Token(i) => out.extend(utf8_percent_encode(tokens.get(*i).copied().unwrap_or(""), SEGMENT)),
            }
        }
        if out == "/" { String::new() } else { out }
    }
}

// ---------------------------------------------------------------------------
// Routes.

/// A route served by an HTTP service, compiled from a `routes` entry.
pub struct ServiceRoute {
    /// The route pattern.
    pub pattern: String,
    /// The service name.
    pub service: String,
    /// The HTTP method.
    pub method: Method,
    template: PathTemplate,
    prefix_len: usize,
    /// This compiled route's identity in the per-thread URL cache (never
    /// reused, so a cached URL can never answer for another route).
    id: u64,
    pub(crate) client: Arc<ServiceClient>,
}

/// Subjects whose URL each thread remembers; past that the memory starts
/// over (a bound, not an LRU: that many live subjects gain little).
const URL_CACHE: usize = 1024;

/// Route identities for the URL cache.
static NEXT_ROUTE_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// Subject → (route id, URL) for recent subjects: building a URL
    /// (render, percent-encode, check) costs more than the rest of the
    /// bridge's work per request, and agents call the same few subjects
    /// over and over. Per thread, because a shared map's lock is a cache
    /// line every worker writes on every request, even to read.
    static URLS: RefCell<HashMap<String, (u64, Url), foldhash::fast::RandomState>> = RefCell::default();
}

impl std::fmt::Debug for ServiceRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceRoute")
            .field("pattern", &self.pattern)
            .field("service", &self.service)
            .field("method", &self.method)
            .field("template", &self.template)
            .finish()
    }
}

impl ServiceRoute {
    /// Compile a `routes` entry for `client`.
    pub(crate) fn compile(route: &RouteConfig, index: Option<usize>, client: Arc<ServiceClient>) -> Result<Self> {
        let at = index.map(|i| format!("routes[{i}]")).unwrap_or_else(|| format!("route {:?}", route.pattern));
        let method = match route.method.as_deref().map(str::to_ascii_uppercase).as_deref() {
            None | Some("POST") => Method::POST,
            Some("GET") => Method::GET,
            Some("PUT") => Method::PUT,
            Some("PATCH") => Method::PATCH,
            Some("DELETE") => Method::DELETE,
            Some(m) => {
                return Err(BridgeError::config(
                    &format!("{at}.method"),
                    format!("expected GET, POST, PUT, PATCH or DELETE, got {m:?}"),
                ));
            }
        };
        let tokens = route.pattern.split('.').count();
        let template = match &route.path {
            None => PathTemplate::default_rest(),
            Some(p) => PathTemplate::parse(p, tokens).map_err(|e| BridgeError::config(&format!("{at}.path"), e))?,
        };
        Ok(ServiceRoute {
            pattern: route.pattern.clone(),
            service: client.name.clone(),
            method,
            template,
            prefix_len: literal_prefix_len(&route.pattern),
            id: NEXT_ROUTE_ID.fetch_add(1, Ordering::Relaxed),
            client,
        })
    }

    /// The URL a message to `subject` goes to; refuses anything that would
    /// leave the service's origin or base path.
    pub fn url_for(&self, subject: &str) -> Result<Url> {
        let cached = URLS.with_borrow(|urls| match urls.get(subject) {
            Some((id, url)) if *id == self.id => Some(url.clone()),
            _ => None,
        });
        if let Some(url) = cached {
            return Ok(url);
        }
        let url = self.client.url_for(&self.template.render(subject, self.prefix_len))?;
        URLS.with_borrow_mut(|urls| {
            if urls.len() >= URL_CACHE {
                urls.clear();
            }
            urls.insert(subject.to_string(), (self.id, url.clone()));
        });
        Ok(url)
    }
}

// ---------------------------------------------------------------------------
// The service.

/// One service: a pooled client and everything that guards it.
pub(crate) struct ServiceClient {
    pub name: String,
    base: Url,
    /// The pooled client. Not behind a lock: every delivery uses it, and a
    /// lock (or a reference count bumped per call) is a cache line both
    /// worker threads would write per request. After [`terminate`](Self::terminate)
    /// the closed `connections` slots refuse every call instead.
    client: reqwest::Client,
    connections: ConnectionSlots,
    max_connections: usize,
    credentials: Credentials,
    retry: RetryManager,
    breaker: CircuitBreaker,
    health: HealthMonitor,
    stats: Arc<ServiceStats>,
    max_response_bytes: usize,
    timeout: Option<Duration>,
    /// The `Host` header every request to this service carries, written by
    /// the bridge when redirects are off (the URL's host and port never
    /// change then). Left to hyper otherwise, which derives it per request
    /// from the URI with a `format!` (about 2.5k instructions), and which
    /// must see the new host after a redirect to another origin.
    host: Option<String>,
    pub health_check: Option<Url>,
    pub check_timeout: Duration,
    /// How often active checks run (`monitoring.health_check_interval`).
    check_interval: Duration,
}

impl std::fmt::Debug for ServiceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceClient")
            .field("name", &self.name)
            .field("origin", &origin(&self.base))
            .field("max_connections", &self.max_connections)
            .field("credentials", &self.credentials)
            .finish()
    }
}

/// Why one attempt failed.
#[derive(Debug)]
enum Failure {
    /// No connection could be opened.
    Connect(String),
    /// The attempt ran out of time.
    Timeout,
    /// The connection broke mid-exchange (reset, closed).
    Broken(String),
    /// An error status.
    Status { status: StatusCode, body: String, retry_after: Option<Duration> },
    /// The answer was larger than `max_response_bytes`.
    TooLarge(StatusCode),
    /// The answer claimed JSON but was not.
    BadJson(StatusCode),
    /// No connection slot freed up before the deadline.
    PoolTimeout,
    /// Getting credentials failed.
    Credentials(BridgeError, bool),
    /// The bridge is shutting down.
    Shutdown,
}

impl Failure {
    fn retryable(&self) -> bool {
        match self {
            Failure::Connect(_) | Failure::Timeout | Failure::Broken(_) => true,
            Failure::Status { status, .. } => *status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error(),
            Failure::Credentials(_, retryable) => *retryable,
            Failure::TooLarge(_) | Failure::BadJson(_) | Failure::PoolTimeout | Failure::Shutdown => false,
        }
    }

    /// Does it say the service is unwell (`Some(true)`), that it is fine
    /// (`Some(false)`), or nothing about it (`None`)?
    fn service_unwell(&self) -> Option<bool> {
        match self {
            Failure::Connect(_) | Failure::Timeout | Failure::Broken(_) => Some(true),
            Failure::Status { status, .. } => Some(status.is_server_error()),
            Failure::TooLarge(_) | Failure::BadJson(_) => Some(false),
            Failure::PoolTimeout | Failure::Credentials(..) | Failure::Shutdown => None,
        }
    }

    fn signal(&self) -> Option<Signal> {
        match self {
            Failure::Connect(_) | Failure::Timeout | Failure::Broken(_) => Some(Signal::Unreachable),
            Failure::Status { status, .. } if status.is_client_error() && *status != StatusCode::TOO_MANY_REQUESTS => {
                Some(Signal::Ok)
            }
            Failure::Status { .. } | Failure::TooLarge(_) | Failure::BadJson(_) => Some(Signal::Failed),
            Failure::PoolTimeout | Failure::Credentials(..) | Failure::Shutdown => None,
        }
    }
}

/// Counts a request in flight for as long as it lives (so a dropped future
/// never leaves the gauge up).
struct InFlight<'a> {
    svc: &'a ServiceClient,
    _slot: Slot<'a>,
}

impl<'a> InFlight<'a> {
    fn new(svc: &'a ServiceClient, slot: Slot<'a>) -> Self {
        svc.stats.connection_opened();
        InFlight { svc, _slot: slot }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.svc.stats.connection_closed();
    }
}

/// How an answer's body becomes a payload, from its content type.
enum Kind {
    Json,
    Text,
    Other,
}

/// The parts of a request that stay the same on every attempt.
struct Prepared {
    method: Method,
    /// The URL and caller headers, taken by the first attempt (no copy on
    /// the usual single-attempt path); a retry builds them again.
    first: Option<(Url, HeaderMap)>,
    body: Option<Bytes>,
    /// The W3C trace this request belongs to (continued from the message's
    /// `traceparent`, else new), and its flags.
    trace_id: u128,
    flags: u8,
}

impl ServiceClient {
    pub fn new(name: &str, svc: &ServiceConfig, cfg: &BridgeConfig, stats: Arc<ServiceStats>) -> Result<Self> {
        let path = format!("services.{name}");
        let base = Url::parse(&svc.url)
            .map_err(|e| BridgeError::config(&format!("{path}.url"), format!("not a URL ({e})")))?;
        let b = &cfg.bridge;
        let max_connections = svc.max_connections.unwrap_or(b.max_connections).max(1);
        let connection_timeout = b.connection_timeout.get();
        let has_auth = svc.auth.is_some();
        let redirect =
            if svc.follow_redirects { redirect_policy(&base, has_auth) } else { reqwest::redirect::Policy::none() };
        let mut builder = reqwest::Client::builder();
        if svc.follow_redirects && !is_internal_host(base.host()) {
            // Redirects may name other hosts: check what they resolve to.
            let own = base.host_str().unwrap_or_default().to_ascii_lowercase();
            builder = builder.dns_resolver(Arc::new(GuardedResolver { own_host: own }));
        }
        let client = builder
            .connect_timeout(connection_timeout)
            .pool_max_idle_per_host(max_connections)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .user_agent(concat!("dreamos-bridge/", env!("CARGO_PKG_VERSION")))
            .redirect(redirect)
            .build()
            .map_err(|e| {
                BridgeError::config(&path, format!("cannot build an HTTP client: {}", describe_reqwest(&e)))
            })?;
        // The token endpoint gets its own client: never redirected.
        let token_client = reqwest::Client::builder()
            .connect_timeout(connection_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                BridgeError::config(&path, format!("cannot build an HTTP client: {}", describe_reqwest(&e)))
            })?;
        let credentials = Credentials::new(name, svc.auth.as_ref(), token_client)?;
        let base_str = base.as_str().trim_end_matches('/').to_string();
        let health_check = match &svc.health_check {
            Some(p) => {
                let u = Url::parse(&format!("{base_str}{p}")).map_err(|e| {
                    BridgeError::config(&format!("{path}.health_check"), format!("not a valid path ({e})"))
                })?;
                Some(u)
            }
            None => None,
        };
        Ok(ServiceClient {
            name: name.to_string(),
            client,
            connections: ConnectionSlots::new(max_connections),
            max_connections,
            credentials,
            retry: RetryManager::new(
                svc.retry_attempts.unwrap_or(b.retry_attempts),
                svc.retry_delay.unwrap_or(b.retry_delay).get(),
                svc.retry_budget.unwrap_or(0.2),
            ),
            breaker: CircuitBreaker::new(
                name,
                svc.breaker_failures.unwrap_or(5),
                svc.breaker_failure_rate.unwrap_or(0.5),
                svc.breaker_cooldown.map(|c| c.get()).unwrap_or(Duration::from_secs(30)),
                stats.clone(),
            ),
            health: HealthMonitor::new(name, health_check.is_some(), stats.clone()),
            stats,
            max_response_bytes: svc.max_response_bytes.unwrap_or(DEFAULT_MAX_RESPONSE_BYTES),
            timeout: svc.timeout.map(|t| t.get()),
            host: if svc.follow_redirects { None } else { host_header(&base) },
            health_check,
            check_timeout: connection_timeout.clamp(Duration::from_secs(1), Duration::from_secs(10)),
            check_interval: cfg.monitoring.health_check_interval.get(),
            base,
        })
    }

    fn url_for(&self, path: &str) -> Result<Url> {
        // Only the path changes: scheme, host and port stay the base's by
        // construction (no full re-parse per request), and `set_path` keeps
        // any `?`/`#` in `path` inside the path, percent-encoded.
        let mut url = self.base.clone();
        if !path.is_empty() {
            let base_path = self.base.path().trim_end_matches('/');
            let mut full = String::with_capacity(base_path.len() + path.len());
            full.push_str(base_path);
            full.push_str(path);
            url.set_path(&full);
        }
        if !url.path().starts_with(self.base.path().trim_end_matches('/')) {
            return Err(BridgeError::invalid(format!(
                "the destination would leave service {:?}'s URL; refused",
                self.name
            )));
        }
        Ok(url)
    }

    pub fn health(&self) -> ServiceHealth {
        // Requests in flight are the connection slots held.
        let in_flight = self.connections.in_use();
        self.health.report(self.breaker.state(), in_flight)
    }

    /// Refuse new requests (calls waiting for a connection fail with
    /// `SHUTDOWN`). The pool's idle connections close when the bridge is
    /// dropped, or after its 90 s idle timeout.
    pub fn terminate(&self) {
        self.connections.close();
    }

    fn terminated(&self) -> bool {
        self.connections.is_closed()
    }

    /// One active health check.
    pub async fn check(&self) {
        let Some(url) = self.health_check.clone() else { return };
        if self.terminated() {
            return;
        }
        let client = &self.client;
        let deadline = Instant::now() + self.check_timeout;
        let mut headers = HeaderMap::new();
        let result = match self.credentials.apply(&mut headers, deadline).await {
            Err(e) => Err(e.error.message().to_string()),
            Ok(()) => {
                let sent = client.get(url).headers(headers).timeout(self.check_timeout).send().await;
                match sent {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(format!("health check answered {}", r.status())),
                    Err(e) => Err(format!("health check failed: {}", describe_reqwest(&e))),
                }
            }
        };
        match result {
            Ok(()) => self.health.checked(true, None),
            Err(e) => {
                tracing::debug!(service = %self.name, error = %e, "health check failed");
                self.health.checked(false, Some(self.credentials.redact(&e)));
            }
        }
        self.health();
    }

    /// Deliver `msg` on `route`: attempts with retries, breaker and budget,
    /// all inside the message's deadline.
    pub async fn deliver(&self, route: &ServiceRoute, msg: &Message) -> Result<Payload> {
        let deadline = msg.deadline.unwrap_or_else(|| Instant::now() + self.timeout.unwrap_or(FALLBACK_DEADLINE));
        if self.terminated() {
            return Err(BridgeError::shutdown());
        }
        let mut prepared = self.prepare(route, msg)?;
        if self.health.check_failed() {
            return Err(BridgeError::new(
                ErrorCode::ServiceUnavailable,
                format!(
                    "service {:?} failed its last health check; calls are refused until a check passes \
                     (every {:.1}s)",
                    self.name,
                    self.check_interval.as_secs_f64()
                ),
            )
            .with_retry_after(self.check_interval));
        }
        self.retry.on_request();
        let mut retry = 0u32;
        loop {
            let permit = match self.breaker.acquire() {
                Ok(p) => p,
                Err(wait) => {
                    return Err(BridgeError::new(
                        ErrorCode::ServiceUnavailable,
                        format!(
                            "service {:?} is failing and its circuit breaker is open; calls fail fast for {:.1}s more",
                            self.name,
                            wait.as_secs_f64()
                        ),
                    )
                    .with_retry_after(wait));
                }
            };
            let started = Instant::now();
            let (url, headers) = match prepared.first.take() {
                Some(parts) => parts,
                None => (self.url(route, msg)?, self.headers(route, msg)?),
            };
            let outcome = self.attempt(&prepared, url, headers, deadline).await;
            let latency = started.elapsed();
            let failure = match outcome {
                Ok(payload) => {
                    permit.success();
                    self.stats.request(true, latency);
                    self.health.observe(Signal::Ok, latency, None);
                    if self.health.last_reported() != HealthStatus::Up {
                        self.health();
                    }
                    return Ok(payload);
                }
                Err(f) => f,
            };
            match failure.service_unwell() {
                Some(true) => permit.failure(),
                Some(false) => permit.success(),
                None => drop(permit),
            }
            if !matches!(failure, Failure::PoolTimeout | Failure::Shutdown) {
                self.stats.request(false, latency);
            }
            if let Some(signal) = failure.signal() {
                let why = self.error(&failure, retry + 1).message().to_string();
                self.health.observe(signal, latency, Some(&why));
            }
            if let Failure::Status { status: StatusCode::UNAUTHORIZED, .. } = failure {
                self.credentials.rejected();
            }
            self.health();
            if !failure.retryable() || retry >= self.retry.max_retries() {
                return Err(self.error(&failure, retry + 1));
            }
            let retry_after = match &failure {
                Failure::Status { retry_after, .. } => *retry_after,
                _ => None,
            };
            let wait = self.retry.backoff(retry, retry_after);
            if wait >= deadline.saturating_duration_since(Instant::now()) {
                tracing::debug!(service = %self.name, ?wait, "no time left for another attempt");
                return Err(self.error(&failure, retry + 1));
            }
            if !self.retry.try_spend() {
                tracing::debug!(service = %self.name, "retry budget spent: not retrying");
                return Err(self.error(&failure, retry + 1).context("retry budget exhausted"));
            }
            self.stats.retry();
            tracing::debug!(service = %self.name, retry = retry + 1, ?wait, "retrying");
            Box::pin(tokio::time::sleep(wait)).await;
            retry += 1;
        }
    }

    fn prepare(&self, route: &ServiceRoute, msg: &Message) -> Result<Prepared> {
        let url = self.url(route, msg)?;
        let headers = self.headers(route, msg)?;
        let body = match (&route.method, &msg.payload) {
            (&Method::GET | &Method::DELETE, _) => None,
            (_, Payload::Json(v)) => {
                Some(Bytes::from(serde_json::to_vec(v).map_err(|e| BridgeError::internal(e.to_string()))?))
            }
            (_, Payload::Bytes(b)) => Some(b.clone()),
        };
        let parent = msg
            .header("traceparent")
            .and_then(parse_traceparent)
            .and_then(|(t, f)| Some((u128::from_str_radix(&t, 16).ok()?, u8::from_str_radix(&f, 16).ok()?)));
        let (trace_id, flags) = parent.unwrap_or_else(|| (random_nonzero(rand::random::<u128>), 0x01));
        Ok(Prepared { method: route.method.clone(), first: Some((url, headers)), body, trace_id, flags })
    }

    /// The URL for `msg` on `route` (GET and DELETE carry the payload as the query).
    fn url(&self, route: &ServiceRoute, msg: &Message) -> Result<Url> {
        let mut url = route.url_for(&msg.destination)?;
        if matches!(route.method, Method::GET | Method::DELETE) {
            set_query(&mut url, &msg.payload)?;
        }
        Ok(url)
    }

    /// The headers every attempt sends: the caller's `x-` headers, the
    /// idempotency key, `Accept`, `Host` (redirects off) and the body's
    /// content type.
    fn headers(&self, route: &ServiceRoute, msg: &Message) -> Result<HeaderMap> {
        // Room for the usual set (key, accept, host, content type, trace,
        // reqwest's user agent, and the credential if there is one) without
        // growing the map. Six entries (104 bytes each) stay under 1 KiB,
        // inside the allocator's per-thread cache: seven round up to twelve,
        // so that size is asked for only when a credential needs it.
        let cred_header = self.credentials.header_name();
        let room = 6 + usize::from(cred_header.is_some()) + msg.headers.len();
        let mut headers = HeaderMap::with_capacity(room);
        for (name, value) in &msg.headers {
            let lower = name.to_ascii_lowercase();
            if !lower.starts_with("x-") || DROPPED_X_HEADERS.iter().any(|d| lower.starts_with(d)) {
                continue;
            }
            let Ok(hname) = HeaderName::from_bytes(lower.as_bytes()) else { continue };
            if cred_header.is_some_and(|c| *c == hname) {
                continue;
            }
            let hvalue = HeaderValue::from_bytes(value.as_bytes())
                .map_err(|_| BridgeError::invalid(format!("header {name:?} has a value HTTP cannot carry")))?;
            headers.append(hname, hvalue);
        }
        let mut id = Uuid::encode_buffer();
        if let Ok(v) = HeaderValue::from_str(msg.id.as_hyphenated().encode_lower(&mut id)) {
            headers.insert(HeaderName::from_static("idempotency-key"), v);
        }
        headers.insert(reqwest::header::ACCEPT, HeaderValue::from_static("application/json, */*;q=0.5"));
        if let Some(host) = &self.host
            && let Ok(v) = HeaderValue::from_str(host)
        {
            headers.insert(reqwest::header::HOST, v);
        }
        match (&route.method, &msg.payload) {
            (&Method::GET | &Method::DELETE, _) => {}
            (_, Payload::Json(_)) => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            (_, Payload::Bytes(_)) => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            }
        }
        Ok(headers)
    }

    async fn attempt(
        &self,
        req: &Prepared,
        url: Url,
        mut headers: HeaderMap,
        deadline: Instant,
    ) -> std::result::Result<Payload, Failure> {
        // A free slot needs no timer; otherwise wait for one within the deadline.
        // (A borrowed slot: no reference count to bump on a shared line.)
        let slot = match self.connections.try_acquire() {
            Ok(s) => s,
            Err(NoSlot::Closed) => return Err(Failure::Shutdown),
            // Boxed: a cold path, kept out of every delivery's state.
            Err(NoSlot::Full) => {
                match Box::pin(tokio::time::timeout_at(deadline.into(), self.connections.acquire())).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(_)) => return Err(Failure::Shutdown),
                    Err(_) => return Err(Failure::PoolTimeout),
                }
            }
        };
        let _in_flight = InFlight::new(self, slot);
        // Static credentials and a cached token need no waiting; a token
        // fetch (rare, and a large future) is boxed.
        if !self.credentials.apply_now(&mut headers)
            && let Err(e) = Box::pin(self.credentials.apply(&mut headers, deadline)).await
        {
            return Err(Failure::Credentials(e.error, e.retryable));
        }
        // A new span id per attempt.
        let span_id = random_nonzero(rand::random::<u64>);
        if let Ok(tp) = HeaderValue::from_bytes(&traceparent(req.trace_id, span_id, req.flags)) {
            headers.insert(HeaderName::from_static("traceparent"), tp);
        }
        let exchange_deadline = match self.timeout {
            Some(t) => deadline.min(Instant::now() + t),
            None => deadline,
        };
        // A Request built in place: the header map moves in whole instead of
        // being merged header by header as RequestBuilder::headers does.
        tracing::debug!(service = %self.name, method = %req.method, path = %url.path(), "sending");
        let mut request = reqwest::Request::new(req.method.clone(), url);
        *request.headers_mut() = headers;
        if let Some(b) = &req.body {
            *request.body_mut() = Some(b.clone().into());
        }
        let exchange = async {
            let resp = self.client.execute(request).await.map_err(|e| {
                if e.is_connect() {
                    self.stats.connection_error();
                    Failure::Connect(describe_reqwest(&e))
                } else if e.is_timeout() {
                    Failure::Timeout
                } else {
                    Failure::Broken(describe_reqwest(&e))
                }
            })?;
            self.read_answer(resp).await
        };
        match tokio::time::timeout_at(exchange_deadline.into(), exchange).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Timeout),
        }
    }

    async fn read_answer(&self, resp: reqwest::Response) -> std::result::Result<Payload, Failure> {
        let status = resp.status();
        if !status.is_success() {
            let retry_after =
                resp.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(super::retry::parse_retry_after);
            let body = Box::pin(read_prefix(resp, ERROR_BODY_CAP)).await;
            return Err(Failure::Status { status, body, retry_after });
        }
        let kind = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim())
            .map(|v| {
                let ends_with =
                    |suffix: &str| v.len() >= suffix.len() && v[v.len() - suffix.len()..].eq_ignore_ascii_case(suffix);
                if v.eq_ignore_ascii_case("application/json") || ends_with("+json") {
                    Kind::Json
                } else if v.len() >= 5 && v[..5].eq_ignore_ascii_case("text/") {
                    Kind::Text
                } else {
                    Kind::Other
                }
            });
        let body = match read_capped(resp, self.max_response_bytes).await {
            Ok(b) => b,
            Err(true) => return Err(Failure::TooLarge(status)),
            Err(false) => return Err(Failure::Broken("the connection broke while reading the answer".into())),
        };
        if body.is_empty() && (status == StatusCode::NO_CONTENT || kind.is_none()) {
            return Ok(Payload::Json(serde_json::Value::Null));
        }
        match kind {
            Some(Kind::Json) => serde_json::from_slice(&body).map(Payload::Json).map_err(|_| Failure::BadJson(status)),
            Some(Kind::Text) => Ok(match String::from_utf8(body.to_vec()) {
                Ok(s) => Payload::Json(serde_json::Value::String(s)),
                Err(e) => Payload::Bytes(Bytes::from(e.into_bytes())),
            }),
            _ => Ok(Payload::Bytes(body)),
        }
    }

    /// The caller's error for a failed attempt (secrets scrubbed).
    fn error(&self, failure: &Failure, attempts: u32) -> BridgeError {
        let name = &self.name;
        let tries = if attempts == 1 { "1 attempt".to_string() } else { format!("{attempts} attempts") };
        let at = origin(&self.base);
        let e = match failure {
            Failure::Connect(why) => BridgeError::new(
                ErrorCode::ServiceUnavailable,
                format!("cannot connect to service {name:?} at {at} ({why}) after {tries}; check that it is running"),
            ),
            Failure::Timeout => BridgeError::timeout(format!(
                "service {name:?} did not answer in time ({tries}); raise the timeout or check the service"
            )),
            Failure::Broken(why) => BridgeError::new(
                ErrorCode::ServiceUnavailable,
                format!("the connection to service {name:?} at {at} broke ({why}) after {tries}"),
            ),
            Failure::Status { status, body, retry_after } => {
                let e = BridgeError::upstream(
                    status.as_u16(),
                    self.credentials.redact(body),
                    format!("service {name:?} answered {status} ({tries})"),
                );
                match retry_after {
                    Some(r) => e.with_retry_after(*r),
                    None => e,
                }
            }
            Failure::TooLarge(status) => BridgeError::upstream(
                status.as_u16(),
                "",
                format!(
                    "service {name:?} answered more than {} bytes; raise services.{name}.max_response_bytes if that is expected",
                    self.max_response_bytes
                ),
            ),
            Failure::BadJson(status) => BridgeError::upstream(
                status.as_u16(),
                "",
                format!("service {name:?} said its answer was JSON, but it is not valid JSON"),
            ),
            Failure::PoolTimeout => BridgeError::timeout(format!(
                "all {} connections to service {name:?} stayed busy until the deadline; raise services.{name}.max_connections or the timeout",
                self.max_connections
            )),
            Failure::Credentials(e, _) => e.clone(),
            Failure::Shutdown => BridgeError::shutdown(),
        };
        let redacted = self.credentials.redact(e.message());
        if redacted != e.message() {
            return BridgeError::new(e.code(), redacted);
        }
        e
    }
}

/// GET and DELETE carry no body: a JSON object of scalars becomes the
/// query string (percent-encoded by `url`), `null` nothing.
fn set_query(url: &mut Url, payload: &Payload) -> Result<()> {
    use serde_json::Value;
    let bad = || {
        BridgeError::invalid(
            "GET and DELETE routes take null or a JSON object of scalar values (sent as the query string)",
        )
    };
    match payload {
        Payload::Json(Value::Null) => Ok(()),
        Payload::Json(Value::Object(map)) if !map.is_empty() => {
            let mut q = url.query_pairs_mut();
            for (k, v) in map {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Null => String::new(),
                    _ => return Err(bad()),
                };
                q.append_pair(k, &v);
            }
            Ok(())
        }
        Payload::Json(Value::Object(_)) => Ok(()),
        _ => Err(bad()),
    }
}

/// Read at most `cap` bytes of a body as text (for error answers).
async fn read_prefix(mut resp: reqwest::Response, cap: usize) -> String {
    let mut buf = Vec::new();
    while buf.len() < cap {
        match resp.chunk().await {
            Ok(Some(c)) => buf.extend_from_slice(&c[..c.len().min(cap - buf.len())]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// A `traceparent` to continue: `00-<32 hex>-<16 hex>-<2 hex>` (version 00,
/// ids not all zero); returns the trace id and flags.
pub fn parse_traceparent(v: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = v.trim().split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    match parts.as_slice() {
        [ver, trace, span, flags]
            if hex(ver, 2)
                && *ver != "ff"
                && hex(trace, 32)
                && hex(span, 16)
                && hex(flags, 2)
                && trace.bytes().any(|b| b != b'0')
                && span.bytes().any(|b| b != b'0') =>
        {
            Some((trace.to_string(), flags.to_string()))
        }
        _ => None,
    }
}

/// The `Host` header for requests to `base`, as hyper writes it: the host,
/// with the port only when it is not the scheme's default.
fn host_header(base: &Url) -> Option<String> {
    let host = base.host_str()?;
    Some(match base.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    })
}

/// `00-<trace id>-<span id>-<flags>` in lower-case hex, without the
/// formatting machinery (this runs on every request).
fn traceparent(trace_id: u128, span_id: u64, flags: u8) -> [u8; 55] {
    fn hex(out: &mut [u8], mut v: u128) {
        for b in out.iter_mut().rev() {
            *b = b"0123456789abcdef"[(v & 0xf) as usize];
            v >>= 4;
        }
    }
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex(&mut out[3..35], trace_id);
    hex(&mut out[36..52], u128::from(span_id));
    hex(&mut out[53..55], u128::from(flags));
    out
}

fn random_nonzero<T: PartialEq + Default>(mut draw: impl FnMut() -> T) -> T {
    loop {
        let v = draw();
        if v != T::default() {
            return v;
        }
    }
}

/// Is this host private, loopback, link-local or otherwise internal?
pub fn is_internal_host(host: Option<url::Host<&str>>) -> bool {
    match host {
        Some(url::Host::Ipv4(ip)) => is_internal_ip(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => is_internal_ip(IpAddr::V6(ip)),
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost") || d.ends_with(".internal") || d.ends_with(".local")
        }
        None => true,
    }
}

fn is_internal_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (o[0] == 100 && (64..128).contains(&o[1]))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(|v4| is_internal_ip(IpAddr::V4(v4)))
        }
    }
}

/// Name resolution for services that follow redirects and are not
/// themselves internal: a host other than the service's own may not resolve
/// to an internal address (a redirect to `evil.example` pointing at
/// 169.254.169.254 is refused).
struct GuardedResolver {
    own_host: String,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_ascii_lowercase();
        let trusted = host == self.own_host;
        Box::pin(async move {
            let found: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = allowed_addrs(trusted, found);
            if allowed.is_empty() {
                return Err("refused: the redirect's host resolves only to internal addresses".into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The addresses a host may be reached at: all of them for the service's
/// own host, only public ones for any other.
fn allowed_addrs(trusted: bool, addrs: Vec<std::net::SocketAddr>) -> Vec<std::net::SocketAddr> {
    if trusted { addrs } else { addrs.into_iter().filter(|a| !is_internal_ip(a.ip())).collect() }
}

/// Redirects when a service enables them: at most [`MAX_REDIRECTS`] hops;
/// never to an internal address unless the service itself is internal;
/// never from https to http; and, when the service has credentials, never
/// off its origin (a key in a custom header would follow the redirect).
fn redirect_policy(base: &Url, has_credentials: bool) -> reqwest::redirect::Policy {
    let base_origin = base.origin();
    let base_internal = is_internal_host(base.host());
    let base_https = base.scheme() == "https";
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error("too many redirects");
        }
        let url = attempt.url();
        if url.origin() == base_origin {
            return attempt.follow();
        }
        let refused = has_credentials
            || (base_https && url.scheme() != "https")
            || (!base_internal && is_internal_host(url.host()));
        if refused {
            tracing::warn!("redirect to another origin refused: answering with the redirect status");
            attempt.stop()
        } else {
            attempt.follow()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_percent_encoded_tokens() {
        let t = PathTemplate::default_rest();
        assert_eq!(t.render("services.weather.current", 2), "/current");
        assert_eq!(t.render("services.weather.a.b-c_d", 2), "/a/b-c_d");
        assert_eq!(t.render("services.weather", 2), "");
        let t = PathTemplate::parse("/v2/{rest}/x", 3).unwrap();
        assert_eq!(t.render("tools.search.web", 2), "/v2/web/x");
        let t = PathTemplate::parse("/items/{1}", 3).unwrap();
        assert_eq!(t.render("shop.42.get", 1), "/items/42");
    }

    #[test]
    fn templates_refuse_what_could_escape() {
        for bad in
            ["v2/{rest}", "/a/../b", "//evil.com/{rest}", "/a?x={rest}", "/a#f", "/{host}", "/{9}", "/a b", "/%2e%2e"]
        {
            assert!(PathTemplate::parse(bad, 3).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn traceparent_formatting() {
        let tp = traceparent(0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7, 1);
        assert_eq!(&tp[..], b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let tp = traceparent(1, u64::MAX, 0);
        assert_eq!(&tp[..], b"00-00000000000000000000000000000001-ffffffffffffffff-00");
    }

    #[test]
    fn traceparent_parsing() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(parse_traceparent(tp), Some(("4bf92f3577b34da6a3ce929d0e0e4736".into(), "01".into())));
        assert_eq!(parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"), None);
        assert_eq!(parse_traceparent("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"), None);
        assert_eq!(parse_traceparent("garbage"), None);
    }

    #[test]
    fn internal_hosts() {
        for h in
            ["127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "[::1]", "[fe80::1]", "localhost", "100.64.0.1"]
        {
            let u = Url::parse(&format!("http://{h}/")).unwrap();
            assert!(is_internal_host(u.host()), "{h}");
        }
        for h in ["8.8.8.8", "example.com", "[2001:4860::8888]"] {
            let u = Url::parse(&format!("http://{h}/")).unwrap();
            assert!(!is_internal_host(u.host()), "{h}");
        }
    }

    #[test]
    fn other_hosts_may_not_resolve_to_internal_addresses() {
        let addrs: Vec<std::net::SocketAddr> = ["127.0.0.1:0", "10.0.0.1:0", "169.254.169.254:0", "93.184.216.34:0"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(allowed_addrs(true, addrs.clone()).len(), 4);
        assert_eq!(allowed_addrs(false, addrs), vec!["93.184.216.34:0".parse().unwrap()]);
    }

    #[test]
    fn query_from_payload() {
        let mut u = Url::parse("http://h/p").unwrap();
        set_query(&mut u, &Payload::Json(serde_json::json!({"city": "Paris & co", "n": 2}))).unwrap();
        assert_eq!(u.as_str(), "http://h/p?city=Paris+%26+co&n=2");
        assert!(set_query(&mut u, &Payload::Json(serde_json::json!([1]))).is_err());
        assert!(set_query(&mut u, &Payload::Bytes(Bytes::from_static(b"x"))).is_err());
    }
}
