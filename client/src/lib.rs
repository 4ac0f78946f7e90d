//! # dreamos-bridge-client
//!
//! The [`BridgeManager`](dreamos_bridge::BridgeManager) API backed by a
//! running `dreamos-bridge serve` instead of an engine in this process, so
//! that many agent processes share one bridge's rate limits, queues,
//! connection pools, circuit breakers and metrics.
//!
//! ```no_run
//! use dreamos_bridge::{Credentials, Message, handler_fn};
//! use dreamos_bridge_client::{ClientOptions, RemoteBridge};
//! use serde_json::json;
//!
//! # async fn demo() -> dreamos_bridge::Result<()> {
//! let creds = Credentials::ApiKey("dk_example_planner".into());
//! let bridge = RemoteBridge::connect("http://127.0.0.1:8000", &creds, ClientOptions::default()).await?;
//! // Serve a pattern for the other agents (over one WebSocket session) ...
//! bridge.register_route("tools.echo", handler_fn(|m: Message| async move { Ok(m.payload) })).await?;
//! // ... and call through the shared bridge (over pooled HTTP).
//! let reply = bridge.route(Message::new("tools.echo", json!({"hi": 1})), Default::default()).await?;
//! bridge.close();
//! # Ok(()) }
//! ```
//!
//! Calls (`route`, `publish`, `authenticate`, `metrics`, `health`) go over
//! the server's HTTP API (the `http` module: pooling, token renewal); the
//! handlers this process serves go over one WebSocket session (the
//! `session` module: heartbeats, reconnects). A remote call fails exactly
//! like a local one: the server's error body becomes the same
//! [`BridgeError`] code, with `retry_after` and the upstream `status` kept;
//! a server that cannot be reached is `SERVICE_UNAVAILABLE`, one that does
//! not answer in time `TIMEOUT`.
#![warn(missing_docs)]

mod http;
mod session;
mod tls;
pub mod wire;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dreamos_bridge::{BridgeError, CallOptions, Credentials, Handler, Message, Payload, Result, Token};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::http::Api;
use crate::session::Session;

/// Connection settings of a [`RemoteBridge`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How long to wait for a TCP/WebSocket connection and for the server's
    /// answer to the authentication (default 10 s).
    pub connect_timeout: Duration,
    /// HTTP wait for calls without their own timeout (default 60 s; calls
    /// with a timeout wait that long plus 5 s, so the server's `TIMEOUT` answer arrives).
    pub request_timeout: Duration,
    /// Idle pooled HTTP connections kept per server (default 32).
    pub pool_max_idle_per_host: usize,
    /// HTTP requests in flight to the server at once, so connections at once
    /// (default 32). Further calls wait for a free one within their own
    /// deadline. Keep the sum over all clients of one server below its
    /// `bridge.max_connections` (default 100), which refuses the excess.
    pub max_connections: usize,
    /// First wait before reconnecting the WebSocket session (default 100 ms);
    /// doubled after each failure up to `reconnect_max` (default 5 s).
    pub reconnect_min: Duration,
    /// Longest wait between reconnect attempts.
    pub reconnect_max: Duration,
    /// Upper bound on the heartbeat interval (the server proposes one, default 15 s).
    pub heartbeat_max: Duration,
    /// A PEM file of CA certificates to trust beyond the built-in (Mozilla)
    /// roots, for an `https://` server with a private or self-signed
    /// certificate (default none). Used by both the HTTP calls and the
    /// WebSocket session.
    pub ca_file: Option<PathBuf>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            pool_max_idle_per_host: 32,
            max_connections: 32,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            heartbeat_max: Duration::from_secs(15),
            ca_file: None,
        }
    }
}

/// A bridge running in a `dreamos-bridge serve` process. Cheap to clone:
/// clones share the HTTP pool, the token and the WebSocket session.
#[derive(Clone)]
pub struct RemoteBridge {
    inner: Arc<Inner>,
}

struct Inner {
    api: Arc<Api>,
    /// TLS for the WebSocket session to an `https://` server.
    tls: Option<tokio_rustls::TlsConnector>,
    opts: ClientOptions,
    session: Mutex<Option<Arc<Session>>>,
    cancel: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last clone is gone: stop serving.
        self.cancel.cancel();
    }
}

impl std::fmt::Debug for RemoteBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteBridge").field("url", &self.inner.api.base()).finish_non_exhaustive()
    }
}

impl RemoteBridge {
    /// Connect to the server at `url` (`http://HOST:PORT`) and exchange
    /// `credentials` for a bridge token (`POST /v1/auth/token`). Bad
    /// credentials are `UNAUTHENTICATED`; an unreachable server `SERVICE_UNAVAILABLE`.
    pub async fn connect(url: &str, credentials: &Credentials, options: ClientOptions) -> Result<RemoteBridge> {
        Self::open(url, Some(credentials.clone()), options).await
    }

