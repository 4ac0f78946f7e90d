//! The listening side: accept loop, connection limit, TLS, slow-client
//! timeouts (header and body reads here and in `api`, stalled writes in
//! `write_timeout`), config reload and the graceful drain.
//!
//! axum's own `serve` has no header-read timeout, connection limit or TLS,
//! so connections are served here with hyper directly.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use dreamos_bridge::{BridgeConfig, BridgeError, BridgeManager, ErrorCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::dispatch::ApiService;
use crate::hub::ServiceHub;
use crate::state::{AppState, ServerOptions};
use crate::write_timeout::WriteTimeout;

/// A bridge served over HTTP and WebSocket.
pub struct Server {
    state: Arc<AppState>,
}

/// Refuse a non-loopback address when security is off: without it anyone
/// who can reach the port could use every route.
pub fn check_exposure(addr: SocketAddr, config: &BridgeConfig) -> dreamos_bridge::Result<()> {
    if !addr.ip().is_loopback() && !config.security_enabled() {
        return Err(BridgeError::config(
            "bridge.host",
            format!(
                "refusing to listen on {addr} without security: it is not a loopback address, so anyone who can reach \
                 it could use every route; configure `security` (api_keys and roles) or listen on 127.0.0.1"
            ),
        ));
    }
    Ok(())
}

impl Server {
    /// Serve `bridge` with explicit settings.
    pub fn new(bridge: BridgeManager, options: ServerOptions) -> Self {
        Server {
            state: Arc::new(AppState { hub: ServiceHub::new(bridge), options, closing: CancellationToken::new() }),
        }
    }

    /// Serve `bridge` with the settings of its own config (TLS files are read now).
    pub fn from_bridge(bridge: BridgeManager) -> dreamos_bridge::Result<Self> {
        let options = ServerOptions::from_config(bridge.config())?;
        Ok(Self::new(bridge, options))
    }

    /// The bridge in force.
    pub fn bridge(&self) -> BridgeManager {
        self.state.bridge()
    }

    /// The shared state (hub, options).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// The HTTP router.
    pub fn router(&self) -> axum::Router {
        crate::api::router(self.state.clone())
    }

    /// Replace the bridge with `new` (a reloaded config): `new` is
    /// initialized first, connected services' routes and the dead letters
    /// move over, and the old bridge drains in the background (dead letters
    /// its drain produces move over when it is done).
    pub async fn replace_bridge(&self, new: BridgeManager) -> dreamos_bridge::Result<()> {
        new.initialize().await?;
        let old = self.state.hub.replace_bridge(new.clone());
        let moved = new.take_dead_letters_from(&old);
        if moved > 0 {
            tracing::info!(dead_letters = moved, "dead letters carried over to the reloaded configuration");
        }
        tokio::spawn(async move {
            old.shutdown().await;
            let late = new.take_dead_letters_from(&old);
            if late > 0 {
                tracing::warn!(
                    dead_letters = late,
                    "messages failed while the replaced configuration drained; they are in the dead-letter store"
                );
            }
        });
        Ok(())
    }

