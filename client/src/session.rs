//! The WebSocket half of a remote bridge: the handlers this process serves.
//!
//! A remote bridge opens ONE `GET /v1/connect` session, on its first
//! `register_route`, and multiplexes every pattern it serves over it: the
//! server sends `message` frames, each is answered by calling the handler
//! (concurrently, under the message's deadline) and sending `reply` or
//! `error`. One task owns the socket; it authenticates, sends a JSON `ping`
//! every heartbeat interval and reconnects with exponential backoff when the
//! server goes away (restart, network), then subscribes again to every
//! pattern that was registered. The protocol is documented in
//! `docs/server.md`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dreamos_bridge::routing::RouteTable;
use dreamos_bridge::{BridgeError, ErrorCode, Handler, Result};
use futures_util::{FutureExt, SinkExt, StreamExt};
use parking_lot::{Mutex, RwLock};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

use crate::ClientOptions;
use crate::http::Api;
use crate::wire;

type Socket = tokio_tungstenite::WebSocketStream<crate::tls::Stream>;

enum Command {
    Subscribe(String, oneshot::Sender<Result<()>>),
    Unsubscribe(String),
}

/// What the socket task and the [`crate::RemoteBridge`] share.
struct Shared {
    api: Arc<Api>,
    ws_url: String,
    /// TLS for a `wss://` server (same trust as the HTTP half); `None` for `ws://`.
    tls: Option<TlsConnector>,
    opts: ClientOptions,
    /// The handlers by pattern (most specific wins, as in the engine).
    handlers: RwLock<RouteTable<Arc<dyn Handler>>>,
    /// Patterns the server accepted: subscribed again after every reconnect.
    confirmed: Mutex<HashSet<String>>,
    /// Connections made so far (tests and logs use it to see reconnects).
    connections: std::sync::atomic::AtomicU64,
}

/// The serving side of one remote bridge.
pub(crate) struct Session {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    cancel: CancellationToken,
}

