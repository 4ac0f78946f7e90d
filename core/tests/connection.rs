//! Delivery to HTTP services, end to end: real axum servers on 127.0.0.1
//! (port 0) with injected faults, driven through `BridgeManager` exactly as
//! a user would. Assertions count server hits and check outcomes; none
//! depends on how fast the machine is.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use dreamos_bridge::metrics::{BreakerState, HealthStatus};
use dreamos_bridge::{BridgeError, BridgeManager, CallOptions, ErrorCode, Message, Payload};
use parking_lot::Mutex;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// A test service with fault injection.

#[derive(Debug, Clone)]
struct Hit {
    method: String,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

#[derive(Default)]
struct Srv {
    hits: Mutex<Vec<Hit>>,
    /// `/flaky`: answer 503 to this many more requests.
    fail_next: AtomicUsize,
    /// `/flaky` and `/health`: answer 503 while set.
    down: AtomicBool,
    /// `/limited`: the Retry-After of the first answer ("" to send none).
    retry_after: Mutex<String>,
    limited_once: AtomicBool,
    /// `/big`, `/bigchunked`: body size.
    big: AtomicUsize,
    /// `/token`: OAuth2 token endpoint.
    token_calls: AtomicUsize,
    token_expires_in: AtomicUsize,
    /// `/slowish`: requests in flight, and the most seen.
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// `/redirect`: where to send the client.
    redirect_to: Mutex<String>,
}

struct Server {
    addr: SocketAddr,
    srv: Arc<Srv>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start() -> Server {
        let srv = Arc::new(Srv { token_expires_in: AtomicUsize::new(3600), ..Default::default() });
        let app = axum::Router::new().fallback(handle).with_state(srv.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Server { addr, srv, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self, path_prefix: &str) -> Vec<Hit> {
        self.srv.hits.lock().iter().filter(|h| h.path.starts_with(path_prefix)).cloned().collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn json_response(status: StatusCode, v: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

fn echo(hit: &Hit) -> Response {
    let headers: serde_json::Map<String, Value> = hit
        .headers
        .iter()
        .filter(|(n, _)| n.as_str().starts_with("x-") || *n == "idempotency-key" || *n == "traceparent")
        .map(|(n, v)| (n.to_string(), Value::String(v.to_str().unwrap_or("").to_string())))
        .collect();
    let body: Value =
        serde_json::from_slice(&hit.body).unwrap_or_else(|_| Value::String(format!("{} raw bytes", hit.body.len())));
    json_response(
        StatusCode::OK,
        json!({
            "method": hit.method, "path": hit.path, "query": hit.query, "body": body, "headers": headers,
            "content_type": hit.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        }),
    )
}

async fn handle(State(s): State<Arc<Srv>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let hit = Hit {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers.clone(),
        body,
        at: Instant::now(),
    };
    s.hits.lock().push(hit.clone());
    let path = hit.path.as_str();
    let first = path.split('/').nth(1).unwrap_or("");
    match first {
        "health" => {
            if s.down.load(Ordering::SeqCst) {
                StatusCode::SERVICE_UNAVAILABLE.into_response()
            } else {
                "ok".into_response()
            }
        }
        "flaky" => {
            let failing = s.down.load(Ordering::SeqCst)
                || s.fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
            if failing { (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response() } else { echo(&hit) }
        }
        "status" => {
            let code: u16 = path.split('/').nth(2).and_then(|c| c.parse().ok()).unwrap_or(500);
            (StatusCode::from_u16(code).unwrap(), "nope").into_response()
        }
        "limited" => {
            if !s.limited_once.swap(true, Ordering::SeqCst) {
                let ra = s.retry_after.lock().clone();
                let mut r = (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response();
                if !ra.is_empty() {
                    r.headers_mut().insert(header::RETRY_AFTER, ra.parse().unwrap());
                }
                r
            } else {
                echo(&hit)
            }
        }
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            echo(&hit)
        }
        "slowish" => {
            let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            s.max_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            s.in_flight.fetch_sub(1, Ordering::SeqCst);
            echo(&hit)
        }
        "big" => {
            let n = s.big.load(Ordering::SeqCst);
            ([(header::CONTENT_TYPE, "application/octet-stream")], vec![b'x'; n]).into_response()
        }
        "bigchunked" => {
            let n = s.big.load(Ordering::SeqCst);
            let chunks: Vec<Result<Bytes, std::io::Error>> =
                (0..n.div_ceil(256)).map(|_| Ok(Bytes::from(vec![b'y'; 256]))).collect();
            let body = Body::from_stream(futures_util::stream::iter(chunks));
            ([(header::CONTENT_TYPE, "text/plain")], body).into_response()
        }
        "text" => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "hello").into_response(),
        "bin" => ([(header::CONTENT_TYPE, "application/octet-stream")], vec![0u8, 1, 2, 255]).into_response(),
        "badjson" => ([(header::CONTENT_TYPE, "application/json")], "{not json").into_response(),
        "token" => {
            let n = s.token_calls.fetch_add(1, Ordering::SeqCst) + 1;
            // client_secret_basic: dreamos:oauth-client-secret-999
            let expected = format!("Basic {}", base64_encode(b"dreamos:oauth-client-secret-999"));
            let ok_auth = hit.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(&expected);
            let form = String::from_utf8_lossy(&hit.body).to_string();
            if !ok_auth || !form.contains("grant_type=client_credentials") {
                return json_response(StatusCode::UNAUTHORIZED, json!({"error": "invalid_client"}));
            }
            // Slow enough that 50 concurrent callers all arrive while it runs.
            tokio::time::sleep(Duration::from_millis(50)).await;
            json_response(
                StatusCode::OK,
                json!({"access_token": format!("tok-{n}"), "token_type": "Bearer",
                       "expires_in": s.token_expires_in.load(Ordering::SeqCst), "scope": form}),
            )
        }
        "protected" => {
            let auth = hit.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
            if auth.starts_with("Bearer tok-") {
                json_response(StatusCode::OK, json!({"token": auth.trim_start_matches("Bearer ")}))
            } else {
                StatusCode::UNAUTHORIZED.into_response()
            }
        }
        "leak" => {
            // A careless service that echoes the credentials in an error.
            let auth = hit.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("bad request with {auth}")).into_response()
        }
        "redirect" => {
            let to = s.redirect_to.lock().clone();
            (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
        }
        _ => echo(&hit),
    }
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A port that accepts connections and drops them at once; counts accepts.
async fn resetting_port() -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let count = accepts.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else { return };
            count.fetch_add(1, Ordering::SeqCst);
            // RST instead of FIN: linger 0.
            let _ = sock.set_zero_linger();
            drop(sock);
        }
    });
    (addr, accepts, task)
}

/// A port nothing listens on.
fn refused_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

// ---------------------------------------------------------------------------
// Helpers.

/// A running bridge with one service `svc` at `url`, routes `svc.>` (default
/// path) plus `extra_routes`, and `service_extra` lines under the service.
async fn bridge(url: &str, service_extra: &str, extra_routes: &str) -> BridgeManager {
    let yaml = format!(
        "bridge:\n  retry_attempts: 3\n  retry_delay: 10ms\n  request_timeout: 30s\n\
         monitoring:\n  health_check_interval: 50ms\n\
         services:\n  svc:\n    url: {url}\n{service_extra}\
         routes:\n  - pattern: svc.>\n    service: svc\n{extra_routes}"
    );
    let b = BridgeManager::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    b.initialize().await.unwrap();
    b
}

async fn call(b: &BridgeManager, dest: &str, payload: impl Into<Payload>) -> Result<Payload, BridgeError> {
    b.route(Message::new(dest, payload), CallOptions::default()).await
}

async fn call_within(b: &BridgeManager, dest: &str, timeout: Duration) -> Result<Payload, BridgeError> {
    b.route(Message::new(dest, json!({})), CallOptions::default().timeout(timeout)).await
}

fn reply(p: Payload) -> Value {
    match p {
        Payload::Json(v) => v,
        Payload::Bytes(b) => panic!("expected JSON, got {} bytes", b.len()),
    }
}

/// Wait (up to 10 s) for a condition that background work will make true.
async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

async fn svc_health(b: &BridgeManager) -> dreamos_bridge::connection::ServiceHealth {
    b.health().await.services["svc"].clone()
}

// ---------------------------------------------------------------------------
// Mapping subjects, payloads and answers.

#[tokio::test]
async fn subjects_map_to_paths_and_payloads_to_bodies() {
    let s = Server::start().await;
    let b = bridge(
        &s.url(),
        "",
        "  - pattern: tools.search.>\n    service: svc\n    path: /v2/{rest}\n\
         \x20 - pattern: shop.*.get\n    service: svc\n    method: GET\n    path: /items/{1}\n",
    )
    .await;

    let r = reply(call(&b, "svc.weather.current", json!({"city": "Paris"})).await.unwrap());
    assert_eq!(r["method"], "POST");
    assert_eq!(r["path"], "/weather/current");
    assert_eq!(r["body"], json!({"city": "Paris"}));
    assert_eq!(r["content_type"], "application/json");

    let r = reply(call(&b, "tools.search.web", json!(null)).await.unwrap());
    assert_eq!(r["path"], "/v2/web");

    let r = reply(call(&b, "shop.42.get", json!({"q": "a b&c", "n": 3})).await.unwrap());
    assert_eq!(r["method"], "GET");
    assert_eq!(r["path"], "/items/42");
    assert_eq!(r["query"], "q=a+b%26c&n=3");

    let r = reply(call(&b, "svc.upload", vec![1u8, 2, 3]).await.unwrap());
    assert_eq!(r["content_type"], "application/octet-stream");
    assert_eq!(r["body"], "3 raw bytes");

    // Answers: text becomes a JSON string, other types bytes.
    assert_eq!(call(&b, "svc.text", json!({})).await.unwrap(), Payload::Json(json!("hello")));
    assert_eq!(call(&b, "svc.bin", json!({})).await.unwrap(), Payload::Bytes(Bytes::from_static(&[0, 1, 2, 255])));
    let e = call(&b, "svc.badjson", json!({})).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::UpstreamError);
    assert!(e.message().contains("not valid JSON"), "{e}");

    // A GET payload that is not a flat object is refused before sending.
    let before = s.hits("/items").len();
    let e = call(&b, "shop.1.get", json!([1, 2])).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidMessage);
    assert_eq!(s.hits("/items").len(), before);
    b.shutdown().await;
}

#[tokio::test]
async fn headers_idempotency_key_and_traceparent() {
    let s = Server::start().await;
    let b = bridge(&s.url(), "    auth: {type: api_key, header: X-API-Key, key: configured-key}\n", "").await;

    let msg = Message::new("svc.echo", json!({}))
        .with_header("x-request-tag", "blue")
        .with_header("X-API-Key", "caller-supplied")
        .with_header("authorization", "Bearer caller")
        .with_header("cookie", "session=1")
        .with_header("host", "evil.example")
        .with_header("x-forwarded-for", "1.2.3.4")
        .with_header("other", "dropped");
    let id = msg.id;
    reply(b.route(msg, CallOptions::default()).await.unwrap());
    let hit = s.hits("/echo").pop().unwrap();
    assert_eq!(hit.headers["x-request-tag"], "blue");
    assert_eq!(hit.headers["x-api-key"], "configured-key", "the caller cannot override credentials");
    assert_eq!(hit.headers.get_all("x-api-key").iter().count(), 1);
    assert!(hit.headers.get("authorization").is_none());
    assert!(hit.headers.get("cookie").is_none());
    assert!(hit.headers.get("x-forwarded-for").is_none());
    assert!(hit.headers.get("other").is_none());
    assert_eq!(hit.headers["host"], s.addr.to_string());
    assert_eq!(hit.headers.get_all("host").iter().count(), 1);
    assert_eq!(hit.headers["idempotency-key"], id.to_string());
    let tp = hit.headers["traceparent"].to_str().unwrap().to_string();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!((parts.len(), parts[0], parts[1].len(), parts[2].len()), (4, "00", 32, 16), "{tp}");

    // A message carrying a traceparent continues that trace (new span id).
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let msg = Message::new("svc.echo", json!({})).with_header("traceparent", parent);
    b.route(msg, CallOptions::default()).await.unwrap();
    let tp = s.hits("/echo").pop().unwrap().headers["traceparent"].to_str().unwrap().to_string();
    assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{tp}");
    assert!(!tp.contains("00f067aa0ba902b7"), "{tp}");

    // Two messages: two trace ids.
    b.route(Message::new("svc.echo", json!({})), CallOptions::default()).await.unwrap();
    b.route(Message::new("svc.echo", json!({})), CallOptions::default()).await.unwrap();
    let hits = s.hits("/echo");
    let trace = |h: &Hit| h.headers["traceparent"].to_str().unwrap().split('-').nth(1).unwrap().to_string();
    assert_ne!(trace(&hits[hits.len() - 1]), trace(&hits[hits.len() - 2]));
    b.shutdown().await;
}

// ---------------------------------------------------------------------------
// Retries.

#[tokio::test]
async fn failures_are_retried_with_a_stable_idempotency_key() {
    let s = Server::start().await;
    let b = bridge(&s.url(), "", "").await;
    s.srv.fail_next.store(2, Ordering::SeqCst);
    let msg = Message::new("svc.flaky", json!({"n": 1}));
    let id = msg.id.to_string();
    let r = reply(b.route(msg, CallOptions::default()).await.unwrap());
    assert_eq!(r["body"], json!({"n": 1}));
    let hits = s.hits("/flaky");
    assert_eq!(hits.len(), 3, "two failures, then success");
    assert!(hits.iter().all(|h| h.headers["idempotency-key"] == id.as_str()));
    // One trace, a new span per attempt.
    let tps: Vec<String> = hits.iter().map(|h| h.headers["traceparent"].to_str().unwrap().to_string()).collect();
    let trace: Vec<&str> = tps.iter().map(|t| t.split('-').nth(1).unwrap()).collect();
    assert!(trace.iter().all(|t| *t == trace[0]));
    let spans: std::collections::HashSet<&str> = tps.iter().map(|t| t.split('-').nth(2).unwrap()).collect();
    assert_eq!(spans.len(), 3);
    // Per-service metrics count the attempts and the retries.
    let text = b.metrics_text();
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("dreamos_bridge_{name}{{service=\"svc\"}} ")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    assert_eq!(line("service_retries_total"), Some(2.0), "{text}");
    assert_eq!(line("service_requests_total"), Some(3.0), "{text}");
    assert_eq!(line("service_failures_total"), Some(2.0), "{text}");
    assert_eq!(line("service_active_connections"), Some(0.0), "{text}");
    b.shutdown().await;
}

#[tokio::test]
async fn retries_are_bounded_and_jittered() {
    let s = Server::start().await;
    let b = bridge(
        &s.url(),
        "    breaker_failures: 1000\n    breaker_failure_rate: 1\n    retry_delay: 20ms\n    retry_budget: 1\n",
        "",
    )
    .await;
    s.srv.fail_next.store(usize::MAX / 2, Ordering::SeqCst);
    let mut gaps = Vec::new();
    for i in 0..5 {
        let e = call(&b, &format!("svc.flaky.r{i}"), json!({})).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::UpstreamError);
        assert_eq!(e.status(), Some(503));
        assert_eq!(e.body(), Some("try later"));
        assert!(e.message().contains("4 attempts"), "{e}");
        let hits = s.hits(&format!("/flaky/r{i}"));
        assert_eq!(hits.len(), 4, "1 attempt + retry_attempts (3)");
        gaps.extend(hits.windows(2).map(|w| w[1].at - w[0].at));
    }
    // Full jitter: the waits are not all the same.
    let first = gaps[0];
    assert!(gaps.iter().any(|g| g.abs_diff(first) > Duration::from_millis(1)), "{gaps:?}");
    b.shutdown().await;
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let s = Server::start().await;
    let b = bridge(&s.url(), "    breaker_failures: 1000\n    breaker_failure_rate: 1\n", "").await;
    for code in [400u16, 401, 403, 404, 409, 422] {
        let e = call(&b, &format!("svc.status.{code}"), json!({})).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::UpstreamError);
        assert_eq!(e.status(), Some(code));
        assert_eq!(e.body(), Some("nope"));
        assert_eq!(s.hits(&format!("/status/{code}")).len(), 1, "{code} must not be retried");
    }
    for code in [500u16, 502, 503] {
        call(&b, &format!("svc.status.{code}"), json!({})).await.unwrap_err();
        assert_eq!(s.hits(&format!("/status/{code}")).len(), 4, "{code} is retried");
    }
    b.shutdown().await;
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let s = Server::start().await;
    let b = bridge(&s.url(), "", "").await;
    *s.srv.retry_after.lock() = "1".into();
    reply(call(&b, "svc.limited", json!({})).await.unwrap());
    let hits = s.hits("/limited");
    assert_eq!(hits.len(), 2);
    // A lower bound only: the retry waited at least the second it was told to.
    assert!(hits[1].at - hits[0].at >= Duration::from_millis(950), "{:?}", hits[1].at - hits[0].at);

    // An HTTP date works too.
    let s = Server::start().await;
    let b = bridge(&s.url(), "", "").await;
    let at = std::time::SystemTime::now() + Duration::from_secs(1);
    *s.srv.retry_after.lock() = httpdate_fmt(at);
    reply(call(&b, "svc.limited", json!({})).await.unwrap());
    assert_eq!(s.hits("/limited").len(), 2);

    // A Retry-After beyond the deadline: no retry, the 429 comes back with it.
    let s = Server::start().await;
    let b = bridge(&s.url(), "", "").await;
    *s.srv.retry_after.lock() = "30".into();
    let e = call_within(&b, "svc.limited", Duration::from_secs(2)).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::UpstreamError);
    assert_eq!(e.status(), Some(429));
    assert_eq!(e.retry_after(), Some(Duration::from_secs(30)));
    assert_eq!(s.hits("/limited").len(), 1);
    b.shutdown().await;

    // An absurd Retry-After (u64::MAX seconds) is capped: no overflow, the
    // 429 comes back with a day's Retry-After...
    let s = Server::start().await;
    let b = bridge(&s.url(), "", "").await;
    *s.srv.retry_after.lock() = u64::MAX.to_string();
    let e = call_within(&b, "svc.limited", Duration::from_secs(2)).await.unwrap_err();
    assert_eq!((e.code(), e.status()), (ErrorCode::UpstreamError, Some(429)));
    assert_eq!(e.retry_after(), Some(Duration::from_secs(24 * 60 * 60)));
    b.shutdown().await;
    // ... and a publish that meets it is dead-lettered, not lost.
    let s = Server::start().await;
    let b = bridge(&s.url(), "", "").await;
    *s.srv.retry_after.lock() = u64::MAX.to_string();
    let id = b.publish(Message::new("svc.limited", json!({})), CallOptions::default()).await.unwrap();
    eventually("the publish is dead-lettered", async || b.dead_letters().iter().any(|d| d.id == id)).await;
    b.shutdown().await;
}

