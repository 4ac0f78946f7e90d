//! Security over HTTP and WebSocket: the token flow, 401/403, admin
//! endpoints (metrics, revoke, dead letters), and `handle` authorization of
//! connected services. Built on the core's documented SecurityManager.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{TestServer, get, post};
use dreamos_bridge::{BridgeError, Message, handler_fn};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sha2::Digest;
use tokio_tungstenite::tungstenite::Message as Ws;

const AGENT: &str = "dk_test_agent_key";
const ADMIN: &str = "dk_test_admin_key";
const SERVICE: &str = "dk_test_service_key";

fn sha(k: &str) -> String {
    hex::encode(sha2::Sha256::digest(k.as_bytes()))
}

fn config() -> String {
    format!(
        "bridge:\n  host: 127.0.0.1\n  port: 0\n  retry_attempts: 0\n  retry_delay: 10ms\n\
         security:\n  auth_type: token\n  token_expiry: 600\n\
         \x20 signing_keys:\n    - id: k1\n      secret: test-signing-secret-0123456789abcdef0123\n\
         \x20 api_keys:\n\
         \x20   - {{principal: agent, sha256: {}, roles: [agent]}}\n\
         \x20   - {{principal: ops, sha256: {}, roles: [admin]}}\n\
         \x20   - {{principal: svc, sha256: {}, roles: [service]}}\n\
         \x20 roles:\n\
         \x20   agent: {{route: [\"agents.*\"], publish: [\"events.>\"], deny: [\"agents.admin\"]}}\n\
         \x20   service: {{handle: [\"ext.>\"]}}\n\
         \x20   admin: {{admin: [\">\"]}}\n",
        sha(AGENT),
        sha(ADMIN),
        sha(SERVICE)
    )
}

async fn token(s: &TestServer, key: &str) -> String {
    let (st, _, v) = post(format!("{}/v1/auth/token", s.url), None, json!({"api_key": key})).await;
    assert_eq!(st, 200, "{v}");
    v["token"].as_str().expect("token").to_string()
}

fn echo(b: &dreamos_bridge::BridgeManager) {
    for p in ["agents.echo", "agents.admin", "other.echo"] {
        b.register_route(p, handler_fn(|m: Message| async move { Ok(m.payload) })).unwrap();
    }
}

