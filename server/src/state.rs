//! What every request handler shares: the hub (and through it the bridge
//! in force) and the server's own settings.

use std::sync::Arc;
use std::time::Duration;

use dreamos_bridge::{BridgeConfig, BridgeManager};
use tokio_util::sync::CancellationToken;

use crate::hub::ServiceHub;

/// Room for the request envelope (destination, headers, JSON quoting)
/// around the largest payload `limits.max_payload_bytes` allows.
pub const ENVELOPE_BYTES: usize = 64 * 1024;

/// Default of [`ServerOptions::ws_outbound_frames`]: room for a burst as
/// large as a route's default queue (`bridge.queue_size`), small enough that
/// a service that does not read is found out before it costs much memory.
pub const WS_OUTBOUND_FRAMES: usize = 1024;

/// Server settings that come from the config at start (a reload does not
/// change them; see `docs/server.md`).
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Origins allowed by CORS (exact matches).
    pub allowed_origins: Vec<String>,
    /// Largest request body, bytes.
    pub body_limit: usize,
    /// Largest WebSocket frame, bytes.
    pub max_frame_bytes: usize,
    /// Most concurrent client connections.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (also the idle time of a kept-alive connection).
    pub header_read_timeout: Duration,
    /// Time a client has to send a request body once the headers arrived.
    pub body_read_timeout: Duration,
    /// Time a write to a client may wait without progress (the client reads
    /// nothing) before its connection is closed and its slot freed.
    pub write_timeout: Duration,
    /// Ping interval of connected services; two missed ones drop the peer.
    pub heartbeat_interval: Duration,
    /// Frames waiting to be written to one connected service; a service that
    /// falls further behind (stops reading) is closed.
    pub ws_outbound_frames: usize,
    /// Time a new WebSocket has to send its auth frame.
    pub auth_timeout: Duration,
    /// Time connections get to finish after the bridge has drained.
    pub close_grace: Duration,
    /// TLS, if configured.
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
}

impl ServerOptions {
    /// Settings from a config (loads the TLS files if `bridge.tls` is set).
    pub fn from_config(config: &BridgeConfig) -> dreamos_bridge::Result<Self> {
        let tls = match &config.bridge.tls {
            Some(t) => Some(crate::tls::load(&t.cert, &t.key)?),
            None => None,
        };
        Ok(ServerOptions {
            allowed_origins: config.security.as_ref().map(|s| s.allowed_origins.clone()).unwrap_or_default(),
            body_limit: config.limits.max_payload_bytes.saturating_add(ENVELOPE_BYTES),
            max_frame_bytes: config.limits.max_payload_bytes.saturating_add(ENVELOPE_BYTES),
            max_connections: config.bridge.max_connections,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(15),
            ws_outbound_frames: WS_OUTBOUND_FRAMES,
            auth_timeout: Duration::from_secs(10),
            close_grace: Duration::from_secs(5),
            tls,
        })
    }
}

/// Shared by all handlers.
pub struct AppState {
    /// Connected services and the bridge in force.
    pub hub: ServiceHub,
    /// Settings.
    pub options: ServerOptions,
    /// Cancelled when the server shuts down (closes WebSockets).
    pub closing: CancellationToken,
}

impl AppState {
    /// The bridge in force.
    pub fn bridge(&self) -> BridgeManager {
        self.hub.bridge()
    }
}