fn httpdate_fmt(t: std::time::SystemTime) -> String {
    // RFC 7231 IMF-fixdate, computed by hand to keep the test free of extra deps.
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 1;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"][(mo - 1) as usize];
    format!("{weekday}, {d:02} {month} {y} {h:02}:{m:02}:{s:02} GMT")
}

#[tokio::test]
async fn retry_budget_bounds_retries_in_an_outage() {
    let s = Server::start().await;
    let b = bridge(&s.url(), "    breaker_failures: 100000\n    breaker_failure_rate: 1.0\n    retry_delay: 1ms\n", "")
        .await;
    s.srv.down.store(true, Ordering::SeqCst);
    let requests = 100;
    for _ in 0..requests {
        call(&b, "svc.flaky", json!({})).await.unwrap_err();
    }
    let hits = s.hits("/flaky").len();
    // Without a budget: 400 hits. With it: the requests, a floor of 10 and 20%.
    assert!(hits <= requests + 10 + requests / 5, "{hits} hits for {requests} requests");
    assert!(hits > requests, "some retries still happen: {hits}");
    b.shutdown().await;
}

// ---------------------------------------------------------------------------
// Faults.

#[tokio::test]
async fn slow_answers_time_out_and_free_their_connection() {
    let s = Server::start().await;
    let b = bridge(&s.url(), "", "").await;
    let e = call_within(&b, "svc.slow", Duration::from_millis(300)).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Timeout, "{e}");
    eventually("the connection gauge returns to 0", async || svc_health(&b).await.active_connections == 0).await;
    // The service's own timeout bounds each exchange too.
    let s2 = Server::start().await;
    let b2 = bridge(&s2.url(), "    timeout: 200ms\n    retry_attempts: 1\n", "").await;
    let e = call_within(&b2, "svc.slow", Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Timeout, "{e}");
    assert!(e.message().contains("2 attempts"), "timeouts are retried: {e}");
    assert_eq!(s2.hits("/slow").len(), 2);
    b.shutdown().await;
    b2.shutdown().await;
}

