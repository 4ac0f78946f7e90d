//! The HTTP API over a real socket: replies, every reachable error code with
//! its status, body limits, bad JSON, CORS, slow clients, connection limit,
//! the OpenAPI document and the drain.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{LOCAL, TestServer, get, post};
use dreamos_bridge::{BridgeError, Message, handler_fn};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

fn echo(b: &dreamos_bridge::BridgeManager) {
    b.register_route("agents.echo", handler_fn(|m: Message| async move { Ok(m.payload) })).unwrap();
}

#[tokio::test]
async fn route_publish_and_health() {
    let s = TestServer::start(LOCAL, echo).await;
    let (st, _, v) = post(
        &format!("{}/v1/route", s.url),
        None,
        json!({"destination": "agents.echo", "payload": {"x": [1, 2]}, "headers": {"h": "v"}, "timeout": 5}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v, json!({"payload": {"x": [1, 2]}}));
    let bytes = json!({"$bytes": "AAEC"});
    let (st, _, v) =
        post(&format!("{}/v1/route", s.url), None, json!({"destination": "agents.echo", "payload": bytes})).await;
    assert_eq!((st, &v["payload"]), (200, &bytes));
    let (st, _, v) =
        post(&format!("{}/v1/publish", s.url), None, json!({"destination": "agents.echo", "payload": 1})).await;
    assert_eq!(st, 202);
    assert!(uuid::Uuid::parse_str(v["id"].as_str().unwrap()).is_ok());
    let (st, v) = get(&format!("{}/health", s.url), None).await;
    assert_eq!((st, v["status"].as_str()), (200, Some("up")));
    s.stop().await.unwrap();
}

fn assert_error(st: u16, v: &serde_json::Value, status: u16, code: &str) {
    assert_eq!(st, status, "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

#[tokio::test]
async fn error_codes_map_to_statuses() {
    let yaml = format!(
        "{LOCAL}  rate_limit_mode: reject\n\
         services:\n  down:\n    url: http://127.0.0.1:1\n\
         routes:\n  - pattern: down.>\n    service: down\n\
         \x20 - pattern: limited.echo\n    rate_limit: 1/min\n    burst: 1\n\
         \x20 - pattern: narrow.slow\n    max_concurrency: 1\n    queue_size: 1\n"
    );
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let s = TestServer::start(&yaml, move |b| {
        echo(b);
        b.register_route("limited.echo", handler_fn(|m: Message| async move { Ok(m.payload) })).unwrap();
        b.register_route("agents.fail", handler_fn(|_m: Message| async move { Err(BridgeError::handler("boom")) }))
            .unwrap();
        let g2 = g.clone();
        b.register_route(
            "narrow.slow",
            handler_fn(move |m: Message| {
                let g = g2.clone();
                async move {
                    g.notified().await;
                    Ok(m.payload)
                }
            }),
        )
        .unwrap();
        b.register_route(
            "agents.slow",
            handler_fn(|m: Message| async move {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(m.payload)
            }),
        )
        .unwrap();
    })
    .await;
    let route = format!("{}/v1/route", s.url);
    // 400
    let (st, _, v) = post(&route, None, json!({"destination": "bad..subject", "payload": 1})).await;
    assert_error(st, &v, 400, "INVALID_MESSAGE");
    let (st, _, v) = post(&route, None, json!({"payload": 1})).await;
    assert_error(st, &v, 400, "INVALID_MESSAGE");
    let (st, _, v) = post(&route, None, json!({"destination": "agents.echo", "bogus": 1})).await;
    assert_error(st, &v, 400, "INVALID_MESSAGE");
    // 404
    let (st, _, v) = post(&route, None, json!({"destination": "nobody.here", "payload": 1})).await;
    assert_error(st, &v, 404, "ROUTE_NOT_FOUND");
    // 429 with Retry-After
    let (st, _, _) = post(&route, None, json!({"destination": "limited.echo", "payload": 1})).await;
    assert_eq!(st, 200);
    let (st, h, v) = post(&route, None, json!({"destination": "limited.echo", "payload": 1})).await;
    assert_error(st, &v, 429, "RATE_LIMITED");
    let ra: u64 = h.get("retry-after").expect("Retry-After").to_str().unwrap().parse().unwrap();
    assert!(ra >= 1, "{ra}");
    // 500 HANDLER_ERROR
    let (st, _, v) = post(&route, None, json!({"destination": "agents.fail", "payload": 1})).await;
    assert_error(st, &v, 500, "HANDLER_ERROR");
    // 504 TIMEOUT
    let (st, _, v) = post(&route, None, json!({"destination": "agents.slow", "payload": 1, "timeout": 0.2})).await;
    assert_error(st, &v, 504, "TIMEOUT");
    // 503 SERVICE_UNAVAILABLE: nothing listens on port 1
    let (st, _, v) = post(&route, None, json!({"destination": "down.x", "payload": 1, "timeout": 5})).await;
    assert_error(st, &v, 503, "SERVICE_UNAVAILABLE");
    // 503 QUEUE_FULL: one in the handler, one queued, the third finds no room.
    let r1 =
        tokio::spawn(post(route.clone(), None, json!({"destination": "narrow.slow", "payload": 1, "timeout": 30})));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r2 =
        tokio::spawn(post(route.clone(), None, json!({"destination": "narrow.slow", "payload": 2, "timeout": 30})));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (st, _, v) = post(&route, None, json!({"destination": "narrow.slow", "payload": 3, "timeout": 0.3})).await;
    assert_error(st, &v, 503, "QUEUE_FULL");
    gate.notify_one();
    assert_eq!(r1.await.unwrap().0, 200);
    gate.notify_one();
    assert_eq!(r2.await.unwrap().0, 200);
    // 503 SHUTDOWN: the bridge stopped while the listener still answers.
    s.bridge().shutdown().await;
    let (st, _, v) = post(&route, None, json!({"destination": "agents.echo", "payload": 1})).await;
    assert_error(st, &v, 503, "SHUTDOWN");
    s.stop().await.unwrap();
}

async fn wait_until(mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached");
}

#[tokio::test]
async fn bad_bodies() {
    let yaml = format!("{LOCAL}limits:\n  max_payload_bytes: 1000\n");
    let s = TestServer::start(&yaml, echo).await;
    let route = format!("{}/v1/route", s.url);
    let c = common::client();
    // Not JSON.
    let r = c.post(&route).body("{not json").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "INVALID_MESSAGE");
    // JSON but not an object.
    let (st, _, v) = post(&route, None, json!([1, 2])).await;
    assert_error(st, &v, 400, "INVALID_MESSAGE");
    // Payload over limits.max_payload_bytes but body within the envelope: the core refuses it.
    let (st, _, v) = post(&route, None, json!({"destination": "agents.echo", "payload": "x".repeat(5000)})).await;
    assert_error(st, &v, 400, "INVALID_MESSAGE");
    // Body over the limit plus envelope: 413 before parsing.
    let (st, _, v) = post(&route, None, json!({"destination": "agents.echo", "payload": "x".repeat(200_000)})).await;
    assert_error(st, &v, 413, "INVALID_MESSAGE");
    // Bad timeout.
    let (st, _, v) = post(&route, None, json!({"destination": "agents.echo", "timeout": -1})).await;
    assert_error(st, &v, 400, "INVALID_MESSAGE");
    // Fields of the wrong type, each named in the message.
    for (body, field) in [
        (json!({"destination": 5}), "destination"),
        (json!({"destination": "agents.echo", "id": 7}), "id"),
        (json!({"destination": "agents.echo", "headers": {"h": 1}}), "\"h\""),
        (json!({"destination": "agents.echo", "priority": "high"}), "priority"),
        (json!({"destination": "agents.echo", "priority": 1u64 << 40}), "priority"),
    ] {
        let (st, _, v) = post(&route, None, body.clone()).await;
        assert_error(st, &v, 400, "INVALID_MESSAGE");
        let m = v["message"].as_str().unwrap();
        assert!(m.contains(field) || m.contains("invalid type"), "{body}: {m}");
    }
    // A field given twice is refused, not silently overwritten.
    let r = c
        .post(&route)
        .header("content-type", "application/json")
        .body(r#"{"destination": "agents.echo", "destination": "other.place", "payload": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["message"].as_str().unwrap().contains("duplicate field"), "{v}");
    // No payload is a null payload; escaped strings come through unescaped.
    let (st, _, v) = post(&route, None, json!({"destination": "agents.echo"})).await;
    assert_eq!((st, v), (200, json!({"payload": null})));
    let (st, _, v) = post(&route, None, json!({"destination": "agents.echo", "payload": "a\"b\\c\u{e9}"})).await;
    assert_eq!((st, v), (200, json!({"payload": "a\"b\\c\u{e9}"})));
    // Unknown endpoint and wrong method: JSON errors too.
    let (st, v) = get(&format!("{}/v2/nothing", s.url), None).await;
    assert_error(st, &v, 404, "ROUTE_NOT_FOUND");
    let (st, v) = get(&route, None).await;
    assert_eq!(st, 405, "{v}");
    // The server still works.
    let (st, _, _) = post(&route, None, json!({"destination": "agents.echo", "payload": 1})).await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn admin_endpoints_refused_without_security() {
    let s = TestServer::start(LOCAL, echo).await;
    for path in ["/metrics", "/v1/admin/metrics.json", "/v1/admin/dead-letters"] {
        let (st, v) = get(&format!("{}{path}", s.url), None).await;
        assert_error(st, &v, 403, "FORBIDDEN");
    }
    let (st, _, v) = post(&format!("{}/v1/admin/revoke", s.url), None, json!({"token": "x"})).await;
    assert_error(st, &v, 403, "FORBIDDEN");
}

#[tokio::test]
async fn cors_preflight_allows_only_configured_origins() {
    let yaml = format!("{LOCAL}security:\n  auth_type: none\n  allowed_origins: [\"https://app.example.com\"]\n");
    let s = TestServer::start(&yaml, echo).await;
    let c = common::client();
    let preflight = |origin: &'static str| {
        c.request(reqwest::Method::OPTIONS, format!("{}/v1/route", s.url))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "authorization,content-type")
            .send()
    };
    let ok = preflight("https://app.example.com").await.unwrap();
    assert_eq!(ok.headers().get("access-control-allow-origin").unwrap(), "https://app.example.com");
    let methods = ok.headers().get("access-control-allow-methods").unwrap().to_str().unwrap().to_string();
    assert!(methods.contains("POST"), "{methods}");
    let refused = preflight("https://evil.example.com").await.unwrap();
    assert!(refused.headers().get("access-control-allow-origin").is_none());
    // A near miss is not a match.
    let refused = preflight("https://app.example.com.evil.com").await.unwrap();
    assert!(refused.headers().get("access-control-allow-origin").is_none());
    // The message endpoints answer through the CORS layer too.
    for path in ["/v1/route", "/v1/publish"] {
        let r = c
            .post(format!("{}{path}", s.url))
            .header("Origin", "https://app.example.com")
            .json(&json!({"destination": "agents.echo", "payload": 1}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        assert_eq!(r.headers().get("access-control-allow-origin").unwrap(), "https://app.example.com", "{path}");
    }
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let s = TestServer::start_with(LOCAL, echo, |o| o.header_read_timeout = Duration::from_millis(300)).await;
    let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    sock.write_all(b"POST /v1/route HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // Never finish the headers: the server must close the connection.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), sock.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server kept a slow client's connection open");
    // An idle kept-alive connection is closed too.
    let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    sock.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), sock.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server kept an idle connection open");
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn slow_bodies_are_cut_off() {
    let s = TestServer::start_with(LOCAL, echo, |o| o.body_read_timeout = Duration::from_millis(300)).await;
    // Every endpoint that reads a body cuts a slow one off, not only the message endpoints.
    for path in ["/v1/route", "/v1/publish", "/v1/auth/token"] {
        let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{\"dest");
        sock.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(20), sock.read(&mut buf)).await.expect("an answer").unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 400"), "{path}: {text}");
        assert!(text.contains("did not arrive within"), "{path}: {text}");
    }
}

/// Send `chunks` as a chunked request body to `path`, each chunk written
/// (and flushed) on its own after a pause, so that the server reads them
/// as separate body frames; returns the status line and the body.
async fn chunked_post(addr: std::net::SocketAddr, path: &str, chunks: &[&[u8]]) -> (String, String) {
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.set_nodelay(true).unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    sock.write_all(head.as_bytes()).await.unwrap();
    for chunk in chunks {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(chunk);
        frame.extend_from_slice(b"\r\n");
        // The server may answer (413) and close before the last chunks: later writes may fail.
        if sock.write_all(&frame).await.is_err() {
            break;
        }
    }
    let _ = sock.write_all(b"0\r\n\r\n").await;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), sock.read_to_end(&mut buf)).await.expect("an answer").unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.lines().next().unwrap_or_default().to_string();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn bodies_in_several_frames_are_joined_and_limited() {
    let yaml = format!("{LOCAL}limits:\n  max_payload_bytes: 1000\n");
    let s = TestServer::start(&yaml, echo).await;
    let (status, body) =
        chunked_post(s.addr, "/v1/route", &[b"{\"destination\": \"agents.", b"echo\", \"payload\": ", b"[1, 2]}"])
            .await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status} {body}");
    assert!(body.contains(r#"{"payload":[1,2]}"#), "{body}");
    // The limit (max_payload_bytes + 64 KiB of envelope) counts every frame.
    let filler = vec![b' '; 30_000];
    let (status, body) = chunked_post(s.addr, "/v1/route", &[b"{", &filler, &filler, &filler, b"}"]).await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status} {body}");
    assert!(body.contains("INVALID_MESSAGE"), "{body}");
}

#[tokio::test]
async fn connection_limit_refuses_extra_clients() {
    let yaml = "bridge:\n  host: 127.0.0.1\n  port: 0\n  max_connections: 2\n";
    let s = TestServer::start(yaml, echo).await;
    let a = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let b = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    // Make sure both were accepted (a request on each).
    let mut held = Vec::new();
    for mut sock in [a, b] {
        sock.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 12];
        sock.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(sock);
    }
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut buf = Vec::new();
    c.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("SERVICE_UNAVAILABLE"), "{text}");
    // An HTTP client gets that 503 as the answer to its request (written
    // after the request arrived), not a broken connection.
    let refused = common::client()
        .post(format!("{}/v1/route", s.url))
        .json(&json!({"destination": "agents.echo", "payload": "x".repeat(2000)}))
        .send()
        .await
        .expect("a readable refusal");
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers().get("retry-after").map(|v| v.as_bytes()), Some(&b"1"[..]));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "SERVICE_UNAVAILABLE", "{body}");
    drop(held);
    // Slots come back.
    let mut ok = false;
    for _ in 0..100 {
        if let Ok(r) = common::client().get(format!("{}/health", s.url)).send().await
            && r.status() == 200
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok);
}