    /// Accept connections on `listener` until `shutdown` completes, then
    /// drain: stop accepting, let the bridge finish in-flight work within
    /// its grace period (the rest is answered `SHUTDOWN`), close connected
    /// services, and wait for responses to be written.
    pub async fn run(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> dreamos_bridge::Result<()> {
        let addr = listener
            .local_addr()
            .map_err(|e| BridgeError::config("bridge.host", format!("listener has no address: {e}")))?;
        let bridge = self.state.bridge();
        check_exposure(addr, bridge.config())?;
        bridge.initialize().await?;
        let opts = &self.state.options;
        let app = ApiService::new(self.state.clone(), self.router());
        let graceful = GracefulShutdown::new();
        let slots = Arc::new(Semaphore::new(opts.max_connections));
        // Refusing politely (a 503 after the request head) holds the socket
        // for up to a few seconds; a flood over the limit must not turn into
        // that many descriptors held, so past this many refusals in progress
        // a connection is closed at once.
        let refusals = Arc::new(Semaphore::new(REFUSALS_IN_PROGRESS));
        let mut refused_since_warning = 0u64;
        let mut last_warning: Option<std::time::Instant> = None;
        // hyper's `pipeline_flush` stays off: with it, answers to pipelined
        // requests are buffered without bound, where without it the write
        // buffer's limit stops a client that reads nothing from queueing more
        // (and `write_timeout` then closes it).
        let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
        builder.http1().timer(TokioTimer::new()).header_read_timeout(opts.header_read_timeout).keep_alive(true);
        let builder = Arc::new(builder);
        let tls = opts.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        tracing::info!(%addr, tls = tls.is_some(), "listening");

        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                // One warning a second at most: a flood must not flood the log too.
                refused_since_warning += 1;
                if last_warning.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1)) {
                    tracing::warn!(%peer, max = opts.max_connections, refused = refused_since_warning,
                        "connection limit reached (bridge.max_connections); refusing");
                    refused_since_warning = 0;
                    last_warning = Some(std::time::Instant::now());
                }
                match refusals.clone().try_acquire_owned() {
                    Ok(refusing) => {
                        let tls = tls.is_some();
                        tokio::spawn(async move {
                            let _refusing = refusing;
                            refuse(stream, tls).await;
                        });
                    }
                    Err(_) => drop(stream),
                }
                continue;
            };
            let _ = stream.set_nodelay(true);
            // Shared with a WebSocket session, which outlives the HTTP connection.
            let permit = Arc::new(permit);
            let service = app.clone().with_slot(permit.clone());
            let builder = builder.clone();
            let watcher = graceful.watcher();
            let tls = tls.clone();
            let handshake_timeout = opts.header_read_timeout;
            let write_timeout = opts.write_timeout;
            tokio::spawn(async move {
                let _permit = permit;
                let result = match tls {
                    None => {
                        let stream = WriteTimeout::new(stream, write_timeout);
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                        watcher.watch(conn).await
                    }
                    Some(acceptor) => {
                        let tls_stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                        let tls_stream = WriteTimeout::new(tls_stream, write_timeout);
                        let conn =
                            builder.serve_connection_with_upgrades(TokioIo::new(tls_stream), service).into_owned();
                        watcher.watch(conn).await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
        drop(listener);
        tracing::info!("shutting down: no new connections; draining in-flight messages");
        let connections_done = graceful.shutdown();
        self.state.bridge().shutdown().await;
        self.state.closing.cancel();
        if tokio::time::timeout(opts.close_grace, connections_done).await.is_err() {
            tracing::warn!("some connections did not finish in time; closing them");
        }
        tracing::info!("server stopped");
        Ok(())
    }
}

/// Over the connection limit: a plain-HTTP client gets a 503 it can read; a
/// TLS one is closed (writing HTTP before a handshake would be garbage to it).
///
/// The 503 goes out after the request head has arrived (or after a short
/// wait for it): an HTTP client that sees an answer before it has sent its
/// request takes it for a broken connection ("unexpected message"), not for
/// the server's refusal.
async fn refuse(mut stream: TcpStream, tls: bool) {
    if !tls {
        let _ = tokio::time::timeout(REFUSE_READ_WAIT, read_request_head(&mut stream)).await;
        let body = serde_json::to_string(&BridgeError::new(
            ErrorCode::ServiceUnavailable,
            "the server is at its connection limit (bridge.max_connections); retry shortly",
        ))
        .unwrap_or_default();
        let resp = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), stream.write_all(resp.as_bytes())).await;
    }
    let _ = stream.shutdown().await;
    if !tls {
        // Closing with unread bytes (a request body) would send a reset that
        // can destroy the 503 before the client reads it: discard what is
        // left until the client closes, briefly.
        let _ = tokio::time::timeout(REFUSE_READ_WAIT, async {
            let mut buf = [0u8; 4096];
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

/// Refused connections answered with a 503 at the same time; more are closed
/// without an answer.
const REFUSALS_IN_PROGRESS: usize = 64;

/// How long a refused connection may take to send its request head.
const REFUSE_READ_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Read until the end of a request head (a blank line), the end of the
/// stream, or 16 KiB, whichever comes first. The bytes are discarded.
async fn read_request_head(stream: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    // What was read, minus all but the last three bytes of earlier reads: a
    // blank line split across two reads is still found.
    let mut recent = Vec::with_capacity(buf.len() + 3);
    let mut seen = 0usize;
    while seen < 16 * 1024 {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        recent.extend_from_slice(&buf[..n]);
        if recent.windows(4).any(|w| w == b"\r\n\r\n") {
            return;
        }
        seen += n;
        recent.drain(..recent.len().saturating_sub(3));
    }
}

/// Serve `bridge` on `listener` until `shutdown` completes (settings from
/// the bridge's config), then drain gracefully.
pub async fn serve(
    listener: TcpListener,
    bridge: BridgeManager,
    shutdown: impl Future<Output = ()>,
) -> dreamos_bridge::Result<()> {
    Server::from_bridge(bridge)?.run(listener, shutdown).await
}