#[tokio::test]
async fn connection_resets_are_retried_then_unavailable() {
    let (addr, accepts, task) = resetting_port().await;
    let b = bridge(&format!("http://{addr}"), "    retry_attempts: 2\n", "").await;
    let e = call(&b, "svc.anything", json!({})).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::ServiceUnavailable, "{e}");
    assert_eq!(accepts.load(Ordering::SeqCst), 3, "1 attempt + 2 retries");
    task.abort();
    b.shutdown().await;
}

#[tokio::test]
async fn a_refused_port_is_service_unavailable() {
    let addr = refused_port();
    let b = bridge(&format!("http://{addr}"), "", "").await;
    let e = call(&b, "svc.anything", json!({})).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::ServiceUnavailable, "{e}");
    assert!(e.message().contains("cannot connect"), "{e}");
    assert!(e.message().contains("4 attempts"), "{e}");
    b.shutdown().await;
}

#[tokio::test]
async fn oversized_answers_are_refused() {
    let s = Server::start().await;
    let b = bridge(&s.url(), "    max_response_bytes: 1024\n", "").await;
    s.srv.big.store(1024, Ordering::SeqCst);
    match call(&b, "svc.big", json!({})).await.unwrap() {
        Payload::Bytes(bytes) => assert_eq!(bytes.len(), 1024),
        other => panic!("{other:?}"),
    }
    s.srv.big.store(4096, Ordering::SeqCst);
    for path in ["svc.big", "svc.bigchunked"] {
        let e = call(&b, path, json!({})).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::UpstreamError, "{e}");
        assert!(e.message().contains("max_response_bytes"), "{e}");
    }
    // Not retried: a bigger answer will not get smaller.
    assert_eq!(s.hits("/bigchunked").len(), 1);
    b.shutdown().await;
}