#[tokio::test]
async fn token_flow_and_refusals() {
    let s = TestServer::start(&config(), echo).await;
    let route = format!("{}/v1/route", s.url);
    let (st, _, v) = post(format!("{}/v1/auth/token", s.url), None, json!({"api_key": AGENT})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["principal"], "agent");
    assert_eq!(v["roles"], json!(["agent"]));
    assert!(v["expires_at"].as_u64().unwrap() > 0);
    let t = v["token"].as_str().unwrap().to_string();
    let (st, _, v) = post(&route, Some(&t), json!({"destination": "agents.echo", "payload": 1})).await;
    assert_eq!((st, v), (200, json!({"payload": 1})));
    // 401: no token, garbage token, wrong key, malformed credentials, wrong scheme.
    for tok in [None, Some("garbage"), Some("a.b.c")] {
        let (st, _, v) = post(&route, tok, json!({"destination": "agents.echo", "payload": 1})).await;
        assert_eq!((st, v["code"].as_str()), (401, Some("UNAUTHENTICATED")), "{tok:?} {v}");
    }
    let (st, _, v) = post(format!("{}/v1/auth/token", s.url), None, json!({"api_key": "wrong"})).await;
    assert_eq!((st, v["code"].as_str()), (401, Some("UNAUTHENTICATED")));
    assert!(!v.to_string().contains("wrong"), "the key must not be echoed: {v}");
    let (st, _, v) = post(format!("{}/v1/auth/token", s.url), None, json!(["api_key"])).await;
    assert_eq!((st, v["code"].as_str()), (401, Some("UNAUTHENTICATED")));
    let r = common::client()
        .post(&route)
        .header("Authorization", format!("Basic {t}"))
        .json(&json!({"destination": "agents.echo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // 403: denied destination, and one no role grants.
    for dest in ["agents.admin", "other.echo"] {
        let (st, _, v) = post(&route, Some(&t), json!({"destination": dest, "payload": 1})).await;
        assert_eq!((st, v["code"].as_str()), (403, Some("FORBIDDEN")), "{dest} {v}");
    }
}

#[tokio::test]
async fn admin_endpoints_need_the_admin_role() {
    let s = TestServer::start(&config(), echo).await;
    let agent = token(&s, AGENT).await;
    let admin = token(&s, ADMIN).await;
    for path in ["/metrics", "/v1/admin/metrics.json", "/v1/admin/dead-letters"] {
        let (st, v) = get(&format!("{}{path}", s.url), None).await;
        assert_eq!(st, 401, "{path} {v}");
        let (st, v) = get(&format!("{}{path}", s.url), Some(&agent)).await;
        assert_eq!((st, v["code"].as_str()), (403, Some("FORBIDDEN")), "{path}");
        let (st, v) = get(&format!("{}{path}", s.url), Some(&admin)).await;
        assert_eq!(st, 200, "{path} {v}");
    }
    // Revocation: the agent's token stops working.
    let (st, _, v) = post(format!("{}/v1/admin/revoke", s.url), Some(&agent), json!({"token": agent})).await;
    assert_eq!(st, 403, "{v}");
    let (st, _, v) = post(format!("{}/v1/admin/revoke", s.url), Some(&admin), json!({"token": agent})).await;
    assert_eq!(st, 200, "{v}");
    let (st, _, v) = post(format!("{}/v1/route", s.url), Some(&agent), json!({"destination": "agents.echo"})).await;
    assert_eq!((st, v["code"].as_str()), (401, Some("UNAUTHENTICATED")));
}

#[tokio::test]
async fn dead_letters_list_and_replay() {
    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    let s = TestServer::start(&config(), move |b| {
        let h = h.clone();
        b.register_route(
            "events.audit",
            handler_fn(move |m: Message| {
                let ok = h.load(Ordering::SeqCst);
                async move { if ok { Ok(m.payload) } else { Err(BridgeError::handler("audit store down")) } }
            }),
        )
        .unwrap();
    })
    .await;
    let agent = token(&s, AGENT).await;
    let admin = token(&s, ADMIN).await;
    let (st, _, v) = post(
        format!("{}/v1/publish", s.url),
        Some(&agent),
        json!({"destination": "events.audit", "payload": {"n": 1}}),
    )
    .await;
    assert_eq!(st, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let mut listed = Value::Null;
    for _ in 0..200 {
        let (_, v) = get(&format!("{}/v1/admin/dead-letters", s.url), Some(&admin)).await;
        if v["dead_letters"].as_array().is_some_and(|a| !a.is_empty()) {
            listed = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(listed["dead_letters"][0]["id"], id.as_str(), "{listed}");
    assert_eq!(listed["dead_letters"][0]["error"]["code"], "HANDLER_ERROR");
    let replay = format!("{}/v1/admin/dead-letters/{id}/replay", s.url);
    let (st, _, _) = post(&replay, Some(&agent), json!({})).await;
    assert_eq!(st, 403);
    healthy.store(true, Ordering::SeqCst);
    let (st, _, v) = post(&replay, Some(&admin), json!({})).await;
    assert_eq!(st, 200, "{v}");
    let (_, v) = get(&format!("{}/v1/admin/dead-letters", s.url), Some(&admin)).await;
    assert_eq!(v["dead_letters"], json!([]));
    let (st, _, v) = post(format!("{}/v1/admin/dead-letters/not-a-uuid/replay", s.url), Some(&admin), json!({})).await;
    assert_eq!((st, v["code"].as_str()), (400, Some("INVALID_MESSAGE")));
}

async fn frame(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await.unwrap() {
            Some(Ok(Ws::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    }
}

#[tokio::test]
async fn services_need_credentials_and_the_handle_action() {
    let s = TestServer::start(&config(), |_| {}).await;
    // Wrong key: an error frame, then the socket closes.
    let (mut ws, _) = tokio_tungstenite::connect_async(s.ws_url()).await.unwrap();
    ws.send(Ws::Text(json!({"type": "auth", "credentials": {"api_key": "nope"}}).to_string().into())).await.unwrap();
    assert_eq!(frame(&mut ws).await["code"], "UNAUTHENTICATED");
    // The service key may serve ext.>, nothing else.
    let (mut ws, _) = tokio_tungstenite::connect_async(s.ws_url()).await.unwrap();
    ws.send(Ws::Text(json!({"type": "auth", "credentials": {"api_key": SERVICE}}).to_string().into())).await.unwrap();
    let ready = frame(&mut ws).await;
    assert_eq!((ready["type"].as_str(), ready["principal"].as_str()), (Some("ready"), Some("svc")));
    assert!(ready["token"].as_str().is_some());
    ws.send(Ws::Text(json!({"type": "subscribe", "pattern": "agents.x"}).to_string().into())).await.unwrap();
    assert_eq!(frame(&mut ws).await["code"], "FORBIDDEN");
    ws.send(Ws::Text(json!({"type": "subscribe", "pattern": "ext.tools"}).to_string().into())).await.unwrap();
    assert_eq!(frame(&mut ws).await["type"], "subscribed");
    // An agent may not serve anything.
    let agent = token(&s, AGENT).await;
    let (mut ws2, _) = tokio_tungstenite::connect_async(s.ws_url()).await.unwrap();
    ws2.send(Ws::Text(json!({"type": "auth", "token": agent}).to_string().into())).await.unwrap();
    assert_eq!(frame(&mut ws2).await["type"], "ready");
    ws2.send(Ws::Text(json!({"type": "subscribe", "pattern": "ext.other"}).to_string().into())).await.unwrap();
    assert_eq!(frame(&mut ws2).await["code"], "FORBIDDEN");
}

/// Read a service socket on a task (so that pings are answered) and report
/// its text frames, then `{"close": code}` when it ends.
fn watch(
    mut ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) -> tokio::sync::mpsc::UnboundedReceiver<Value> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match ws.next().await {
                Some(Ok(Ws::Text(t))) => {
                    let _ = tx.send(serde_json::from_str(t.as_str()).unwrap());
                }
                Some(Ok(Ws::Close(f))) => {
                    let _ = tx.send(json!({"close": f.map(|f| u16::from(f.code))}));
                    return;
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => {
                    let _ = tx.send(json!({"close": null}));
                    return;
                }
            }
        }
    });
    rx
}

/// A service session that subscribed to `ext.tools` with `token`.
async fn subscribed_with(s: &TestServer, token: &str) -> tokio::sync::mpsc::UnboundedReceiver<Value> {
    let (mut ws, _) = tokio_tungstenite::connect_async(s.ws_url()).await.unwrap();
    ws.send(Ws::Text(json!({"type": "auth", "token": token}).to_string().into())).await.unwrap();
    assert_eq!(frame(&mut ws).await["type"], "ready");
    ws.send(Ws::Text(json!({"type": "subscribe", "pattern": "ext.tools"}).to_string().into())).await.unwrap();
    assert_eq!(frame(&mut ws).await["type"], "subscribed");
    watch(ws)
}

/// The session's end after its token stopped being valid: an
/// `UNAUTHENTICATED` error frame, close code 1008, and the route gone.
async fn expect_closed_for_the_token(s: &TestServer, frames: &mut tokio::sync::mpsc::UnboundedReceiver<Value>) {
    async fn next(frames: &mut tokio::sync::mpsc::UnboundedReceiver<Value>) -> Value {
        tokio::time::timeout(Duration::from_secs(30), frames.recv()).await.expect("frame in time").expect("frame")
    }
    let v = next(frames).await;
    assert_eq!((v["type"].as_str(), v["code"].as_str()), (Some("error"), Some("UNAUTHENTICATED")), "{v}");
    assert_eq!(next(frames).await, json!({"close": 1008}));
    assert!(!s.bridge().routes().contains(&"ext.tools".to_string()));
}

#[tokio::test]
async fn revoking_a_services_token_ends_its_session() {
    let s = TestServer::start_with(&config(), |_| {}, |o| o.heartbeat_interval = Duration::from_millis(200)).await;
    let svc = token(&s, SERVICE).await;
    let mut frames = subscribed_with(&s, &svc).await;
    // A few heartbeats with a valid token: nothing happens.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(frames.try_recv().is_err());
    assert!(s.bridge().routes().contains(&"ext.tools".to_string()));
    let admin = token(&s, ADMIN).await;
    let (st, _, v) = post(format!("{}/v1/admin/revoke", s.url), Some(&admin), json!({"token": svc})).await;
    assert_eq!(st, 200, "{v}");
    expect_closed_for_the_token(&s, &mut frames).await;
}

#[tokio::test]
async fn an_expired_token_ends_the_session() {
    let cfg = config().replace("token_expiry: 600", "token_expiry: 1");
    let s = TestServer::start_with(&cfg, |_| {}, |o| o.heartbeat_interval = Duration::from_millis(200)).await;
    let svc = token(&s, SERVICE).await;
    let mut frames = subscribed_with(&s, &svc).await;
    // One second of validity plus the verifier's few seconds of clock-skew leeway.
    expect_closed_for_the_token(&s, &mut frames).await;
}
