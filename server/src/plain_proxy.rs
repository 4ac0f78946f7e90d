//! `dreamos-bridge plain-proxy`: a reverse proxy with no bridge logic, the
//! floor of the server benchmark.
//!
//! The bridge's HTTP hop is built from two libraries: hyper's HTTP/1 server
//! (as `serve` configures it) in front, and one pooled reqwest client per
//! service (as a service connection configures it) behind. This proxy is
//! those two and nothing else: no envelope, no routing, no credentials, no
//! accounting; the request body goes out as it came in and the answer comes
//! back the same way. `bench/server_vs_nginx.sh` runs it beside nginx and
//! the bridge, which splits the bridge's hop into what its libraries cost
//! (this proxy) and what the bridge adds on top of them.
//!
//! A benchmark tool, not a product proxy: no auth, no limits beyond a cap on
//! request bodies; loopback use only.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_TYPE;
use axum::http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use reqwest::Url;
use tokio::net::TcpListener;

/// Request bodies are capped at this size.
const BODY_CAP: usize = 4 << 20;

/// `dreamos-bridge plain-proxy`: proxy every request on `listen` to
/// `upstream` (its scheme, host, port and path prefix; the request's path and
/// query are appended) until `shutdown` completes.
pub async fn run(listen: SocketAddr, upstream: &str, shutdown: impl Future<Output = ()>) -> ExitCode {
    let upstream = match Url::parse(upstream) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => u,
        Ok(u) => {
            eprintln!("error: --upstream must be an http:// or https:// URL, not {:?}", u.scheme());
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("error: --upstream is not a URL ({e})");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    println!("plain proxy listening on http://{local}, forwarding to {upstream}");
    match serve(listener, upstream, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Proxy the connections `listener` accepts to `upstream` until `shutdown`
/// completes. Fails only if the HTTP client cannot be built.
pub async fn serve(listener: TcpListener, upstream: Url, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    // The settings of a service connection's client (core/src/connection/service.rs).
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(100)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let proxy = Arc::new(Proxy { client, upstream });
    // The server settings of `serve` (server/src/server.rs).
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10)).keep_alive(true);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    eprintln!("warning: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(proxy.forward(req).await) }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

struct Proxy {
    client: reqwest::Client,
    upstream: Url,
}

impl Proxy {
    async fn forward(&self, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let body = match axum::body::to_bytes(Body::new(body), BODY_CAP).await {
            Ok(b) => b,
            Err(e) => return answer(StatusCode::BAD_REQUEST, None, format!("cannot read the request body: {e}")),
        };
        // A parsed URL with the path replaced, as the bridge does (no full parse per request).
        let mut url = self.upstream.clone();
        let prefix = self.upstream.path().trim_end_matches('/');
        url.set_path(&format!("{prefix}{}", parts.uri.path()));
        url.set_query(parts.uri.query());
        let mut out = reqwest::Request::new(parts.method, url);
        if let Some(ct) = parts.headers.get(CONTENT_TYPE) {
            out.headers_mut().insert(CONTENT_TYPE, ct.clone());
        }
        *out.body_mut() = Some(body.into());
        let resp = match self.client.execute(out).await {
            Ok(r) => r,
            Err(e) => return answer(StatusCode::BAD_GATEWAY, None, format!("upstream request failed: {e}")),
        };
        let status = resp.status();
        let content_type = resp.headers().get(CONTENT_TYPE).cloned();
        match resp.bytes().await {
            Ok(b) => answer(status, content_type, b),
            Err(e) => answer(StatusCode::BAD_GATEWAY, None, format!("cannot read the upstream answer: {e}")),
        }
    }
}

fn answer(status: StatusCode, content_type: Option<axum::http::HeaderValue>, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Body::from(body.into()));
    *resp.status_mut() = status;
    if let Some(ct) = content_type {
        resp.headers_mut().insert(CONTENT_TYPE, ct);
    }
    resp
}
