//! `GET /v1/connect`: the WebSocket protocol of external services.
//!
//! One socket is one [`Session`]: the first frame authenticates, then the
//! service subscribes to patterns and answers the messages the bridge sends
//! it. The wire format is documented in `docs/server.md`; this module only
//! translates frames into [`ServiceHub`] calls and keeps the session honest:
//! the heartbeat (only pongs and answers prove the peer reads), the bounded
//! outbound queue and write timeout (a peer that stops reading is closed and
//! its socket released), the session's token (checked again on every
//! heartbeat, so a revoked or expired token ends the session), and the
//! connection slot (a session counts against `bridge.max_connections`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use dreamos_bridge::{Action, BridgeError, Credentials, ErrorCode, Message, Payload};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::dispatch::ConnectionSlot;
use crate::hub::{Outbound, Session};
use crate::state::AppState;

/// Upgrade to the service protocol. The connection's slot (when served by
/// [`crate::Server`]) moves into the session: the HTTP connection ends at
/// the upgrade, the socket does not.
pub async fn connect(
    State(state): State<Arc<AppState>>,
    slot: Option<Extension<ConnectionSlot>>,
    ws: WebSocketUpgrade,
) -> Response {
    let max = state.options.max_frame_bytes;
    ws.max_message_size(max).max_frame_size(max).on_upgrade(move |socket| async move {
        let _slot = slot;
        run(state, socket).await
    })
}

fn error_frame(code: ErrorCode, message: &str, extra: Option<(&str, Value)>) -> String {
    let mut v = json!({"type": "error", "code": code.as_str(), "message": message});
    if let (Some((k, x)), Some(obj)) = (extra, v.as_object_mut()) {
        obj.insert(k.to_string(), x);
    }
    v.to_string()
}

/// Wait for the `auth` frame; the token to authorize subscriptions with.
async fn authenticate(state: &AppState, socket: &mut WebSocket) -> Result<(Option<String>, Option<String>), String> {
    let first = tokio::time::timeout(state.options.auth_timeout, socket.next()).await;
    let text = match first {
        Err(_) => return Err(error_frame(ErrorCode::Unauthenticated, "no auth frame in time", None)),
        Ok(Some(Ok(WsMessage::Text(t)))) => t,
        Ok(_) => {
            return Err(error_frame(
                ErrorCode::Unauthenticated,
                "the first frame must be {\"type\":\"auth\",\"credentials\":{...}}",
                None,
            ));
        }
    };
    let frame: Value = serde_json::from_str(text.as_str())
        .map_err(|e| error_frame(ErrorCode::InvalidMessage, &format!("the auth frame is not JSON: {e}"), None))?;
    if frame.get("type").and_then(Value::as_str) != Some("auth") {
        return Err(error_frame(ErrorCode::Unauthenticated, "the first frame must have \"type\": \"auth\"", None));
    }
    let bridge = state.bridge();
    if !bridge.config().security_enabled() {
        return Ok((None, None));
    }
    // A bridge token from /v1/auth/token, or credentials to exchange for one.
    if let Some(token) = frame.get("token").and_then(Value::as_str) {
        let p = bridge.verify_token(token).map_err(|e| error_frame(e.code(), e.message(), None))?;
        return Ok((Some(token.to_string()), Some(p.name.to_string())));
    }
    let creds = frame.get("credentials").cloned().unwrap_or(Value::Null);
    let creds = Credentials::from_json(&creds).map_err(|e| error_frame(e.code(), e.message(), None))?;
    let token = bridge.authenticate(&creds).map_err(|e| error_frame(e.code(), e.message(), None))?;
    Ok((Some(token.value), Some(token.principal)))
}