impl Session {
    /// Start the socket task (it connects at once).
    pub(crate) fn start(
        api: Arc<Api>,
        tls: Option<TlsConnector>,
        opts: ClientOptions,
        cancel: CancellationToken,
    ) -> Session {
        let ws_url = ws_url(api.base());
        let shared = Arc::new(Shared {
            api,
            ws_url,
            tls,
            opts,
            handlers: RwLock::new(RouteTable::new()),
            confirmed: Mutex::new(HashSet::new()),
            connections: std::sync::atomic::AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(shared.clone(), rx, cancel.clone()));
        Session { shared, commands: tx, cancel }
    }

    /// Serve `pattern` with `handler`; resolves once the server accepted the subscription.
    pub(crate) async fn register(&self, pattern: &str, handler: Arc<dyn Handler>) -> Result<()> {
        let replaced = self.shared.handlers.write().insert(pattern, handler)?;
        if replaced.is_some() && self.shared.confirmed.lock().contains(pattern) {
            return Ok(()); // same pattern, new handler: the subscription stands
        }
        let (tx, rx) = oneshot::channel();
        let sent = self.commands.send(Command::Subscribe(pattern.to_string(), tx)).is_ok();
        let wait = self.shared.opts.connect_timeout * 2 + Duration::from_secs(1);
        let outcome = if !sent {
            Err(closed())
        } else {
            match tokio::time::timeout(wait, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(closed()),
                Err(_) => Err(BridgeError::new(
                    ErrorCode::ServiceUnavailable,
                    format!(
                        "the bridge server at {} did not confirm the subscription to {pattern:?} within {:.1}s",
                        self.shared.api.base(),
                        wait.as_secs_f64()
                    ),
                )),
            }
        };
        if outcome.is_err() {
            self.shared.handlers.write().remove(pattern);
            self.shared.confirmed.lock().remove(pattern);
        }
        outcome
    }

    /// Stop serving `pattern`; `true` if it was served.
    pub(crate) fn unregister(&self, pattern: &str) -> bool {
        let had = self.shared.handlers.write().remove(pattern).is_some();
        self.shared.confirmed.lock().remove(pattern);
        if had {
            let _ = self.commands.send(Command::Unsubscribe(pattern.to_string()));
        }
        had
    }

    /// The patterns served.
    pub(crate) fn patterns(&self) -> Vec<String> {
        let mut v: Vec<String> = self.shared.confirmed.lock().iter().cloned().collect();
        v.sort();
        v
    }

    /// How many times the socket connected (1 until the first reconnect).
    pub(crate) fn connections(&self) -> u64 {
        self.shared.connections.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn close(&self) {
        self.cancel.cancel();
    }
}

fn closed() -> BridgeError {
    BridgeError::shutdown().context("this RemoteBridge was closed")
}

/// `http://h:p/base` → `ws://h:p/base/v1/connect`.
fn ws_url(base: &str) -> String {
    let rest =
        base.strip_prefix("https://").map(|r| ("wss://", r)).or(base.strip_prefix("http://").map(|r| ("ws://", r)));
    match rest {
        Some((scheme, r)) => format!("{scheme}{r}/v1/connect"),
        None => format!("{base}/v1/connect"),
    }
}

/// The socket task: connect, serve, reconnect; until cancelled.
async fn run(shared: Arc<Shared>, mut commands: mpsc::UnboundedReceiver<Command>, cancel: CancellationToken) {
    let mut backoff = shared.opts.reconnect_min;
    loop {
        let attempt = tokio::select! {
            r = connect(&shared) => r,
            _ = cancel.cancelled() => break,
        };
        match attempt {
            Ok((socket, heartbeat)) => {
                backoff = shared.opts.reconnect_min;
                let n = shared.connections.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
                tracing::info!(url = %shared.ws_url, connection = n, "serving routes over the bridge server");
                if serve(&shared, socket, heartbeat, &mut commands, &cancel).await.is_break() {
                    break;
                }
                tracing::warn!(url = %shared.ws_url, "lost the bridge server; reconnecting");
            }
            Err(e) => {
                tracing::warn!(url = %shared.ws_url, error = %e, "cannot connect to the bridge server; retrying");
                // Registrations waiting for a connection learn why there is none.
                while let Ok(cmd) = commands.try_recv() {
                    if let Command::Subscribe(_, tx) = cmd {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
        }
        // Wait before the next attempt; registrations meanwhile fail at once.
        let sleep = tokio::time::sleep(jitter(backoff));
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                _ = cancel.cancelled() => return,
                cmd = commands.recv() => match cmd {
                    Some(Command::Subscribe(_, tx)) => {
                        let _ = tx.send(Err(BridgeError::new(
                            ErrorCode::ServiceUnavailable,
                            format!("not connected to the bridge server at {} (reconnecting): try again", shared.api.base()),
                        )));
                    }
                    Some(Command::Unsubscribe(_)) => {}
                    None => return,
                },
            }
        }
        backoff = (backoff * 2).min(shared.opts.reconnect_max);
    }
}

/// Up to a quarter less than `d`, so that many clients do not reconnect in step.
fn jitter(d: Duration) -> Duration {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|t| t.subsec_nanos()).unwrap_or(0);
    d.mul_f64(1.0 - f64::from(nanos % 1000) / 4000.0)
}

/// TCP (and TLS for `wss://`), then the WebSocket handshake.
async fn open_socket(shared: &Shared) -> std::result::Result<Socket, String> {
    let url = reqwest::Url::parse(&shared.ws_url).map_err(|e| format!("bad URL: {e}"))?;
    let host = url.host_str().ok_or("the URL has no host")?;
    let port = url.port_or_known_default().ok_or("the URL has no port")?;
    let stream = crate::tls::open(host, port, shared.tls.as_ref()).await.map_err(|e| e.to_string())?;
    let (socket, _) =
        tokio_tungstenite::client_async(shared.ws_url.as_str(), stream).await.map_err(|e| e.to_string())?;
    Ok(socket)
}

/// Open the socket and authenticate; the heartbeat interval the server asked for.
async fn connect(shared: &Shared) -> Result<(Socket, Duration)> {
    let limit = shared.opts.connect_timeout;
    let unavailable = |what: String| {
        BridgeError::new(ErrorCode::ServiceUnavailable, format!("bridge server WebSocket {}: {what}", shared.ws_url))
    };
    let mut socket = match tokio::time::timeout(limit, open_socket(shared)).await {
        Err(_) => return Err(unavailable(format!("no connection within {:.1}s", limit.as_secs_f64()))),
        Ok(Err(e)) => return Err(unavailable(format!("cannot connect ({e}): is `dreamos-bridge serve` running?"))),
        Ok(Ok(s)) => s,
    };
    let auth = match shared.api.credentials() {
        Some(c) => json!({"type": "auth", "credentials": wire::credentials_json(c)}),
        None => json!({"type": "auth"}),
    };
    socket.send(Ws::Text(auth.to_string().into())).await.map_err(|e| unavailable(format!("send failed: {e}")))?;
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = match tokio::time::timeout(left, socket.next()).await {
            Err(_) => return Err(unavailable("no answer to the auth frame in time".into())),
            Ok(None) | Ok(Some(Err(_))) => return Err(unavailable("closed during authentication".into())),
            Ok(Some(Ok(Ws::Text(t)))) => t,
            Ok(Some(Ok(_))) => continue,
        };
        let v: Value = serde_json::from_str(frame.as_str())
            .map_err(|e| unavailable(format!("the server's first frame is not JSON ({e})")))?;
        match v.get("type").and_then(Value::as_str) {
            Some("ready") => {
                let ms = v.get("heartbeat_interval_ms").and_then(Value::as_u64).unwrap_or(15_000).max(100);
                let every = Duration::from_millis(ms).min(shared.opts.heartbeat_max);
                return Ok((socket, every));
            }
            Some("error") => {
                return Err(wire::error_from_json(&v)
                    .unwrap_or_else(|| unavailable(format!("refused: {v}")))
                    .context("the bridge server refused the WebSocket session"));
            }
            _ => return Err(unavailable(format!("unexpected first frame {v}"))),
        }
    }
}

/// Serve one connection until it ends (`Continue`: reconnect) or the bridge closes (`Break`).
async fn serve(
    shared: &Arc<Shared>,
    socket: Socket,
    every: Duration,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    cancel: &CancellationToken,
) -> std::ops::ControlFlow<()> {
    use std::ops::ControlFlow::{Break, Continue};
    let (mut sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<String>();
    // Handler calls of this connection end with it: their callers are answered by the server.
    let conn = cancel.child_token();
    let _end_calls = conn.clone().drop_guard();
    let mut waiting: HashMap<String, Vec<oneshot::Sender<Result<()>>>> = HashMap::new();
    let mut sent: HashSet<String> = HashSet::new();
    let resubscribe: Vec<String> = shared.confirmed.lock().iter().cloned().collect();
    for p in resubscribe {
        let _ = out_tx.send(json!({"type": "subscribe", "pattern": p}).to_string());
        sent.insert(p);
    }
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut last_seen = Instant::now();
    let flow = loop {
        tokio::select! {
            frame = stream.next() => match frame {
                Some(Ok(Ws::Text(t))) => {
                    last_seen = Instant::now();
                    on_frame(shared, t.as_str(), &out_tx, &conn, &mut waiting, &mut sent);
                }
                Some(Ok(Ws::Close(_))) | None | Some(Err(_)) => break Continue(()),
                Some(Ok(_)) => last_seen = Instant::now(), // ping / pong / binary
            },
            out = out_rx.recv() => {
                let Some(text) = out else { break Continue(()) };
                if sink.send(Ws::Text(text.into())).await.is_err() {
                    break Continue(());
                }
            }
            cmd = commands.recv() => match cmd {
                Some(Command::Subscribe(p, tx)) => {
                    if shared.confirmed.lock().contains(&p) && sent.contains(&p) && !waiting.contains_key(&p) {
                        let _ = tx.send(Ok(()));
                    } else {
                        if sent.insert(p.clone()) {
                            let _ = out_tx.send(json!({"type": "subscribe", "pattern": p}).to_string());
                        }
                        waiting.entry(p).or_default().push(tx);
                    }
                }
                Some(Command::Unsubscribe(p)) => {
                    if sent.remove(&p) {
                        let _ = out_tx.send(json!({"type": "unsubscribe", "pattern": p}).to_string());
                    }
                }
                None => break Break(()),
            },
            _ = heartbeat.tick() => {
                // Two intervals without a frame: the server is gone even if TCP has not noticed.
                if last_seen.elapsed() > every * 2 {
                    tracing::warn!(url = %shared.ws_url, "the bridge server missed its heartbeats");
                    break Continue(());
                }
                let _ = out_tx.send(json!({"type": "ping"}).to_string());
            }
            _ = cancel.cancelled() => {
                let close = CloseFrame { code: CloseCode::Normal, reason: "client closed".into() };
                let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(Ws::Close(Some(close)))).await;
                break Break(());
            }
        }
    };
    // Registrations still waiting for this connection's answer.
    let why = match flow {
        Break(()) => closed(),
        Continue(()) => BridgeError::new(
            ErrorCode::ServiceUnavailable,
            format!("the connection to the bridge server at {} ended before it answered", shared.api.base()),
        ),
    };
    for (_, txs) in waiting {
        for tx in txs {
            let _ = tx.send(Err(why.clone()));
        }
    }
    flow
}

fn on_frame(
    shared: &Arc<Shared>,
    text: &str,
    out: &mpsc::UnboundedSender<String>,
    conn: &CancellationToken,
    waiting: &mut HashMap<String, Vec<oneshot::Sender<Result<()>>>>,
    sent: &mut HashSet<String>,
) {
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "a frame from the bridge server is not JSON; ignored");
            return;
        }
    };
    let pattern = v.get("pattern").and_then(Value::as_str);
    match (v.get("type").and_then(Value::as_str), pattern) {
        (Some("message"), _) => dispatch(shared, &v, out, conn),
        (Some("subscribed"), Some(p)) => {
            if shared.handlers.read().get(p).is_some() {
                shared.confirmed.lock().insert(p.to_string());
            }
            for tx in waiting.remove(p).unwrap_or_default() {
                let _ = tx.send(Ok(()));
            }
        }
        (Some("error"), Some(p)) => {
            let e = wire::error_from_json(&v)
                .unwrap_or_else(|| BridgeError::internal(format!("the server refused {p:?}: {v}")));
            sent.remove(p);
            match waiting.remove(p) {
                Some(txs) => {
                    for tx in txs {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
                // A subscription made again after a reconnect: nobody waits, so say it here.
                None => tracing::warn!(pattern = p, error = %e, "the bridge server refused a subscription again"),
            }
        }
        (Some("error"), None) => tracing::warn!(frame = %v, "the bridge server reported an error"),
        _ => {} // unsubscribed, pong, and frames of newer servers
    }
}

/// Answer one `message` frame on its own task.
fn dispatch(shared: &Arc<Shared>, frame: &Value, out: &mpsc::UnboundedSender<String>, conn: &CancellationToken) {
    let msg = match wire::message_from_frame(frame) {
        Ok(m) => m,
        Err(why) => {
            tracing::warn!(frame = %frame, "{why}; ignored");
            return;
        }
    };
    let id = msg.id;
    let handler = shared.handlers.read().resolve(&msg.destination).cloned();
    let Some(handler) = handler else {
        let why = format!("this client no longer serves {:?} (unregistered)", msg.destination);
        let _ = out.send(wire::declined_frame(&id, &why));
        return;
    };
    let out = out.clone();
    let conn = conn.clone();
    let deadline = msg.remaining();
    tokio::spawn(async move {
        // A panicking handler fails its call, not the session.
        let call = std::panic::AssertUnwindSafe(handler.call(msg)).catch_unwind();
        let result = tokio::select! {
            r = call => r.unwrap_or_else(|_| Err(BridgeError::handler("the handler panicked"))),
            _ = conn.cancelled() => return,
            _ = sleep_opt(deadline) => return, // the server answered the caller with TIMEOUT already
        };
        let _ = out.send(wire::answer_frame(&id, &result));
    });
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