#[tokio::test]
async fn max_connections_is_enforced_per_service() {
    let s = Server::start().await;
    let b = bridge(&s.url(), "    max_connections: 2\n", "").await;
    let calls = (0..20).map(|i| {
        let b = b.clone();
        tokio::spawn(async move { call(&b, &format!("svc.slowish.c{i}"), json!({})).await })
    });
    for c in calls {
        c.await.unwrap().unwrap();
    }
    let max = s.srv.max_in_flight.load(Ordering::SeqCst);
    assert!((1..=2).contains(&max), "at most 2 requests in flight, saw {max}");

    // Waiting for a connection respects the deadline.
    let s = Server::start().await;
    let b = bridge(&s.url(), "    max_connections: 1\n    retry_attempts: 0\n", "").await;
    let hog = {
        let b = b.clone();
        tokio::spawn(async move { call_within(&b, "svc.slow", Duration::from_secs(10)).await })
    };
    eventually("the slow call holds the connection", async || svc_health(&b).await.active_connections == 1).await;
    let e = call_within(&b, "svc.quick", Duration::from_millis(200)).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Timeout, "{e}");
    assert!(s.hits("/quick").is_empty());
    hog.abort();
    b.shutdown().await;
}

#[tokio::test]
async fn redirects_are_not_followed_unless_enabled() {
    let s = Server::start().await;
    *s.srv.redirect_to.lock() = "/moved".into();
    let b = bridge(&s.url(), "", "").await;
    let e = call(&b, "svc.redirect", json!({})).await.unwrap_err();
    assert_eq!((e.code(), e.status()), (ErrorCode::UpstreamError, Some(302)));
    assert!(s.hits("/moved").is_empty());

    let b = bridge(&s.url(), "    follow_redirects: true\n", "").await;
    // reqwest turns a 302 POST into a GET, as browsers do.
    assert_eq!(reply(call(&b, "svc.redirect", json!({})).await.unwrap())["path"], "/moved");

    // With credentials, a redirect to another origin is refused: the key
    // would follow it.
    let other = Server::start().await;
    *s.srv.redirect_to.lock() = format!("{}/elsewhere", other.url());
    let b =
        bridge(&s.url(), "    follow_redirects: true\n    auth: {type: bearer, token: redirect-secret}\n", "").await;
    let e = call(&b, "svc.redirect", json!({})).await.unwrap_err();
    assert_eq!(e.status(), Some(302), "{e}");
    assert!(other.hits("/").is_empty());
    b.shutdown().await;

    // Without credentials it is followed, and the other origin is sent its
    // own Host, not the first one's.
    let b = bridge(
        &s.url(),
        "    follow_redirects: true
",
        "",
    )
    .await;
    call(&b, "svc.redirect", json!({})).await.unwrap();
    let hit = other.hits("/elsewhere").pop().expect("the redirect was followed");
    assert_eq!(hit.headers["host"], other.addr.to_string());
    assert_eq!(hit.headers.get_all("host").iter().count(), 1);
    b.shutdown().await;
}

