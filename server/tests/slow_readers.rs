//! Clients that send requests and never read the answers: once the server's
//! writes to them make no progress for `write_timeout`, their connections
//! are closed and their `bridge.max_connections` slots go to other clients,
//! over plain TCP and over TLS.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestServer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

const LIMITED: &str = "bridge:\n  host: 127.0.0.1\n  port: 0\n  max_connections: 2\n";

/// A TCP connection to `s` that can take in 4 KiB before it must be read.
async fn small_window(s: &TestServer) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(s.addr).await.unwrap()
}

/// Pipeline far more answers than the connection's buffers hold, then read
/// only the start of the first one: the server has answered, so this
/// connection holds a slot.
async fn stop_reading<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut S) {
    let requests = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2000);
    // The server stops reading requests once its answers back up, so all
    // of them may not go out; enough do.
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.write_all(&requests)).await;
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut head))
        .await
        .expect("an answer in time")
        .expect("an answer");
    assert_eq!(&head, b"HTTP/1.1 200", "the slow reader was served, so it holds a slot");
}

/// `/health` answers 200 once a slot is free; the slow readers hold both
/// until the server gives up on them.
async fn wait_for_a_free_slot(client: &reqwest::Client, url: &str) {
    let mut last = String::new();
    for _ in 0..200 {
        match client.get(url).timeout(Duration::from_secs(5)).send().await {
            Ok(r) if r.status() == 200 => return,
            Ok(r) => last = r.status().to_string(),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no slot came free in 20 s (write_timeout is 500 ms); last answer: {last}");
}

/// The server closed `conn`: what was still buffered reads out, then the
/// end of the stream or a reset.
async fn assert_closed<S: AsyncRead + Unpin>(conn: &mut S) {
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    assert!(drained.is_ok(), "the slow reader's connection is still open");
}

#[tokio::test]
async fn clients_that_never_read_are_closed_and_free_their_slots() {
    let s = TestServer::start_with(LIMITED, |_| {}, |o| o.write_timeout = Duration::from_millis(500)).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = small_window(&s).await;
        stop_reading(&mut conn).await;
        held.push(conn);
    }
    wait_for_a_free_slot(&common::client(), &format!("{}/health", s.url)).await;
    for conn in &mut held {
        assert_closed(conn).await;
    }
    // The server is unharmed and serves as usual.
    let (status, body) = common::get(&format!("{}/health", s.url), None).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn tls_clients_that_never_read_are_closed_and_free_their_slots() {
    let dir = std::env::temp_dir().join(format!("dreamos-slow-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let yaml = format!("{LIMITED}  tls:\n    cert: {}\n    key: {}\n", cert_path.display(), key_path.display());
    let s = TestServer::start_with(&yaml, |_| {}, |o| o.write_timeout = Duration::from_millis(500)).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut held = Vec::new();
    for _ in 0..2 {
        let tcp = small_window(&s).await;
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut conn = connector.connect(name, tcp).await.expect("TLS handshake");
        stop_reading(&mut conn).await;
        held.push(conn);
    }
    let ca = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap();
    let client = reqwest::Client::builder().add_root_certificate(ca).build().unwrap();
    wait_for_a_free_slot(&client, &format!("https://localhost:{}/health", s.addr.port())).await;
    for conn in &mut held {
        assert_closed(conn).await;
    }
    s.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