/// A flood of connections over the limit: at most 64 are answered with the
/// 503 at a time (each holds its socket for a second or two), the rest are
/// closed at once instead of piling up as open descriptors.
#[tokio::test]
async fn a_flood_over_the_limit_is_closed_without_holding_sockets() {
    let yaml = "bridge:\n  host: 127.0.0.1\n  port: 0\n  max_connections: 1\n";
    let s = TestServer::start(yaml, echo).await;
    let mut held = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    held.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 12];
    held.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    // Silent clients: each refusal waits for a request head that never comes
    // (one second), so all 100 arrive while the first refusals still hold
    // their sockets, unless the machine stalls the test for that long.
    let started = std::time::Instant::now();
    let mut flood = Vec::new();
    for _ in 0..100 {
        flood.push(tokio::net::TcpStream::connect(s.addr).await.unwrap());
    }
    let flood_took = started.elapsed();
    let answers = futures_util::future::join_all(flood.into_iter().map(|mut sock| async move {
        let mut buf = Vec::new();
        let _ = sock.read_to_end(&mut buf).await;
        String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 503")
    }))
    .await;
    let with_503 = answers.iter().filter(|a| **a).count();
    assert!(with_503 >= 1, "the first refusals are answered");
    if flood_took < std::time::Duration::from_millis(500) {
        assert!(with_503 <= 64, "{with_503} refusals answered at once");
        assert!(answers.len() - with_503 >= 36, "the rest are closed at once");
    } else {
        // Refusals ended during the flood and freed their places: the bound
        // on refusals at once says nothing about the count then.
        eprintln!("the flood took {flood_took:?} (a stalled machine): the at-once bound is not checked");
    }
    drop(held);
}