#[tokio::test]
async fn templates_that_could_leave_the_service_are_config_errors() {
    for path in ["//evil.example/{rest}", "/a/../../{rest}", "/x?u={rest}", "/{host}"] {
        let yaml = format!(
            "services:\n  svc:\n    url: http://127.0.0.1:1/api\nroutes:\n  - pattern: svc.>\n    service: svc\n    path: \"{path}\"\n"
        );
        let e = BridgeManager::from_yaml(&yaml).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Config, "{path}");
        assert!(e.message().starts_with("routes[0].path"), "{e}");
    }
    // Subjects only hold [A-Za-z0-9_-] tokens; anything else never reaches the service.
    let s = Server::start().await;
    let b = bridge(&format!("{}/api", s.url()), "", "").await;
    for dest in ["svc.@evil", "svc.a/b", "svc.%2e%2e", "svc..x"] {
        let e = call(&b, dest, json!({})).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidMessage, "{dest}");
    }
    assert_eq!(reply(call(&b, "svc.a.b", json!({})).await.unwrap())["path"], "/api/a/b");
    assert_eq!(s.hits("/").len(), 1);
    b.shutdown().await;
}

// ---------------------------------------------------------------------------
// Breaker and health.

#[tokio::test]
async fn the_breaker_opens_fails_fast_and_recovers() {
    let s = Server::start().await;
    let b = bridge(&s.url(), "    retry_attempts: 0\n    breaker_failures: 3\n    breaker_cooldown: 3s\n", "").await;
    s.srv.down.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        assert_eq!(call(&b, "svc.flaky", json!({})).await.unwrap_err().code(), ErrorCode::UpstreamError);
    }
    let h = svc_health(&b).await;
    assert_eq!((h.breaker, h.status), (BreakerState::Open, HealthStatus::Down));
    for _ in 0..5 {
        let e = call(&b, "svc.flaky", json!({})).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::ServiceUnavailable);
        assert!(e.message().contains("circuit breaker is open"), "{e}");
        assert!(e.retry_after().is_some());
    }
    assert_eq!(s.hits("/flaky").len(), 3, "an open breaker sends nothing");

    // The service comes back; after the cooldown one probe closes the breaker.
    s.srv.down.store(false, Ordering::SeqCst);
    eventually("the breaker lets a probe through and closes", async || call(&b, "svc.flaky", json!({})).await.is_ok())
        .await;
    assert_eq!(svc_health(&b).await.breaker, BreakerState::Closed);
    for _ in 0..3 {
        call(&b, "svc.flaky", json!({})).await.unwrap();
    }
    b.shutdown().await;
}

