//! A connected service that never reads: when its session ends, the server
//! must let go of the socket even though the peer keeps TCP open and the
//! unsent frames can never be written. Alone in its test binary, because it
//! counts this process's sockets.

mod common;

use std::time::Duration;

use common::TestServer;
use dreamos_bridge::{CallOptions, Message, Payload};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Ws;

fn sockets() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|p| p.to_string_lossy().starts_with("socket:")))
        .count()
}

async fn next_json(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await.expect("frame in time") {
            Some(Ok(Ws::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_socket_of_a_service_that_never_reads_is_released() {
    let yaml = "bridge:\n  host: 127.0.0.1\n  port: 0\nlimits:\n  max_payload_bytes: 4000000\n";
    let s = TestServer::start_with(yaml, |_| {}, |o| o.heartbeat_interval = Duration::from_millis(300)).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(s.ws_url()).await.unwrap();
    ws.send(Ws::Text(json!({"type": "auth"}).to_string().into())).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "ready");
    ws.send(Ws::Text(json!({"type": "subscribe", "pattern": "ext.big"}).to_string().into())).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    // Both ends of the session's TCP connection live in this process.
    let with_session = sockets();
    // More than the socket buffers hold, to a peer that no longer reads.
    let big = Payload::Json(json!("x".repeat(3_000_000)));
    for _ in 0..10 {
        let b = s.bridge();
        let big = big.clone();
        tokio::spawn(async move {
            let _ = b
                .route(Message::new("ext.big", big), CallOptions { token: None, timeout: Some(Duration::from_secs(2)) })
                .await;
        });
    }
    // The heartbeat (or the write timeout) ends the session...
    let mut gone = false;
    for _ in 0..500 {
        if !s.bridge().routes().contains(&"ext.big".to_string()) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "the session did not end");
    // ...and the server's end of the socket is closed, while the peer's is still open.
    let mut now = sockets();
    for _ in 0..1000 {
        if now < with_session {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        now = sockets();
    }
    assert_eq!(now, with_session - 1, "the server still holds the socket of a session that ended");
    drop(ws);
}
