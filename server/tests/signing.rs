//! HMAC-signed inbound messages: the `X-Bridge-Signature` header on
//! `/v1/route` and `/v1/publish`, and the `signature` field of WebSocket
//! `reply`/`error` frames, checked with the core's replay window.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{TestServer, post};
use dreamos_bridge::security::signing::signature_header;
use dreamos_bridge::{Message, handler_fn};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sha2::Digest;
use tokio_tungstenite::tungstenite::Message as Ws;

const AGENT: &str = "dk_sign_agent_key";
const SERVICE: &str = "dk_sign_service_key";
const MSG_KEY: &str = "message-signing-secret-0123456789abcdef";
const WRONG_KEY: &str = "not-the-message-key-0123456789abcdef0000";

fn config(required: bool) -> String {
    let sha = |k: &str| hex::encode(sha2::Sha256::digest(k.as_bytes()));
    format!(
        "bridge:\n  host: 127.0.0.1\n  port: 0\n  retry_attempts: 0\n\
         security:\n  auth_type: token\n\
         \x20 signing_keys:\n    - id: k1\n      secret: test-signing-secret-0123456789abcdef0123\n\
         \x20 api_keys:\n\
         \x20   - {{principal: agent, sha256: {}, roles: [agent]}}\n\
         \x20   - {{principal: svc, sha256: {}, roles: [service]}}\n\
         \x20 roles:\n\
         \x20   agent: {{route: [\"agents.*\", \"ext.*\"], publish: [\"events.>\"]}}\n\
         \x20   service: {{handle: [\"ext.>\"]}}\n\
         \x20 message_signing:\n    keys:\n      - id: m1\n        secret: {MSG_KEY}\n    window: 60\n    required: {required}\n",
        sha(AGENT),
        sha(SERVICE),
    )
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn nonce() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

async fn start(required: bool) -> (TestServer, String) {
    let s = TestServer::start(&config(required), |b| {
        b.register_route("agents.echo", handler_fn(|m: Message| async move { Ok(m.payload) })).unwrap();
        b.register_route("events.>", handler_fn(|m: Message| async move { Ok(m.payload) })).unwrap();
    })
    .await;
    let (st, _, v) = post(format!("{}/v1/auth/token", s.url), None, json!({"api_key": AGENT})).await;
    assert_eq!(st, 200, "{v}");
    let token = v["token"].as_str().unwrap().to_string();
    (s, token)
}

/// POST a message body with an optional signature header.
async fn send(url: &str, token: &str, body: &Value, signature: Option<&str>) -> (u16, Value) {
    let mut rb = reqwest::Client::new().post(url).bearer_auth(token).json(body);
    if let Some(sig) = signature {
        rb = rb.header("X-Bridge-Signature", sig);
    }
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn body(msg: &Message) -> Value {
    json!({"id": msg.id.to_string(), "destination": msg.destination, "payload": msg.payload.to_json()})
}

fn refused(st: u16, v: &Value, status: u16, code: &str, needle: &str) {
    assert_eq!((st, v["code"].as_str()), (status, Some(code)), "{v}");
    let m = v["message"].as_str().unwrap();
    assert!(m.contains(needle), "expected {needle:?} in {m:?}");
    assert!(!m.contains(MSG_KEY), "secret in error message");
}

#[tokio::test]
async fn signed_http_messages_and_every_refusal() {
    let (s, token) = start(true).await;
    let route = format!("{}/v1/route", s.url);
    let msg = Message::new("agents.echo", json!({"b": [1, 2], "a": "x"}));
    let sig = signature_header("m1", MSG_KEY.as_bytes(), &msg, now(), &nonce());
    assert_eq!(send(&route, &token, &body(&msg), Some(&sig)).await, (200, json!({"payload": {"b": [1, 2], "a": "x"}})));

    // The same signature again: replayed nonce.
    let (st, v) = send(&route, &token, &body(&msg), Some(&sig)).await;
    refused(st, &v, 401, "UNAUTHENTICATED", "replayed");
    // Tampered body: payload changed after signing.
    let msg2 = Message::new("agents.echo", json!({"amount": 10}));
    let sig2 = signature_header("m1", MSG_KEY.as_bytes(), &msg2, now(), &nonce());
    let mut tampered = body(&msg2);
    tampered["payload"]["amount"] = json!(10_000);
    let (st, v) = send(&route, &token, &tampered, Some(&sig2)).await;
    refused(st, &v, 401, "UNAUTHENTICATED", "does not verify");
    // Tampered destination.
    let mut moved = body(&msg2);
    moved["destination"] = json!("agents.other");
    let (st, v) = send(&route, &token, &moved, Some(&sig2)).await;
    refused(st, &v, 401, "UNAUTHENTICATED", "does not verify");
    // The untampered message still goes through: failures leave no nonce behind.
    assert_eq!(send(&route, &token, &body(&msg2), Some(&sig2)).await.0, 200);
    // Wrong key.
    let msg3 = Message::new("agents.echo", json!(3));
    let wrong = signature_header("m1", WRONG_KEY.as_bytes(), &msg3, now(), &nonce());
    let (st, v) = send(&route, &token, &body(&msg3), Some(&wrong)).await;
    refused(st, &v, 401, "UNAUTHENTICATED", "does not verify");
    // Stale timestamp (outside the 60 s window), in both directions.
    for ts in [now() - 600, now() + 600] {
        let stale = signature_header("m1", MSG_KEY.as_bytes(), &msg3, ts, &nonce());
        let (st, v) = send(&route, &token, &body(&msg3), Some(&stale)).await;
        refused(st, &v, 401, "UNAUTHENTICATED", "timestamp");
    }
    // Unsigned while required.
    let (st, v) = send(&route, &token, &body(&msg3), None).await;
    refused(st, &v, 401, "UNAUTHENTICATED", "X-Bridge-Signature");
    // Signed but without the id it was signed over.
    let sig3 = signature_header("m1", MSG_KEY.as_bytes(), &msg3, now(), &nonce());
    let (st, v) = send(&route, &token, &json!({"destination": "agents.echo", "payload": 3}), Some(&sig3)).await;
    refused(st, &v, 401, "UNAUTHENTICATED", "`id`");
    // Malformed header; a non-UUID id.
    let (st, v) = send(&route, &token, &body(&msg3), Some("v1,kid=m1")).await;
    refused(st, &v, 401, "UNAUTHENTICATED", "malformed");
    let mut bad_id = body(&msg3);
    bad_id["id"] = json!("not-a-uuid");
    let (st, v) = send(&route, &token, &bad_id, Some(&sig3)).await;
    refused(st, &v, 400, "INVALID_MESSAGE", "UUID");
    // Unknown key id.
    let unknown = signature_header("m9", MSG_KEY.as_bytes(), &msg3, now(), &nonce());
    let (st, v) = send(&route, &token, &body(&msg3), Some(&unknown)).await;
    refused(st, &v, 401, "UNAUTHENTICATED", "m9");

    // /v1/publish: the same rules; the accepted message keeps the signed id.
    let publish = format!("{}/v1/publish", s.url);
    let ev = Message::new("events.audit", json!({"e": 1}));
    let sig = signature_header("m1", MSG_KEY.as_bytes(), &ev, now(), &nonce());
    let (st, v) = send(&publish, &token, &body(&ev), Some(&sig)).await;
    assert_eq!((st, v["id"].as_str()), (202, Some(ev.id.to_string().as_str())), "{v}");
    let (st, v) = send(&publish, &token, &body(&ev), Some(&sig)).await;
    refused(st, &v, 401, "UNAUTHENTICATED", "replayed");
    let (st, v) = send(&publish, &token, &body(&Message::new("events.audit", json!(2))), None).await;
    refused(st, &v, 401, "UNAUTHENTICATED", "X-Bridge-Signature");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn optional_signing_checks_signatures_that_are_present() {
    let (s, token) = start(false).await;
    let route = format!("{}/v1/route", s.url);
    let msg = Message::new("agents.echo", json!("plain"));
    assert_eq!(send(&route, &token, &body(&msg), None).await.0, 200);
    let wrong = signature_header("m1", WRONG_KEY.as_bytes(), &msg, now(), &nonce());
    let (st, v) = send(&route, &token, &body(&msg), Some(&wrong)).await;
    refused(st, &v, 401, "UNAUTHENTICATED", "does not verify");
    s.stop().await.unwrap();
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_json(ws: &mut Socket) -> Value {
    loop {
        let f = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("frame in time");
        if let Some(Ok(Ws::Text(t))) = f {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

async fn ws_send(ws: &mut Socket, v: Value) {
    ws.send(Ws::Text(v.to_string().into())).await.unwrap();
}

/// Sign a reply to `m` (a `message` frame) with `secret`.
fn reply_signature(m: &Value, payload: &Value, secret: &str) -> String {
    let mut signed = Message::new(m["destination"].as_str().unwrap(), payload.clone());
    signed.id = uuid::Uuid::parse_str(m["id"].as_str().unwrap()).unwrap();
    signature_header("m1", secret.as_bytes(), &signed, now(), &nonce())
}

#[tokio::test]
async fn signed_websocket_replies() {
    let (s, token) = start(true).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(s.ws_url()).await.unwrap();
    ws_send(&mut ws, json!({"type": "auth", "credentials": {"api_key": SERVICE}})).await;
    assert_eq!(next_json(&mut ws).await["type"], "ready");
    ws_send(&mut ws, json!({"type": "subscribe", "pattern": "ext.calc"})).await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    let route = format!("{}/v1/route", s.url);

    // Each case: a signed request from the agent, the service's answer, what the agent gets.
    let call = |n: i64| {
        let route = route.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let msg = Message::new("ext.calc", json!({"n": n}));
            let sig = signature_header("m1", MSG_KEY.as_bytes(), &msg, now(), &nonce());
            send(&route, &token, &body(&msg), Some(&sig)).await
        })
    };

    // A correctly signed reply is delivered.
    let pending = call(1);
    let m = next_json(&mut ws).await;
    assert_eq!(m["type"], "message");
    let answer = json!({"result": 2});
    let sig = reply_signature(&m, &answer, MSG_KEY);
    ws_send(&mut ws, json!({"type": "reply", "id": m["id"], "payload": answer, "signature": sig})).await;
    assert_eq!(pending.await.unwrap(), (200, json!({"payload": {"result": 2}})));

    // Tampered payload, wrong key, unsigned: the service gets an error frame with the id, the caller HANDLER_ERROR.
    for case in ["tampered", "wrong key", "unsigned"] {
        let pending = call(2);
        let m = next_json(&mut ws).await;
        let answer = json!({"result": 4});
        let mut frame = json!({"type": "reply", "id": m["id"], "payload": answer});
        match case {
            "tampered" => {
                frame["signature"] = json!(reply_signature(&m, &answer, MSG_KEY));
                frame["payload"] = json!({"result": 5});
            }
            "wrong key" => frame["signature"] = json!(reply_signature(&m, &answer, WRONG_KEY)),
            _ => {}
        }
        ws_send(&mut ws, frame).await;
        let e = next_json(&mut ws).await;
        assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some("UNAUTHENTICATED")), "{case}: {e}");
        assert_eq!(e["id"], m["id"], "{case}");
        let (st, v) = pending.await.unwrap();
        assert_eq!((st, v["code"].as_str()), (500, Some("HANDLER_ERROR")), "{case}: {v}");
        assert!(v["message"].as_str().unwrap().contains("refused"), "{case}: {v}");
    }

    // A signed error frame is the service's error, as without signing.
    let pending = call(3);
    let m = next_json(&mut ws).await;
    let sig = reply_signature(&m, &json!({"error": "division by zero"}), MSG_KEY);
    ws_send(&mut ws, json!({"type": "error", "id": m["id"], "message": "division by zero", "signature": sig})).await;
    let (st, v) = pending.await.unwrap();
    assert_eq!((st, v["code"].as_str(), v["message"].as_str()), (500, Some("HANDLER_ERROR"), Some("division by zero")));
    s.stop().await.unwrap();
}