#[tokio::test]
async fn health_goes_up_down_up() {
    let s = Server::start().await;
    let b = bridge(&s.url(), "    health_check: /health\n", "").await;
    eventually("a first health check", async || svc_health(&b).await.last_check.is_some()).await;
    assert_eq!(svc_health(&b).await.status, HealthStatus::Up);
    assert_eq!(b.health().await.status, HealthStatus::Up);

    s.srv.down.store(true, Ordering::SeqCst);
    eventually("service down", async || svc_health(&b).await.status == HealthStatus::Down).await;
    let report = b.health().await;
    assert_eq!(report.status, HealthStatus::Degraded, "the bridge runs; a service is down");
    assert!(svc_health(&b).await.last_error.unwrap().contains("503"));

    s.srv.down.store(false, Ordering::SeqCst);
    eventually("service up again", async || svc_health(&b).await.status == HealthStatus::Up).await;
    let checks = s.hits("/health").len();
    assert!(checks >= 3, "{checks}");

    // Shutdown stops the checks.
    b.shutdown().await;
    let after = s.hits("/health").len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // At most one check that was already on the wire when shutdown began.
    assert!(s.hits("/health").len() <= after + 1);
}

#[tokio::test]
async fn a_service_that_fails_its_health_check_is_refused_before_the_breaker_opens() {
    let s = Server::start().await;
    let b = bridge(&s.url(), "    health_check: /health\n", "").await;
    call(&b, "svc.flaky", json!({})).await.unwrap();

    s.srv.down.store(true, Ordering::SeqCst);
    eventually("service down", async || svc_health(&b).await.status == HealthStatus::Down).await;
    let sent = s.hits("/flaky").len();
    let err = call(&b, "svc.flaky", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ServiceUnavailable, "{err}");
    assert!(err.message().contains("health check"), "{err}");
    assert!(err.retry_after().is_some());
    assert_eq!(s.hits("/flaky").len(), sent, "a refused call never reaches the service");
    assert_eq!(svc_health(&b).await.breaker, BreakerState::Closed, "refused calls are not breaker failures");

    s.srv.down.store(false, Ordering::SeqCst);
    eventually("service up again", async || svc_health(&b).await.status == HealthStatus::Up).await;
    call(&b, "svc.flaky", json!({})).await.unwrap();
    b.shutdown().await;
}

