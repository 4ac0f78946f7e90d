//! External services over `GET /v1/connect`: serving a pattern, sharing
//! load, disconnecting with messages in flight, heartbeats, bad frames.

mod common;

use std::time::Duration;

use common::{LOCAL, TestServer, post};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Ws;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_json(ws: &mut Socket) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await.expect("frame in time") {
            Some(Ok(Ws::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    }
}

async fn send(ws: &mut Socket, v: Value) {
    ws.send(Ws::Text(v.to_string().into())).await.unwrap();
}

/// Connect, authenticate and subscribe.
async fn service(s: &TestServer, pattern: &str) -> Socket {
    let (mut ws, _) = tokio_tungstenite::connect_async(s.ws_url()).await.unwrap();
    send(&mut ws, json!({"type": "auth", "credentials": {}})).await;
    assert_eq!(next_json(&mut ws).await["type"], "ready");
    send(&mut ws, json!({"type": "subscribe", "pattern": pattern})).await;
    let v = next_json(&mut ws).await;
    assert_eq!(v, json!({"type": "subscribed", "pattern": pattern}));
    ws
}

/// Answer every message with `{"by": name, "echo": payload}` until the socket ends.
fn serve_forever(mut ws: Socket, name: &'static str) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(Ok(frame)) = ws.next().await {
            if let Ws::Text(t) = frame {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "message" {
                    let reply = json!({"type": "reply", "id": v["id"], "payload": {"by": name, "echo": v["payload"], "dest": v["destination"]}});
                    if ws.send(Ws::Text(reply.to_string().into())).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
}

#[tokio::test]
async fn connected_service_serves_a_pattern() {
    let s = TestServer::start(LOCAL, |_| {}).await;
    let ws = service(&s, "ext.tools.>").await;
    assert!(s.bridge().routes().contains(&"ext.tools.>".to_string()));
    let task = serve_forever(ws, "a");
    let (st, _, v) =
        post(format!("{}/v1/route", s.url), None, json!({"destination": "ext.tools.sum", "payload": [1, 2]})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["payload"], json!({"by": "a", "echo": [1, 2], "dest": "ext.tools.sum"}));
    task.abort();
    let _ = task.await;
    // The route goes away with the last subscriber.
    for _ in 0..200 {
        if s.bridge().routes().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(s.bridge().routes().is_empty());
    let (st, _, v) =
        post(format!("{}/v1/route", s.url), None, json!({"destination": "ext.tools.sum", "payload": 1})).await;
    assert_eq!((st, v["code"].as_str()), (404, Some("ROUTE_NOT_FOUND")));
}

#[tokio::test]
async fn two_subscribers_share_the_load() {
    let s = TestServer::start(LOCAL, |_| {}).await;
    let a = serve_forever(service(&s, "ext.pool").await, "a");
    let b = serve_forever(service(&s, "ext.pool").await, "b");
    let mut by = std::collections::HashMap::new();
    for i in 0..20 {
        let (st, _, v) =
            post(format!("{}/v1/route", s.url), None, json!({"destination": "ext.pool", "payload": i})).await;
        assert_eq!(st, 200, "{v}");
        *by.entry(v["payload"]["by"].as_str().unwrap().to_string()).or_insert(0) += 1;
    }
    assert_eq!(by.get("a"), Some(&10), "{by:?}");
    assert_eq!(by.get("b"), Some(&10), "{by:?}");
    a.abort();
    b.abort();
}

#[tokio::test]
async fn disconnect_with_messages_in_flight_moves_them_or_fails_them() {
    let s = TestServer::start(LOCAL, |_| {}).await;
    // `silent` takes messages and never answers; `good` answers.
    let mut silent = service(&s, "ext.work").await;
    let good = service(&s, "ext.work").await;
    let route = format!("{}/v1/route", s.url);
    let calls: Vec<_> = (0..6)
        .map(|i| {
            tokio::spawn(post(route.clone(), None, json!({"destination": "ext.work", "payload": i, "timeout": 20})))
        })
        .collect();
    // Hold `good`'s messages too until `silent` has some in flight.
    let mut got = 0;
    while got < 3 {
        if next_json(&mut silent).await["type"] == "message" {
            got += 1;
        }
    }
    // Now `silent` disconnects with 3 messages in flight, and `good` starts answering.
    drop(silent);
    let good = serve_forever(good, "good");
    for c in calls {
        let (st, _, v) = c.await.unwrap();
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["payload"]["by"], "good");
    }
    // With no subscriber left, in-flight messages fail with SERVICE_UNAVAILABLE.
    let mut last = service(&s, "ext.last").await;
    let call = tokio::spawn(post(route.clone(), None, json!({"destination": "ext.last", "payload": 1, "timeout": 20})));
    assert_eq!(next_json(&mut last).await["type"], "message");
    drop(last);
    let (st, _, v) = call.await.unwrap();
    assert_eq!((st, v["code"].as_str()), (503, Some("SERVICE_UNAVAILABLE")), "{v}");
    good.abort();
}

/// A service that unsubscribed while a message was on its way declines it
/// (`code: ROUTE_NOT_FOUND`): the message did not run, so another subscriber
/// gets it; with nobody else, the caller gets `ROUTE_NOT_FOUND`.
#[tokio::test]
async fn a_declined_message_goes_to_another_subscriber() {
    let s = TestServer::start(LOCAL, |_| {}).await;
    let route = format!("{}/v1/route", s.url);
    let mut declining = service(&s, "ext.move").await;
    let mut other = service(&s, "ext.move").await;
    // Round robin: of two calls, one reaches each; `declining` declines its own.
    let calls: Vec<_> = (0..2)
        .map(|i| tokio::spawn(post(route.clone(), None, json!({"destination": "ext.move", "payload": i}))))
        .collect();
    let m = next_json(&mut declining).await;
    assert_eq!(m["type"], "message");
    send(&mut declining, json!({"type": "error", "id": m["id"], "code": "ROUTE_NOT_FOUND", "message": "gone"})).await;
    // `other` now gets both: its own and the declined one (same id).
    let mut ids = Vec::new();
    for _ in 0..2 {
        let v = next_json(&mut other).await;
        assert_eq!(v["type"], "message");
        send(&mut other, json!({"type": "reply", "id": v["id"], "payload": {"by": "other"}})).await;
        ids.push(v["id"].clone());
    }
    assert!(ids.contains(&m["id"]), "{ids:?} {m}");
    for c in calls {
        let (st, _, v) = c.await.unwrap();
        assert_eq!((st, &v["payload"]), (200, &json!({"by": "other"})), "{v}");
    }
    // The only subscriber declines: ROUTE_NOT_FOUND, not a handler error.
    let mut alone = service(&s, "ext.alone").await;
    let call = tokio::spawn(post(route.clone(), None, json!({"destination": "ext.alone", "payload": 1})));
    let m = next_json(&mut alone).await;
    send(&mut alone, json!({"type": "error", "id": m["id"], "code": "ROUTE_NOT_FOUND", "message": "gone"})).await;
    let (st, _, v) = call.await.unwrap();
    assert_eq!((st, v["code"].as_str()), (404, Some("ROUTE_NOT_FOUND")), "{v}");
}

#[tokio::test]
async fn service_errors_and_bad_frames() {
    let s = TestServer::start(LOCAL, |b| {
        b.register_route(
            "inproc.x",
            dreamos_bridge::handler_fn(|m: dreamos_bridge::Message| async move { Ok(m.payload) }),
        )
        .unwrap();
    })
    .await;
    let mut ws = service(&s, "ext.err").await;
    let call = tokio::spawn(post(format!("{}/v1/route", s.url), None, json!({"destination": "ext.err", "payload": 1})));
    let m = next_json(&mut ws).await;
    send(&mut ws, json!({"type": "error", "id": m["id"], "message": "no can do"})).await;
    let (st, _, v) = call.await.unwrap();
    assert_eq!((st, v["code"].as_str(), v["message"].as_str()), (500, Some("HANDLER_ERROR"), Some("no can do")));
    ws.send(Ws::Text("{nope".into())).await.unwrap();
    assert_eq!(next_json(&mut ws).await["code"], "INVALID_MESSAGE");
    send(&mut ws, json!({"type": "dance"})).await;
    assert_eq!(next_json(&mut ws).await["code"], "INVALID_MESSAGE");
    // A pattern already routed in-process is not taken over.
    send(&mut ws, json!({"type": "subscribe", "pattern": "inproc.x"})).await;
    assert_eq!(next_json(&mut ws).await["code"], "FORBIDDEN");
    send(&mut ws, json!({"type": "subscribe", "pattern": "ext.err"})).await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed"); // same session, same pattern: idempotent
    send(&mut ws, json!({"type": "subscribe", "pattern": "bad..pattern"})).await;
    assert_eq!(next_json(&mut ws).await["code"], "INVALID_MESSAGE");
}

#[tokio::test]
async fn first_frame_must_authenticate() {
    let s = TestServer::start(LOCAL, |_| {}).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(s.ws_url()).await.unwrap();
    send(&mut ws, json!({"type": "subscribe", "pattern": "x.y"})).await;
    let v = next_json(&mut ws).await;
    assert_eq!(v["code"], "UNAUTHENTICATED");
}

#[tokio::test]
async fn silent_peer_is_dropped_by_heartbeat() {
    let s = TestServer::start_with(LOCAL, |_| {}, |o| o.heartbeat_interval = Duration::from_millis(200)).await;
    // Subscribe, then stop reading: tungstenite answers pings only while read, so this peer is silent.
    let ws = service(&s, "ext.quiet").await;
    let bridge = s.bridge();
    let mut gone = false;
    for _ in 0..500 {
        if bridge.routes().is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "a silent service kept its route");
    drop(ws);
}

#[tokio::test]
async fn dead_letters_survive_a_config_reload() {
    let s = TestServer::start(LOCAL, |b| {
        b.register_route(
            "jobs.broken",
            dreamos_bridge::handler_fn(|_m| async { Err(dreamos_bridge::BridgeError::handler("broken")) }),
        )
        .unwrap();
    })
    .await;
    let old = s.server.bridge();
    old.publish(dreamos_bridge::Message::new("jobs.broken", json!(1)), Default::default()).await.unwrap();
    let mut letters = Vec::new();
    for _ in 0..250 {
        letters = old.dead_letters();
        if !letters.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(letters.len(), 1, "the failed publish was dead-lettered");
    let new = dreamos_bridge::BridgeManager::from_yaml(LOCAL).unwrap();
    s.server.replace_bridge(new).await.unwrap();
    let carried = s.server.bridge().dead_letters();
    assert_eq!(carried.len(), 1, "the dead letter moved to the reloaded bridge");
    assert_eq!(carried[0].id, letters[0].id);
    assert!(old.dead_letters().is_empty());
}

#[tokio::test]
async fn replies_survive_a_config_reload() {
    let s = TestServer::start(LOCAL, |_| {}).await;
    let task = serve_forever(service(&s, "ext.keep").await, "k");
    let new = dreamos_bridge::BridgeManager::from_yaml(LOCAL).unwrap();
    s.server.replace_bridge(new).await.unwrap();
    let (st, _, v) = post(format!("{}/v1/route", s.url), None, json!({"destination": "ext.keep", "payload": 7})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["payload"]["echo"], 7);
    task.abort();
}