async fn run(state: Arc<AppState>, mut socket: WebSocket) {
    let (token, principal) = match authenticate(&state, &mut socket).await {
        Ok(t) => t,
        Err(frame) => {
            let _ = socket.send(WsMessage::Text(frame.into())).await;
            let _ =
                socket.send(WsMessage::Close(Some(CloseFrame { code: 1008, reason: "unauthenticated".into() }))).await;
            return;
        }
    };
    let ready = json!({"type": "ready", "token": token, "principal": principal,
        "heartbeat_interval_ms": state.options.heartbeat_interval.as_millis() as u64});
    if socket.send(WsMessage::Text(ready.to_string().into())).await.is_err() {
        return;
    }

    let (tx, mut rx) = mpsc::channel(state.options.ws_outbound_frames.max(1));
    let session = Session::new(principal, tx);
    tracing::info!(session = session.id, principal = ?session.principal, "service connected");
    let (mut sink, mut stream) = socket.split();
    let every = state.options.heartbeat_interval;
    // A write that takes longer than the peer may stay silent means the
    // peer is not reading: give up rather than hold the socket forever.
    let write_timeout = every * 2;
    let ended = session.ended().clone();
    let session_id = session.id;
    let mut writer = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            let (frame, last) = match out {
                Outbound::Text(t) => (WsMessage::Text(t.into()), false),
                Outbound::Ping => (WsMessage::Ping(Default::default()), false),
                Outbound::Close(code, reason) => {
                    (WsMessage::Close(Some(CloseFrame { code, reason: reason.into() })), true)
                }
            };
            match tokio::time::timeout(write_timeout, sink.send(frame)).await {
                Ok(Ok(())) if !last => {}
                Ok(_) => break,
                Err(_) => {
                    tracing::warn!(
                        session = session_id,
                        "connected service did not take a frame in time (not reading?); closing it"
                    );
                    break;
                }
            }
        }
        // Whatever stopped the writer ends the session.
        ended.cancel();
        let _ = tokio::time::timeout(write_timeout, sink.close()).await;
    });

    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut last_seen = Instant::now();
    loop {
        tokio::select! {
            frame = stream.next() => match frame {
                Some(Ok(WsMessage::Text(t))) => {
                    // Only an answer to a message in flight proves the peer
                    // reads; other frames may come from a peer that does not.
                    if handle_frame(&state, &session, token.as_deref(), t.as_str()) {
                        last_seen = Instant::now();
                    }
                }
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(WsMessage::Binary(_))) => {
                    session.send(Outbound::Text(error_frame(ErrorCode::InvalidMessage, "frames are JSON text", None)));
                }
                Some(Ok(WsMessage::Pong(_))) => last_seen = Instant::now(),
                Some(Ok(_)) => {} // the peer's own pings: tungstenite answers them
            },
            _ = heartbeat.tick() => {
                // Two missed heartbeats: the peer is gone even if TCP has not noticed.
                if last_seen.elapsed() > every * 2 {
                    tracing::warn!(session = session.id, "connected service missed its heartbeats; dropping it");
                    session.send(Outbound::Close(1011, "heartbeat timeout".into()));
                    break;
                }
                // The token the session authenticated with must still be valid.
                if let Some(t) = token.as_deref()
                    && let Err(e) = state.bridge().verify_token(t)
                {
                    tracing::info!(session = session.id, principal = ?session.principal,
                        "connected service's token is no longer valid (revoked or expired); closing the session");
                    let why = format!(
                        "the session's token is no longer valid ({}): connect again and authenticate",
                        e.message()
                    );
                    session.send(Outbound::Text(error_frame(ErrorCode::Unauthenticated, &why, None)));
                    session.send(Outbound::Close(1008, "token revoked or expired".into()));
                    break;
                }
                session.send(Outbound::Ping);
            }
            _ = session.ended().cancelled() => break,
            _ = state.closing.cancelled() => {
                session.send(Outbound::Close(1001, "server shutting down".into()));
                break;
            }
        }
    }
    state.hub.leave(&session);
    drop(session);
    // Let a close frame go out; a writer stuck on a peer that does not read
    // is stopped, which closes the socket.
    if tokio::time::timeout(Duration::from_secs(2), &mut writer).await.is_err() {
        writer.abort();
    }
}