#[tokio::test]
async fn passive_failures_mark_a_service_without_checks_down() {
    let addr = refused_port();
    let b = bridge(&format!("http://{addr}"), "    retry_attempts: 0\n    breaker_failures: 100\n", "").await;
    assert_eq!(svc_health(&b).await.status, HealthStatus::Up);
    for _ in 0..3 {
        call(&b, "svc.x", json!({})).await.unwrap_err();
    }
    let h = svc_health(&b).await;
    assert_eq!(h.status, HealthStatus::Down);
    assert_eq!(h.error_rate, 1.0);
    b.shutdown().await;
}

// ---------------------------------------------------------------------------
// Credentials.

fn oauth_yaml(token_url: &str) -> String {
    format!(
        "    auth:\n      type: oauth2_client_credentials\n      token_url: {token_url}/token\n      client_id: dreamos\n      client_secret: oauth-client-secret-999\n      scopes: [read, write]\n"
    )
}

#[tokio::test]
async fn oauth2_one_token_fetch_for_many_concurrent_calls() {
    let s = Server::start().await;
    let b = bridge(&s.url(), &oauth_yaml(&s.url()), "").await;
    let calls: Vec<_> = (0..50)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move { call(&b, &format!("svc.protected.c{i}"), json!({})).await })
        })
        .collect();
    for c in calls {
        assert_eq!(reply(c.await.unwrap().unwrap())["token"], "tok-1");
    }
    assert_eq!(s.srv.token_calls.load(Ordering::SeqCst), 1);
    let token_hit = s.hits("/token").pop().unwrap();
    assert!(String::from_utf8_lossy(&token_hit.body).contains("scope=read+write"));
    b.shutdown().await;
}

#[tokio::test]
async fn oauth2_token_is_refreshed_at_expiry() {
    let s = Server::start().await;
    s.srv.token_expires_in.store(1, Ordering::SeqCst);
    let b = bridge(&s.url(), &oauth_yaml(&s.url()), "").await;
    assert_eq!(reply(call(&b, "svc.protected.a", json!({})).await.unwrap())["token"], "tok-1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(reply(call(&b, "svc.protected.b", json!({})).await.unwrap())["token"], "tok-2");
    assert_eq!(s.srv.token_calls.load(Ordering::SeqCst), 2);
    b.shutdown().await;
}

#[tokio::test]
async fn oauth2_bad_client_secret_is_a_clear_error() {
    let s = Server::start().await;
    let yaml = oauth_yaml(&s.url()).replace("oauth-client-secret-999", "wrong-secret-123");
    let b = bridge(&s.url(), &yaml, "").await;
    let e = call(&b, "svc.protected.a", json!({})).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::ServiceUnavailable);
    assert!(e.message().contains("client_secret"), "{e}");
    assert!(!e.message().contains("wrong-secret-123"), "{e}");
    assert_eq!(s.srv.token_calls.load(Ordering::SeqCst), 1, "a 401 from the token endpoint is not retried");
    assert!(s.hits("/protected").is_empty());
    b.shutdown().await;
}

/// A `MakeWriter` that keeps everything logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn secrets_never_reach_errors_logs_or_metrics() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let s = Server::start().await;
    let secrets = ["bearer-secret-AAA", "apikey-secret-BBB", "basic-secret-CCC", "oauth-client-secret-999", "tok-1"];
    let yaml = format!(
        "bridge:\n  retry_attempts: 1\n  retry_delay: 10ms\n\
         services:\n\
         \x20 bearer:\n    url: {u}\n    auth: {{type: bearer, token: {}}}\n\
         \x20 apikey:\n    url: {u}\n    auth: {{type: api_key, header: X-Key, key: {}}}\n\
         \x20 basic:\n    url: {u}\n    auth: {{type: basic, username: me, password: {}}}\n\
         \x20 oauth:\n    url: {u}\n{}\
         \x20 down:\n    url: http://{refused}\n    auth: {{type: bearer, token: {}}}\n\
         routes:\n\
         \x20 - {{pattern: bearer.>, service: bearer}}\n\
         \x20 - {{pattern: apikey.>, service: apikey}}\n\
         \x20 - {{pattern: basic.>, service: basic}}\n\
         \x20 - {{pattern: oauth.>, service: oauth}}\n\
         \x20 - {{pattern: down.>, service: down}}\n",
        secrets[0],
        secrets[1],
        secrets[2],
        oauth_yaml(&s.url()),
        secrets[0],
        u = s.url(),
        refused = refused_port(),
    );
    let b = BridgeManager::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    b.initialize().await.unwrap();
    let mut errors = Vec::new();
    for svc in ["bearer", "apikey", "basic", "oauth", "down"] {
        // The careless service echoes the credentials in a 500 body.
        let e = call(&b, &format!("{svc}.leak"), json!({})).await.unwrap_err();
        errors.push(serde_json::to_string(&e).unwrap());
        errors.push(format!("{e} {e:?}"));
        call(&b, &format!("{svc}.status.404"), json!({})).await.ok();
    }
    // The services did receive the credentials.
    let leak_auth: Vec<String> = s
        .hits("/leak")
        .iter()
        .filter_map(|h| h.headers.get("authorization").map(|v| v.to_str().unwrap().to_string()))
        .collect();
    assert!(leak_auth.iter().any(|a| a == "Bearer bearer-secret-AAA"));
    assert!(leak_auth.iter().any(|a| a == "Bearer tok-1"));
    assert!(s.hits("/leak").iter().any(|h| h.headers.get("x-key").is_some_and(|v| v == "apikey-secret-BBB")));

    let health = serde_json::to_string(&b.health().await).unwrap();
    let metrics = format!("{} {}", serde_json::to_string(&b.metrics()).unwrap(), b.metrics_text());
    let config = format!("{:?}", b.config());
    b.shutdown().await;
    assert!(metrics.contains("service=\"apikey\""), "the metrics cover the services: {metrics}");
    let logs = String::from_utf8(logs.0.lock().clone()).unwrap();
    assert!(logs.contains("retrying"), "the capture works: {logs}");
    let basic_b64 = base64_encode(format!("me:{}", secrets[2]).as_bytes());
    for secret in secrets.iter().copied().chain([basic_b64.as_str()]) {
        for (what, text) in [
            ("errors", errors.join("\n")),
            ("logs", logs.clone()),
            ("health", health.clone()),
            ("metrics", metrics.clone()),
            ("config", config.clone()),
        ] {
            assert!(!text.contains(secret), "{secret:?} leaked into {what}: {text}");
        }
    }
    assert!(errors.iter().any(|e| e.contains("bad request with Bearer ***")), "{errors:?}");
}

