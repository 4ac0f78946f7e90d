//! The CLI's client side: commands that talk to a running server
//! (`route`, `dead-letters`, `bench`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cli::Connection;

/// A failed client command: what to print, and the exit code.
#[derive(Debug)]
pub struct ClientError(pub String);

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

type Result<T> = std::result::Result<T, ClientError>;

/// A connection to a server, authenticated if credentials were given.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

async fn read_json(resp: reqwest::Response) -> Result<Value> {
    let status = resp.status();
    let text = resp.text().await.map_err(|e| ClientError(format!("reading the answer failed: {e}")))?;
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if status.is_success() { Ok(v) } else { Err(ClientError(format!("HTTP {status}: {v}"))) }
}

impl Client {
    /// Connect (and exchange the API key for a token).
    pub async fn connect(conn: &Connection, pool: usize) -> Result<Self> {
        let mut builder = reqwest::Client::builder();
        if let Some(path) = &conn.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| ClientError(format!("--ca-file {}: cannot read it ({e})", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| ClientError(format!("--ca-file {}: not PEM certificates ({e})", path.display())))?;
            if certs.is_empty() {
                return Err(ClientError(format!("--ca-file {}: holds no certificate", path.display())));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .danger_accept_invalid_certs(conn.insecure)
            .pool_max_idle_per_host(pool)
            .build()
            .map_err(|e| ClientError(format!("cannot build an HTTP client: {e}")))?;
        let base = conn.url.trim_end_matches('/').to_string();
        let mut client = Client { http, base, token: conn.token.clone() };
        if client.token.is_none()
            && let Some(key) = &conn.api_key
        {
            let v = client.post("/v1/auth/token", &json!({ "api_key": key })).await?;
            client.token = v.get("token").and_then(Value::as_str).map(str::to_string);
        }
        Ok(client)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        rb
    }

    /// POST JSON, JSON back.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let resp = self
            .request(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await
            .map_err(|e| ClientError(format!("cannot reach {}{path}: {e}", self.base)))?;
        read_json(resp).await
    }

    /// GET, JSON back.
    pub async fn get(&self, path: &str) -> Result<Value> {
        let resp = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .map_err(|e| ClientError(format!("cannot reach {}{path}: {e}", self.base)))?;
        read_json(resp).await
    }
}

/// A payload argument: JSON if it parses, else a JSON string.
pub fn parse_payload(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// Result of a `bench` run.
#[derive(Debug, serde::Serialize)]
pub struct BenchResult {
    /// What was measured.
    pub label: String,
    /// Requests sent.
    pub requests: usize,
    /// Non-2xx or failed requests.
    pub errors: usize,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Requests per second.
    pub throughput: f64,
    /// Latency percentiles, milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// Drive `requests` requests (POSTs, or GETs with `get`) with `concurrency` in flight; a progress bar on stderr.
pub async fn bench(
    client: Client,
    url_path: Option<String>,
    body: Value,
    get: bool,
    concurrency: usize,
    requests: usize,
    label: String,
) -> Result<BenchResult> {
    let client = Arc::new(client);
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let bar = indicatif::ProgressBar::new(requests as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .map_err(|e| ClientError(e.to_string()))?
            .progress_chars("=> "),
    );
    bar.set_prefix(label.clone());
    let body = Arc::new(serde_json::to_vec(&body).map_err(|e| ClientError(e.to_string()))?);
    let target = Arc::new(url_path.unwrap_or_else(|| format!("{}/v1/route", client.base)));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, next, errors, bar, body, target) =
            (client.clone(), next.clone(), errors.clone(), bar.clone(), body.clone(), target.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                let t = Instant::now();
                let mut rb = if get {
                    client.http.get(target.as_str())
                } else {
                    client
                        .http
                        .post(target.as_str())
                        .header("content-type", "application/json")
                        .body(body.as_ref().clone())
                };
                if let Some(tok) = &client.token {
                    rb = rb.bearer_auth(tok);
                }
                let ok = match rb.send().await {
                    Ok(r) => {
                        let ok = r.status().is_success();
                        let _ = r.bytes().await;
                        ok
                    }
                    Err(_) => false,
                };
                lat.push(t.elapsed());
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                bar.inc(1);
            }
            lat
        }));
    }
    let mut all = Vec::with_capacity(requests);
    for w in workers {
        all.extend(w.await.map_err(|e| ClientError(format!("a bench worker failed: {e}")))?);
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    all.sort();
    Ok(BenchResult {
        label,
        requests: all.len(),
        errors: errors.load(Ordering::Relaxed),
        seconds,
        throughput: all.len() as f64 / seconds.max(1e-9),
        p50_ms: percentile(&all, 0.50),
        p90_ms: percentile(&all, 0.90),
        p99_ms: percentile(&all, 0.99),
    })
}