#[tokio::test]
async fn openapi_lists_every_route() {
    let s = TestServer::start(LOCAL, echo).await;
    let (st, doc) = get(&format!("{}/openapi.json", s.url), None).await;
    assert_eq!(st, 200);
    assert_eq!(doc["openapi"].as_str().map(|v| v.starts_with("3.1")), Some(true));
    let paths = doc["paths"].as_object().expect("paths");
    for (method, path) in dreamos_bridge_server::api::ROUTES {
        let item = paths.get(*path).unwrap_or_else(|| panic!("{path} missing from openapi.json"));
        assert!(item.get(*method).is_some(), "{method} {path} missing from openapi.json");
        // And the router really serves it (not the 404 fallback).
        if *method == "get" && !path.contains('{') && *path != "/v1/connect" {
            let (st, v) = get(&format!("{}{path}", s.url), None).await;
            assert_ne!(
                v.get("message").and_then(|m| m.as_str()),
                Some("no such endpoint: see /openapi.json for the API"),
                "{path} {st}"
            );
        }
    }
    // The message-signature header is documented where it is read.
    let sig = &doc["components"]["parameters"]["Signature"];
    assert_eq!(sig["in"], "header");
    assert!(sig["name"].as_str().unwrap().eq_ignore_ascii_case(dreamos_bridge_server::signing::HEADER));
    for path in ["/v1/route", "/v1/publish"] {
        let params = doc["paths"][path]["post"]["parameters"].as_array().expect("parameters");
        assert!(params.iter().any(|p| p["$ref"] == "#/components/parameters/Signature"), "{path}");
    }
    assert_eq!(doc["components"]["schemas"]["MessageRequest"]["properties"]["id"]["format"], "uuid");
    // Nothing documented that the router lacks.
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            assert!(
                dreamos_bridge_server::api::ROUTES.contains(&(method.as_str(), path.as_str())),
                "openapi.json documents {method} {path} which ROUTES lacks"
            );
        }
    }
}