/// Handle one text frame; `true` if it answered a message in flight.
fn handle_frame(state: &AppState, session: &Arc<Session>, token: Option<&str>, text: &str) -> bool {
    let reply = |s: String| {
        session.send(Outbound::Text(s));
        false
    };
    let frame: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return reply(error_frame(ErrorCode::InvalidMessage, &format!("frame is not JSON: {e}"), None)),
    };
    let kind = frame.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "subscribe" | "unsubscribe" => {
            let Some(pattern) = frame.get("pattern").and_then(Value::as_str) else {
                return reply(error_frame(ErrorCode::InvalidMessage, "a subscribe frame needs a \"pattern\"", None));
            };
            let extra = Some(("pattern", json!(pattern)));
            if kind == "unsubscribe" {
                state.hub.unsubscribe(session, pattern);
                return reply(json!({"type": "unsubscribed", "pattern": pattern}).to_string());
            }
            let bridge = state.bridge();
            let allowed = match token {
                Some(t) => bridge.authorize(t, Action::Handle, pattern),
                None => Ok(true),
            };
            let result = match allowed {
                Ok(true) => state.hub.subscribe(session, pattern),
                Ok(false) => Err(BridgeError::forbidden(format!(
                    "this principal may not serve {pattern:?}: grant it in a role's `handle` list"
                ))),
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => reply(json!({"type": "subscribed", "pattern": pattern}).to_string()),
                Err(e) => reply(error_frame(e.code(), e.message(), extra)),
            }
        }
        "reply" | "error" => {
            let Some(id) = frame.get("id").and_then(Value::as_str).and_then(|s| Uuid::parse_str(s).ok()) else {
                return reply(error_frame(ErrorCode::InvalidMessage, "a reply needs the \"id\" of the message", None));
            };
            let error_text = frame.get("message").and_then(Value::as_str).unwrap_or("the service reported an error");
            let payload = if kind == "reply" {
                payload_from_json(frame.get("payload").cloned().unwrap_or(Value::Null))
            } else {
                Payload::Json(json!({ "error": error_text }))
            };
            let bridge = state.bridge();
            if crate::signing::configured(&bridge)
                && let Some(destination) = session.destination_of(id)
            {
                let mut signed = Message::new(destination, payload.clone());
                signed.id = id;
                let signature = frame.get("signature").and_then(Value::as_str);
                if let Err(e) = crate::signing::check(&bridge, &signed, signature, "a \"signature\" field") {
                    reply(error_frame(e.code(), e.message(), Some(("id", json!(id.to_string())))));
                    // The caller is answered now rather than at its deadline: the service is misconfigured or forged.
                    let refused = BridgeError::handler(format!(
                        "the connected service's {kind} was refused by the bridge: {}",
                        e.message()
                    ));
                    return session.answer(id, Err(refused));
                }
            }
            let result = match (kind, frame.get("code").and_then(Value::as_str)) {
                ("reply", _) => Ok(payload),
                // The service declines: it does not serve this destination
                // (any more). The hub passes the message on.
                (_, Some("ROUTE_NOT_FOUND")) => Err(BridgeError::new(ErrorCode::RouteNotFound, error_text.to_string())),
                _ => Err(BridgeError::handler(error_text.to_string())),
            };
            let answered = session.answer(id, result);
            if !answered {
                tracing::debug!(%id, "reply for a message nobody waits for (late or unknown); dropped");
            }
            answered
        }
        "ping" => reply(json!({"type": "pong"}).to_string()),
        other => {
            // Not echoed whole: a peer could make every reply as large as a frame.
            let shown: String = other.chars().take(64).collect();
            reply(error_frame(
                ErrorCode::InvalidMessage,
                &format!("unknown frame type {shown:?}: expected subscribe, unsubscribe, reply, error or ping"),
                None,
            ))
        }
    }
}

/// `{"$bytes": "<base64>"}` is a bytes payload; anything else is JSON.
pub fn payload_from_json(v: Value) -> Payload {
    if let Value::Object(m) = &v
        && m.len() == 1
        && let Some(Value::String(b64)) = m.get("$bytes")
    {
        use base64::Engine;
        if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64) {
            return Payload::Bytes(bytes.into());
        }
    }
    Payload::Json(v)
}