    /// Connect to a server that runs without `security` (no credentials);
    /// the server's health is checked so a wrong URL fails here, not later.
    pub async fn connect_anonymous(url: &str, options: ClientOptions) -> Result<RemoteBridge> {
        Self::open(url, None, options).await
    }

    async fn open(url: &str, credentials: Option<Credentials>, opts: ClientOptions) -> Result<RemoteBridge> {
        let trust = tls::Trust::load(opts.ca_file.as_deref())?;
        let api = Arc::new(Api::new(url, credentials, &opts, &trust)?);
        let tls = if api.base().starts_with("https://") { Some(trust.connector()?) } else { None };
        // `connect_timeout` bounds the whole connect: a server that accepts
        // the connection and never answers must not hold the caller for the
        // (much longer) request timeout.
        let first_answer = async {
            match api.credentials() {
                Some(_) => api.login().await,
                None => api.health().await.map(drop),
            }
        };
        tokio::time::timeout(opts.connect_timeout, first_answer).await.map_err(|_| {
            BridgeError::timeout(format!(
                "the bridge server at {} did not answer within {:.1}s: check that it is up, or raise the connect timeout",
                api.base(),
                opts.connect_timeout.as_secs_f64()
            ))
        })??;
        Ok(RemoteBridge {
            inner: Arc::new(Inner { api, tls, opts, session: Mutex::new(None), cancel: CancellationToken::new() }),
        })
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        self.inner.api.base()
    }

    /// The session token (renewed before it expires), if the server runs with security.
    pub fn token(&self) -> Option<Token> {
        self.inner.api.token()
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.cancel.is_cancelled() {
            return Err(BridgeError::shutdown().context("this RemoteBridge was closed: connect again"));
        }
        Ok(())
    }

    /// Request/reply through the server (`POST /v1/route`). `opts.token`
    /// overrides the session token; `opts.timeout` is sent to the server.
    pub async fn route(&self, msg: Message, opts: CallOptions) -> Result<Payload> {
        self.check_open()?;
        self.inner.api.route(&msg, &opts).await
    }

    /// Fire-and-forget through the server (`POST /v1/publish`): the id once admitted.
    pub async fn publish(&self, msg: Message, opts: CallOptions) -> Result<uuid::Uuid> {
        self.check_open()?;
        self.inner.api.publish(&msg, &opts).await
    }

    /// Exchange other credentials for a token of the server (the session keeps its own).
    pub async fn authenticate(&self, credentials: &Credentials) -> Result<Token> {
        self.check_open()?;
        self.inner.api.exchange(credentials).await
    }

    /// Serve `pattern` with `handler` for every client of the server.
    /// Resolves once the server accepted the subscription (`FORBIDDEN` if
    /// the principal may not `handle` it, or an in-process route of the
    /// server already serves it). The pattern is served again after a
    /// reconnect.
    pub async fn register_route(&self, pattern: &str, handler: Arc<dyn Handler>) -> Result<()> {
        self.check_open()?;
        dreamos_bridge::routing::subject::validate_pattern(pattern)?;
        let session = {
            let mut slot = self.inner.session.lock();
            slot.get_or_insert_with(|| {
                Arc::new(Session::start(
                    self.inner.api.clone(),
                    self.inner.tls.clone(),
                    self.inner.opts.clone(),
                    self.inner.cancel.clone(),
                ))
            })
            .clone()
        };
        session.register(pattern, handler).await
    }

    /// Stop serving `pattern`; `true` if this client served it.
    pub fn unregister_route(&self, pattern: &str) -> bool {
        self.inner.session.lock().as_ref().is_some_and(|s| s.unregister(pattern))
    }

    /// The patterns this client serves.
    pub fn routes(&self) -> Vec<String> {
        self.inner.session.lock().as_ref().map(|s| s.patterns()).unwrap_or_default()
    }

    /// How many times the WebSocket session connected (0 before the first
    /// `register_route`, more than 1 after reconnects).
    pub fn session_connections(&self) -> u64 {
        self.inner.session.lock().as_ref().map(|s| s.connections()).unwrap_or(0)
    }

    /// The server bridge's metrics snapshot (`GET /v1/admin/metrics.json`;
    /// the session's principal needs the admin role for `admin.metrics`).
    pub async fn metrics(&self) -> Result<serde_json::Value> {
        self.check_open()?;
        self.inner.api.metrics().await
    }

    /// The server bridge's health (`GET /health`), also when it reports `down`.
    pub async fn health(&self) -> Result<serde_json::Value> {
        self.check_open()?;
        self.inner.api.health().await
    }

    /// Stop serving routes and refuse further calls with `SHUTDOWN` (every clone).
    /// Calls in flight finish.
    pub fn close(&self) {
        self.inner.cancel.cancel();
        if let Some(s) = self.inner.session.lock().as_ref() {
            s.close();
        }
    }

    /// Has [`close`](Self::close) been called?
    pub fn is_closed(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }
}