#[tokio::test]
async fn drain_answers_in_flight_then_stops() {
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let yaml = format!("{LOCAL}  shutdown_grace: 10s\n");
    let s = TestServer::start(&yaml, move |b| {
        let g = g.clone();
        b.register_route(
            "agents.wait",
            handler_fn(move |m: Message| {
                let g = g.clone();
                async move {
                    g.notified().await;
                    Ok(m.payload)
                }
            }),
        )
        .unwrap();
    })
    .await;
    let url = format!("{}/v1/route", s.url);
    let inflight =
        tokio::spawn(post(url, None, json!({"destination": "agents.wait", "payload": "done", "timeout": 20})));
    let bridge = s.bridge();
    wait_until(|| !bridge.routes().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = s.addr;
    let stopping = tokio::spawn(s.stop());
    // New connections are refused once the listener is gone.
    let mut refused = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the listener stayed open during the drain");
    gate.notify_one();
    let (st, _, v) = inflight.await.unwrap();
    assert_eq!((st, v), (200, json!({"payload": "done"})));
    stopping.await.unwrap().unwrap();
}

#[tokio::test]
async fn refuses_public_address_without_security() {
    let config = dreamos_bridge::BridgeConfig::from_yaml(LOCAL).unwrap();
    let e = dreamos_bridge_server::check_exposure("0.0.0.0:8000".parse().unwrap(), &config).unwrap_err();
    assert_eq!(e.code(), dreamos_bridge::ErrorCode::Config);
    assert!(e.message().starts_with("bridge.host:"), "{}", e.message());
    assert!(dreamos_bridge_server::check_exposure("127.0.0.1:8000".parse().unwrap(), &config).is_ok());
    assert!(dreamos_bridge_server::check_exposure("[::1]:8000".parse().unwrap(), &config).is_ok());
}

/// A real HTTP service on 127.0.0.1:0: `/fail` answers 500, `/missing` 404,
/// anything else echoes the request body with 200.
async fn upstream_service() -> std::net::SocketAddr {
    use axum::http::StatusCode;
    let app = axum::Router::new()
        .route("/fail", axum::routing::post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "database is down") }))
        .route("/missing", axum::routing::post(|| async { (StatusCode::NOT_FOUND, "no such item: 42") }))
        .fallback(|body: axum::body::Bytes| async move { ([("content-type", "application/json")], body) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// The codes the other tests do not reach over HTTP: UPSTREAM_ERROR from a
/// real service (with its status and body), CONFIG and INTERNAL from a handler.
#[tokio::test]
async fn upstream_config_and_internal_errors() {
    let up = upstream_service().await;
    let yaml = format!(
        "{LOCAL}services:\n  store:\n    url: http://{up}\n\
         routes:\n  - pattern: store.>\n    service: store\n    path: /{{rest}}\n"
    );
    let s = TestServer::start(&yaml, |b| {
        b.register_route(
            "agents.misconfigured",
            handler_fn(|_m: Message| async move { Err(BridgeError::config("tools.search.api_key", "is not set")) }),
        )
        .unwrap();
        b.register_route(
            "agents.buggy",
            handler_fn(|_m: Message| async move { Err(BridgeError::internal("invariant broken")) }),
        )
        .unwrap();
    })
    .await;
    let route = format!("{}/v1/route", s.url);
    // The service itself works through the bridge.
    let (st, _, v) = post(&route, None, json!({"destination": "store.ok", "payload": {"q": 1}})).await;
    assert_eq!((st, v), (200, json!({"payload": {"q": 1}})));
    // Its 500 and 404 become 502 UPSTREAM_ERROR carrying the upstream status and body.
    for (dest, status, text) in [("store.fail", 500, "database is down"), ("store.missing", 404, "no such item: 42")] {
        let (st, _, v) = post(&route, None, json!({"destination": dest, "payload": 1, "timeout": 5})).await;
        assert_error(st, &v, 502, "UPSTREAM_ERROR");
        assert_eq!(v["status"], status, "{v}");
        assert!(v["body"].as_str().is_some_and(|b| b.contains(text)), "{v}");
    }
    let (st, _, v) = post(&route, None, json!({"destination": "agents.misconfigured", "payload": 1})).await;
    assert_error(st, &v, 500, "CONFIG");
    assert!(v["message"].as_str().unwrap().contains("tools.search.api_key"), "{v}");
    let (st, _, v) = post(&route, None, json!({"destination": "agents.buggy", "payload": 1})).await;
    assert_error(st, &v, 500, "INTERNAL");
    s.stop().await.unwrap();
}
