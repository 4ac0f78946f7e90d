//! TLS from `bridge.tls` with a certificate the test makes (rcgen).

mod common;

use common::TestServer;
use dreamos_bridge::{Message, handler_fn};
use serde_json::json;

#[tokio::test]
async fn serves_https_with_configured_cert() {
    let dir = std::env::temp_dir().join(format!("dreamos-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let yaml = format!(
        "bridge:\n  host: 127.0.0.1\n  port: 0\n  tls:\n    cert: {}\n    key: {}\n",
        cert_path.display(),
        key_path.display()
    );
    let s = TestServer::start(&yaml, |b| {
        b.register_route("agents.echo", handler_fn(|m: Message| async move { Ok(m.payload) })).unwrap();
    })
    .await;
    assert!(s.url.starts_with("https://"));
    let ca = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap();
    let client = reqwest::Client::builder().add_root_certificate(ca).build().unwrap();
    let url = format!("https://localhost:{}/v1/route", s.addr.port());
    let r = client.post(&url).json(&json!({"destination": "agents.echo", "payload": "secure"})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap(), json!({"payload": "secure"}));
    // A client that does not trust the certificate fails the handshake.
    let untrusting = reqwest::Client::builder().build().unwrap();
    assert!(untrusting.get(format!("https://localhost:{}/health", s.addr.port())).send().await.is_err());
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = reqwest::Client::new().get(format!("http://127.0.0.1:{}/health", s.addr.port())).send().await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
    s.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_tls_files_are_config_errors() {
    let e = dreamos_bridge_server::tls::load("/nonexistent/cert.pem".as_ref(), "/nonexistent/key.pem".as_ref())
        .unwrap_err();
    assert_eq!(e.code(), dreamos_bridge::ErrorCode::Config);
    assert!(e.message().starts_with("bridge.tls.cert:"), "{}", e.message());
}
