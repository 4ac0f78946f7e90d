//! External services over `GET /v1/connect`: serving a pattern, sharing
//! load, disconnecting with messages in flight, heartbeats, bad frames, a
//! service that stops reading, the connection limit, duplicate message ids
//! and config reloads.

mod common;

use std::time::Duration;

use common::{LOCAL, TestServer, get, post};
use dreamos_bridge::{BridgeConfig, BridgeManager, CallOptions, ErrorCode, Message, Payload, handler_fn};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Ws;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_json(ws: &mut Socket) -> Value {
    // One deadline for the text frame: heartbeat pings must not extend it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await.expect("frame in time") {
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

/// Wait (bounded) until `pattern` is or is not routed; the final state.
async fn routed_eventually(s: &TestServer, pattern: &str, want: bool) -> bool {
    for _ in 0..1000 {
        if s.bridge().routes().iter().any(|p| p == pattern) == want {
            return want;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    !want
}

/// A service that stops reading while messages pile up is closed once its
/// outbound queue is full: the message it held is released at once (here
/// `SERVICE_UNAVAILABLE`, nobody else serves the pattern) instead of waiting
/// for its deadline, and the server lets go of the socket.
#[tokio::test]
async fn a_service_that_stops_reading_is_closed_and_its_messages_released() {
    let yaml = "bridge:\n  host: 127.0.0.1\n  port: 0\n  retry_attempts: 0\nlimits:\n  max_payload_bytes: 2000000\n";
    // A long heartbeat: the full queue, not the heartbeat, must end the session.
    let s = TestServer::start_with(
        yaml,
        |_| {},
        |o| {
            o.heartbeat_interval = Duration::from_secs(60);
            o.ws_outbound_frames = 4;
        },
    )
    .await;
    let mut stuck = service(&s, "ext.stuck").await;
    let bridge = s.bridge();
    let call = |payload: Payload| {
        let b = bridge.clone();
        tokio::spawn(async move {
            b.route(
                Message::new("ext.stuck", payload),
                CallOptions { token: None, timeout: Some(Duration::from_secs(30)) },
            )
            .await
        })
    };
    // One message the service has read: in flight.
    let first = call(Payload::Json(json!("first")));
    assert_eq!(next_json(&mut stuck).await["payload"], "first");
    // Then it reads nothing more, while big messages fill the socket and the queue.
    let big = Payload::Json(json!("x".repeat(1_000_000)));
    let rest: Vec<_> = (0..30).map(|_| call(big.clone())).collect();
    let first = tokio::time::timeout(Duration::from_secs(60), first).await.expect("answered").unwrap();
    assert_eq!(first.map_err(|e| e.code()), Err(ErrorCode::ServiceUnavailable));
    for r in rest {
        let r = tokio::time::timeout(Duration::from_secs(60), r).await.expect("answered").unwrap();
        // Released in flight, or arrived after the route went away.
        let code = r.map_err(|e| e.code()).expect_err("nobody answered");
        assert!(matches!(code, ErrorCode::ServiceUnavailable | ErrorCode::RouteNotFound), "{code:?}");
    }
    assert!(!routed_eventually(&s, "ext.stuck", false).await, "the route outlived the session");
    // The server closed the socket: reading on, the peer reaches its end.
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(Ok(f)) = stuck.next().await {
            if matches!(f, Ws::Close(_)) {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the server kept the socket open");
}

/// Only pongs (and answers) prove that a peer reads: a peer that sends its
/// own pings but never reads is dropped after two heartbeats, while one that
/// reads stays connected.
#[tokio::test]
async fn only_a_reading_peer_passes_the_heartbeat() {
    let s = TestServer::start_with(LOCAL, |_| {}, |o| o.heartbeat_interval = Duration::from_millis(200)).await;
    let reader = serve_forever(service(&s, "ext.reads").await, "r");
    let mut pinger = service(&s, "ext.pings").await;
    let mut dropped = false;
    for _ in 0..200 {
        if !s.bridge().routes().iter().any(|p| p == "ext.pings") {
            dropped = true;
            break;
        }
        if pinger.send(Ws::Ping(Default::default())).await.is_err() {
            continue;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(dropped, "a peer that pings but never reads kept its session");
    // Ten heartbeat intervals later, the reading peer is still served.
    let (st, _, v) = post(format!("{}/v1/route", s.url), None, json!({"destination": "ext.reads", "payload": 1})).await;
    assert_eq!((st, &v["payload"]["by"]), (200, &json!("r")), "{v}");
    reader.abort();
}

/// A WebSocket session holds its connection's slot of
/// `bridge.max_connections` until it ends.
#[tokio::test]
async fn sessions_count_against_max_connections() {
    let yaml = "bridge:\n  host: 127.0.0.1\n  port: 0\n  max_connections: 1\n";
    let s = TestServer::start(yaml, |_| {}).await;
    let ws = service(&s, "ext.slot").await;
    let (st, v) = get(&format!("{}/health", s.url), None).await;
    assert_eq!((st, v["code"].as_str()), (503, Some("SERVICE_UNAVAILABLE")), "{v}");
    assert!(tokio_tungstenite::connect_async(s.ws_url()).await.is_err(), "a second session got in");
    drop(ws);
    // The slot comes back when the session ends.
    let mut st = 0;
    for _ in 0..200 {
        st = get(&format!("{}/health", s.url), None).await.0;
        if st == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(st, 200);
}

/// A second message with the id of one in flight on the same session (a
/// client's retry) is not handed to that session: the service could not
/// tell the answers apart. With no other subscriber it is refused at once;
/// the first is answered as usual, and the id can be used again after.
#[tokio::test]
async fn the_same_id_twice_in_flight_on_one_session() {
    let s = TestServer::start(LOCAL, |_| {}).await;
    let mut ws = service(&s, "ext.dup").await;
    let route = format!("{}/v1/route", s.url);
    let id = uuid::Uuid::now_v7().to_string();
    let first = tokio::spawn(post(route.clone(), None, json!({"id": id, "destination": "ext.dup", "payload": 1})));
    let m = next_json(&mut ws).await;
    assert_eq!((m["type"].as_str(), m["id"].as_str()), (Some("message"), Some(id.as_str())));
    let (st, _, v) = post(&route, None, json!({"id": id, "destination": "ext.dup", "payload": 2, "timeout": 5})).await;
    assert_eq!((st, v["code"].as_str()), (503, Some("SERVICE_UNAVAILABLE")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("already in flight"), "{v}");
    send(&mut ws, json!({"type": "reply", "id": id, "payload": "one"})).await;
    let (st, _, v) = first.await.unwrap();
    assert_eq!((st, &v["payload"]), (200, &json!("one")), "{v}");
    // Answered: the same id may come again.
    let again = tokio::spawn(post(route.clone(), None, json!({"id": id, "destination": "ext.dup", "payload": 3})));
    let m = next_json(&mut ws).await;
    assert_eq!((m["id"].as_str(), &m["payload"]), (Some(id.as_str()), &json!(3)));
    send(&mut ws, json!({"type": "reply", "id": id, "payload": "three"})).await;
    let (st, _, v) = again.await.unwrap();
    assert_eq!((st, &v["payload"]), (200, &json!("three")), "{v}");
}

/// With two subscribers, the duplicate goes to the one that does not hold
/// the id, even when round robin picks the holder first, and every caller
/// is answered.
#[tokio::test]
async fn the_same_id_twice_goes_to_another_subscriber() {
    let s = TestServer::start(LOCAL, |_| {}).await;
    let mut a = service(&s, "ext.dup2").await;
    let mut b = service(&s, "ext.dup2").await;
    let route = format!("{}/v1/route", s.url);
    let id = uuid::Uuid::now_v7().to_string();
    let call = |id: &str, p: i32| {
        tokio::spawn(post(route.clone(), None, json!({"id": id, "destination": "ext.dup2", "payload": p})))
    };
    let first = call(&id, 1);
    let a_holds = tokio::select! {
        m = next_json(&mut a) => { assert_eq!(m["payload"], 1); true }
        m = next_json(&mut b) => { assert_eq!(m["payload"], 1); false }
    };
    let (mut holder, mut other) = if a_holds { (a, b) } else { (b, a) };
    // Round robin: this one goes to the other subscriber...
    let filler_id = uuid::Uuid::now_v7().to_string();
    let filler = call(&filler_id, 2);
    let m = next_json(&mut other).await;
    assert_eq!(m["id"].as_str(), Some(filler_id.as_str()));
    // ...so the holder's turn comes with the duplicate, which moves on to the other one.
    let second = call(&id, 3);
    let m = next_json(&mut other).await;
    assert_eq!((m["id"].as_str(), &m["payload"]), (Some(id.as_str()), &json!(3)));
    send(&mut other, json!({"type": "reply", "id": filler_id, "payload": "filler"})).await;
    send(&mut other, json!({"type": "reply", "id": id, "payload": "by other"})).await;
    send(&mut holder, json!({"type": "reply", "id": id, "payload": "by holder"})).await;
    for (c, want) in [(first, "by holder"), (filler, "filler"), (second, "by other")] {
        let (st, _, v) = c.await.unwrap();
        assert_eq!((st, &v["payload"]), (200, &json!(want)), "{v}");
    }
}

/// A reload whose config routes a pattern a connected service serves: the
/// configured route takes it, the service is told, and the route stays when
/// the service leaves.
#[tokio::test]
async fn a_reload_that_routes_a_served_pattern_keeps_the_configured_route() {
    let s = TestServer::start(LOCAL, |_| {}).await;
    let mut ws = service(&s, "ext.tool").await;
    let kept = serve_forever(service(&s, "ext.kept").await, "kept");
    let new = BridgeManager::new(BridgeConfig::from_yaml(LOCAL).unwrap()).unwrap();
    new.register_route("ext.tool", handler_fn(|_m: Message| async move { Ok(json!("configured").into()) })).unwrap();
    s.server.replace_bridge(new).await.unwrap();
    let v = next_json(&mut ws).await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str(), v["pattern"].as_str()),
        (Some("error"), Some("FORBIDDEN"), Some("ext.tool")),
        "{v}"
    );
    let route = format!("{}/v1/route", s.url);
    let (st, _, v) = post(&route, None, json!({"destination": "ext.tool", "payload": 1})).await;
    assert_eq!((st, &v["payload"]), (200, &json!("configured")), "{v}");
    // The service cannot take it back, and its leaving does not remove it.
    send(&mut ws, json!({"type": "subscribe", "pattern": "ext.tool"})).await;
    assert_eq!(next_json(&mut ws).await["code"], "FORBIDDEN");
    drop(ws);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (st, _, v) = post(&route, None, json!({"destination": "ext.tool", "payload": 1})).await;
    assert_eq!((st, &v["payload"]), (200, &json!("configured")), "{v}");
    // A pattern the config does not route stays with its service.
    let (st, _, v) = post(&route, None, json!({"destination": "ext.kept", "payload": 2})).await;
    assert_eq!((st, &v["payload"]["by"]), (200, &json!("kept")), "{v}");
    kept.abort();
}

/// An embedder registers an in-process handler over a pattern a connected
/// service serves: the service's leaving must not remove that handler.
#[tokio::test]
async fn a_handler_registered_over_a_served_pattern_survives_the_service_leaving() {
    let s = TestServer::start(LOCAL, |_| {}).await;
    let ws = service(&s, "ext.shared").await;
    s.server
        .bridge()
        .register_route("ext.shared", handler_fn(|_m: Message| async move { Ok(json!("in-process").into()) }))
        .unwrap();
    drop(ws);
    let route = format!("{}/v1/route", s.url);
    // The hub notices the socket closing; the in-process route answers throughout.
    for _ in 0..10 {
        let (st, _, v) = post(&route, None, json!({"destination": "ext.shared", "payload": 1})).await;
        assert_eq!((st, &v["payload"]), (200, &json!("in-process")), "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(s.server.state().hub.handler("ext.shared").is_none(), "the hub let go of the pattern");
    assert_eq!(s.server.bridge().routes(), vec!["ext.shared".to_string()]);
}