// ---------------------------------------------------------------------------
// Publish, dead letters, replay; many at once.

#[tokio::test]
async fn a_failed_publish_is_dead_lettered_and_replayed_when_the_service_is_back() {
    let s = Server::start().await;
    let b = bridge(&s.url(), "    retry_attempts: 1\n", "").await;
    s.srv.down.store(true, Ordering::SeqCst);
    let id = b.publish(Message::new("svc.flaky.job", json!({"job": 7})), CallOptions::default()).await.unwrap();
    eventually("the publish is dead-lettered", async || !b.dead_letters().is_empty()).await;
    let letters = b.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].id, id);
    assert_eq!(letters[0].error.code(), ErrorCode::UpstreamError);
    assert_eq!(s.hits("/flaky/job").len(), 2, "the publish had its retries");

    // Still down: the replay fails and the letter stays.
    assert!(b.replay(id).await.is_err());
    assert_eq!(b.dead_letters().len(), 1);

    s.srv.down.store(false, Ordering::SeqCst);
    b.replay(id).await.unwrap();
    assert!(b.dead_letters().is_empty());
    let hits = s.hits("/flaky/job");
    assert!(hits.iter().all(|h| h.headers["idempotency-key"] == id.to_string().as_str()));
    assert_eq!(serde_json::from_slice::<Value>(&hits.last().unwrap().body).unwrap(), json!({"job": 7}));
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_routes_are_each_answered_once() {
    let s = Server::start().await;
    let b = bridge(&s.url(), "", "").await;
    let calls: Vec<_> = (0..1000)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move {
                let r = call(&b, &format!("svc.many.m{i}"), json!({"i": i})).await.unwrap();
                (i, reply(r))
            })
        })
        .collect();
    for c in calls {
        let (i, r) = c.await.unwrap();
        assert_eq!(r["body"], json!({"i": i}));
        assert_eq!(r["path"], format!("/many/m{i}"));
    }
    let mut per_path: HashMap<String, usize> = HashMap::new();
    for h in s.hits("/many") {
        *per_path.entry(h.path).or_default() += 1;
    }
    assert_eq!(per_path.len(), 1000);
    assert!(per_path.values().all(|n| *n == 1), "each request reached the service exactly once");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_calls_in_flight_with_shutdown() {
    let s = Server::start().await;
    let b = bridge(&s.url(), "", "").await;
    // `/slow` answers after 3 s: without the shutdown these would succeed
    // (shutdown waits up to 5 s for work it has cancelled).
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let b = b.clone();
            tokio::spawn(async move { call_within(&b, "svc.slow", Duration::from_secs(30)).await })
        })
        .collect();
    eventually("every call reached the service", async || s.hits("/slow").len() == 8).await;
    b.shutdown_with_grace(Duration::from_millis(50)).await;
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap_err().code(), ErrorCode::Shutdown);
    }
    assert_eq!(svc_health(&b).await.active_connections, 0, "every connection slot was released");
}

#[tokio::test]
async fn shutdown_refuses_new_deliveries() {
    let s = Server::start().await;
    let b = bridge(&s.url(), "", "").await;
    call(&b, "svc.one", json!({})).await.unwrap();
    b.shutdown().await;
    assert_eq!(call(&b, "svc.two", json!({})).await.unwrap_err().code(), ErrorCode::Shutdown);
    assert!(s.hits("/two").is_empty());
}
