//! A `RemoteBridge` against a real server on 127.0.0.1: calls, every error
//! code coming back as itself, handlers served over the WebSocket session,
//! two clients sharing one server-side rate limit, token renewal, and the
//! session coming back after the server restarts.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::TestServer;
use dreamos_bridge::{BridgeError, CallOptions, Credentials, ErrorCode, Message, Payload, handler_fn};
use dreamos_bridge_client::{ClientOptions, RemoteBridge};
use serde_json::json;
use sha2::Digest;

const AGENT: &str = "dk_test_agent_key";
const OTHER_AGENT: &str = "dk_test_agent_key_2";
const ADMIN: &str = "dk_test_admin_key";
const SERVICE: &str = "dk_test_service_key";

fn sha(k: &str) -> String {
    hex::encode(sha2::Sha256::digest(k.as_bytes()))
}

fn config_with(token_expiry: u32) -> String {
    format!(
        "bridge:\n  host: 127.0.0.1\n  port: 0\n  retry_attempts: 0\n  rate_limit_mode: reject\n\
         security:\n  auth_type: token\n  token_expiry: {token_expiry}\n\
         \x20 signing_keys:\n    - id: k1\n      secret: test-signing-secret-0123456789abcdef0123\n\
         \x20 api_keys:\n\
         \x20   - {{principal: agent, sha256: {}, roles: [agent]}}\n\
         \x20   - {{principal: agent2, sha256: {}, roles: [agent]}}\n\
         \x20   - {{principal: ops, sha256: {}, roles: [admin]}}\n\
         \x20   - {{principal: svc, sha256: {}, roles: [service]}}\n\
         \x20 roles:\n\
         \x20   agent: {{route: [\"agents.>\", \"ext.>\", \"limited.>\"], publish: [\"agents.>\"], deny: [\"agents.admin\"]}}\n\
         \x20   service: {{handle: [\"ext.>\"]}}\n\
         \x20   admin: {{admin: [\">\"]}}\n\
         routes:\n  - pattern: limited.echo\n    rate_limit: 1/min\n    burst: 1\n",
        sha(AGENT),
        sha(OTHER_AGENT),
        sha(ADMIN),
        sha(SERVICE)
    )
}

fn config() -> String {
    config_with(600)
}

fn handlers(b: &dreamos_bridge::BridgeManager) {
    for p in ["agents.echo", "agents.admin", "limited.echo"] {
        b.register_route(p, handler_fn(|m: Message| async move { Ok(m.payload) })).unwrap();
    }
    b.register_route("agents.fail", handler_fn(|_m: Message| async move { Err(BridgeError::handler("boom")) }))
        .unwrap();
    b.register_route(
        "agents.slow",
        handler_fn(|m: Message| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(m.payload)
        }),
    )
    .unwrap();
}

async fn connect(s: &TestServer, key: &str) -> RemoteBridge {
    RemoteBridge::connect(&s.url, &Credentials::ApiKey(key.into()), ClientOptions::default()).await.unwrap()
}

fn msg(dest: &str, payload: serde_json::Value) -> Message {
    Message::new(dest, payload)
}

async fn err(r: impl Future<Output = dreamos_bridge::Result<Payload>>) -> BridgeError {
    match r.await {
        Ok(p) => panic!("expected an error, got {p:?}"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn route_publish_and_authenticate() {
    let s = TestServer::start(&config(), handlers).await;
    let remote = connect(&s, AGENT).await;
    assert_eq!(remote.token().unwrap().principal, "agent");
    let reply = remote
        .route(msg("agents.echo", json!({"x": [1, 2]})).with_header("h", "v"), CallOptions::default())
        .await
        .unwrap();
    assert_eq!(reply, Payload::Json(json!({"x": [1, 2]})));
    // Bytes travel as bytes.
    let bytes = Payload::Bytes(vec![0u8, 1, 2, 255].into());
    assert_eq!(remote.route(Message::new("agents.echo", bytes.clone()), Default::default()).await.unwrap(), bytes);
    let id = remote.publish(msg("agents.echo", json!(1)), Default::default()).await.unwrap();
    assert_eq!(id.get_version_num(), 7);
    let token = remote.authenticate(&Credentials::ApiKey(ADMIN.into())).await.unwrap();
    assert_eq!((token.principal.as_str(), token.roles.as_slice()), ("ops", &["admin".to_string()][..]));
    // The session's own token is unchanged by authenticate().
    assert_eq!(remote.token().unwrap().principal, "agent");
    let health = remote.health().await.unwrap();
    assert_eq!(health["status"], "up");
    // A call with another principal's token runs as that principal.
    let e =
        err(remote.route(msg("agents.echo", json!(1)), CallOptions { token: Some("garbage".into()), timeout: None }))
            .await;
    assert_eq!(e.code(), ErrorCode::Unauthenticated);
    remote.close();
    let e = err(remote.route(msg("agents.echo", json!(1)), Default::default())).await;
    assert_eq!(e.code(), ErrorCode::Shutdown);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn errors_come_back_with_their_codes() {
    let s = TestServer::start(&config(), handlers).await;
    let remote = connect(&s, AGENT).await;
    let route = |d: &str, timeout: Option<f64>| {
        remote.route(msg(d, json!(1)), CallOptions { token: None, timeout: timeout.map(Duration::from_secs_f64) })
    };
    assert_eq!(err(route("agents.nobody", None)).await.code(), ErrorCode::RouteNotFound);
    assert_eq!(err(route("agents.admin", None)).await.code(), ErrorCode::Forbidden);
    assert_eq!(err(route("other.thing", None)).await.code(), ErrorCode::Forbidden);
    assert_eq!(err(route("bad..subject", None)).await.code(), ErrorCode::InvalidMessage);
    let e = err(route("agents.fail", None)).await;
    assert_eq!(e.code(), ErrorCode::HandlerError);
    assert!(e.message().contains("boom"), "{e}");
    assert_eq!(err(route("agents.slow", Some(0.2))).await.code(), ErrorCode::Timeout);
    route("limited.echo", None).await.unwrap();
    let e = err(route("limited.echo", None)).await;
    assert_eq!(e.code(), ErrorCode::RateLimited);
    let wait = e.retry_after().expect("retry_after kept");
    assert!(wait > Duration::from_secs(1) && wait <= Duration::from_secs(60), "{wait:?}");
    // Metrics need the admin role.
    assert_eq!(remote.metrics().await.unwrap_err().code(), ErrorCode::Forbidden);
    // Bad credentials fail the connect.
    let bad = RemoteBridge::connect(&s.url, &Credentials::ApiKey("dk_wrong".into()), ClientOptions::default()).await;
    assert_eq!(bad.unwrap_err().code(), ErrorCode::Unauthenticated);
    let addr = s.addr;
    s.stop().await.unwrap();
    // Nobody listens any more: SERVICE_UNAVAILABLE, with the URL in the message.
    let e = err(route("agents.echo", None)).await;
    assert_eq!(e.code(), ErrorCode::ServiceUnavailable, "{e}");
    assert!(e.message().contains(&addr.to_string()), "{e}");
    let e =
        RemoteBridge::connect(&format!("http://{addr}"), &Credentials::ApiKey(AGENT.into()), ClientOptions::default())
            .await
            .unwrap_err();
    assert_eq!(e.code(), ErrorCode::ServiceUnavailable, "{e}");
    assert_eq!(
        RemoteBridge::connect("ftp://x", &Credentials::ApiKey(AGENT.into()), ClientOptions::default())
            .await
            .unwrap_err()
            .code(),
        ErrorCode::Config
    );
}

#[tokio::test]
async fn a_registered_handler_serves_other_clients() {
    let s = TestServer::start(&config(), handlers).await;
    let service = connect(&s, SERVICE).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    service
        .register_route(
            "ext.tools.>",
            handler_fn(move |m: Message| {
                c.fetch_add(1, Ordering::SeqCst);
                async move {
                    match m.destination.as_str() {
                        "ext.tools.fail" => Err(BridgeError::handler("tool broke")),
                        _ => Ok(Payload::Json(
                            json!({"dest": m.destination, "echo": m.payload.to_json(), "from": m.source.as_deref()}),
                        )),
                    }
                }
            }),
        )
        .await
        .unwrap();
    assert_eq!(service.routes(), vec!["ext.tools.>".to_string()]);
    // A second pattern on the same session.
    service
        .register_route("ext.other", handler_fn(|_m: Message| async move { Ok(Payload::Json(json!("other"))) }))
        .await
        .unwrap();
    assert_eq!(service.session_connections(), 1);
    // The service may not serve what its role does not grant.
    let e = service.register_route("agents.mine", handler_fn(|m: Message| async move { Ok(m.payload) })).await;
    assert_eq!(e.unwrap_err().code(), ErrorCode::Forbidden);
    let agent = connect(&s, AGENT).await;
    let reply = agent.route(msg("ext.tools.sum", json!([1, 2])), Default::default()).await.unwrap();
    assert_eq!(reply, Payload::Json(json!({"dest": "ext.tools.sum", "echo": [1, 2], "from": "agent"})));
    let bytes = Payload::Bytes(vec![9u8, 8, 7].into());
    let reply = agent.route(Message::new("ext.tools.bytes", bytes.clone()), Default::default()).await.unwrap();
    assert_eq!(reply.as_json().unwrap()["echo"], bytes.to_json());
    assert_eq!(
        agent.route(msg("ext.other", json!(0)), Default::default()).await.unwrap(),
        Payload::Json(json!("other"))
    );
    let e = err(agent.route(msg("ext.tools.fail", json!(0)), Default::default())).await;
    assert_eq!(e.code(), ErrorCode::HandlerError);
    assert!(e.message().contains("tool broke"), "{e}");
    // Many calls at once are answered concurrently over the one session.
    let mut all = Vec::new();
    for i in 0..20 {
        let a = agent.clone();
        all.push(tokio::spawn(async move { a.route(msg("ext.tools.n", json!(i)), Default::default()).await }));
    }
    for (i, t) in all.into_iter().enumerate() {
        assert_eq!(t.await.unwrap().unwrap().as_json().unwrap()["echo"], json!(i));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 23);
    // Unregistering takes the route away on the server.
    assert!(service.unregister_route("ext.tools.>"));
    assert!(!service.unregister_route("ext.tools.>"));
    let mut code = None;
    for _ in 0..200 {
        match agent.route(msg("ext.tools.sum", json!(1)), Default::default()).await {
            Err(e) if e.code() == ErrorCode::RouteNotFound => {
                code = Some(e.code());
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    assert_eq!(code, Some(ErrorCode::RouteNotFound));
    service.close();
    s.stop().await.unwrap();
}

/// The point of the feature: two agent processes (here two clients) are
/// limited by the one bridge they share, not each by its own.
#[tokio::test]
async fn two_clients_share_one_rate_limit() {
    let s = TestServer::start(&config(), handlers).await;
    let a = connect(&s, AGENT).await;
    let b = connect(&s, OTHER_AGENT).await;
    a.route(msg("limited.echo", json!("a")), Default::default()).await.unwrap();
    let e = err(b.route(msg("limited.echo", json!("b")), Default::default())).await;
    assert_eq!(e.code(), ErrorCode::RateLimited);
    assert!(e.retry_after().is_some());
    // Both principals' calls are in the server's one set of metrics.
    let admin = connect(&s, ADMIN).await;
    let m = admin.metrics().await.unwrap();
    let limited = &m["routes"]["limited.echo"];
    assert_eq!((limited["ok"].as_u64(), limited["rate_limited"].as_u64()), (Some(1), Some(1)), "{m}");
    assert!(m["principals"]["agent"].is_object() && m["principals"]["agent2"].is_object(), "{m}");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn the_session_token_is_renewed_before_it_expires() {
    let s = TestServer::start(&config_with(2), handlers).await;
    let remote = connect(&s, AGENT).await;
    let first = remote.token().unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    remote.route(msg("agents.echo", json!(1)), Default::default()).await.unwrap();
    let second = remote.token().unwrap();
    assert_ne!(first.value, second.value);
    assert!(second.expires_at >= first.expires_at);
    s.stop().await.unwrap();
}

/// The server restarts (same address) with a new random token key, so
/// every token the clients hold is refused: HTTP calls renew theirs on the
/// 401 and retry, and the WebSocket session reconnects and subscribes again.
#[tokio::test]
async fn the_session_comes_back_after_the_server_restarts() {
    let random_key =
        config().replace("  signing_keys:\n    - id: k1\n      secret: test-signing-secret-0123456789abcdef0123\n", "");
    assert!(!random_key.contains("signing_keys"));
    let opts = ClientOptions { reconnect_max: Duration::from_millis(300), ..ClientOptions::default() };
    let s = TestServer::start(&random_key, handlers).await;
    let addr = s.addr;
    let service = RemoteBridge::connect(&s.url, &Credentials::ApiKey(SERVICE.into()), opts).await.unwrap();
    service.register_route("ext.echo.>", handler_fn(|m: Message| async move { Ok(m.payload) })).await.unwrap();
    let agent = connect(&s, AGENT).await;
    assert_eq!(agent.route(msg("ext.echo.x", json!(1)), Default::default()).await.unwrap(), Payload::Json(json!(1)));
    let before_restart = agent.token().unwrap().value;
    s.stop().await.unwrap();
    assert_eq!(
        err(agent.route(msg("ext.echo.x", json!(2)), Default::default())).await.code(),
        ErrorCode::ServiceUnavailable
    );
    // Registering while the server is away fails at once, clearly.
    let e = service.register_route("ext.late", handler_fn(|m: Message| async move { Ok(m.payload) })).await;
    assert_eq!(e.unwrap_err().code(), ErrorCode::ServiceUnavailable);

    let s = TestServer::start_at(&random_key, handlers, addr).await;
    let mut reply = None;
    for _ in 0..300 {
        match agent.route(msg("ext.echo.x", json!(3)), Default::default()).await {
            Ok(p) => {
                reply = Some(p);
                break;
            }
            Err(e) => {
                assert!(matches!(e.code(), ErrorCode::RouteNotFound | ErrorCode::ServiceUnavailable), "{e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    assert_eq!(reply, Some(Payload::Json(json!(3))));
    assert!(service.session_connections() >= 2);
    // The agent's old token was refused and replaced without the caller seeing it.
    assert_ne!(agent.token().unwrap().value, before_restart);
    let agent_token = agent.token().unwrap();
    assert_eq!(agent.route(msg("agents.echo", json!(4)), Default::default()).await.unwrap(), Payload::Json(json!(4)));
    assert_eq!(agent.token().unwrap().value, agent_token.value);
    assert_eq!(service.routes(), vec!["ext.echo.>".to_string()]);
    service.close();
    s.stop().await.unwrap();
}

/// A server with a certificate the test makes (rcgen), written to a temp dir.
struct TestCert {
    dir: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

impl TestCert {
    fn new(tag: &str) -> TestCert {
        let dir = std::env::temp_dir().join(format!("dreamos-client-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
        TestCert { dir, cert, key }
    }

    fn yaml(&self) -> String {
        config().replacen(
            "bridge:\n",
            &format!("bridge:\n  tls:\n    cert: {}\n    key: {}\n", self.cert.display(), self.key.display()),
            1,
        )
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn over_tls_both_calls_and_served_routes_work() {
    let cert = TestCert::new("ok");
    let s = TestServer::start(&cert.yaml(), handlers).await;
    // The certificate names `localhost`, so connect by that name.
    let url = format!("https://localhost:{}", s.addr.port());
    let opts = ClientOptions { ca_file: Some(cert.cert.clone()), ..ClientOptions::default() };
    let service = RemoteBridge::connect(&url, &Credentials::ApiKey(SERVICE.into()), opts.clone()).await.unwrap();
    // Serving goes over the wss:// session ...
    service
        .register_route(
            "ext.tls",
            handler_fn(
                |m: Message| async move { Ok(Payload::Json(json!({"over": "tls", "got": m.payload.to_json()}))) },
            ),
        )
        .await
        .unwrap();
    assert_eq!(service.routes(), vec!["ext.tls".to_string()]);
    // ... and another client's call over https reaches it.
    let agent = RemoteBridge::connect(&url, &Credentials::ApiKey(AGENT.into()), opts).await.unwrap();
    let reply = agent.route(msg("ext.tls", json!(7)), CallOptions::default()).await.unwrap();
    assert_eq!(reply, Payload::Json(json!({"over": "tls", "got": 7})));
    service.close();
    agent.close();
    s.stop().await.unwrap();
}

#[tokio::test]
async fn over_tls_an_untrusted_certificate_or_a_bad_ca_file_is_refused_clearly() {
    let cert = TestCert::new("refused");
    let s = TestServer::start(&cert.yaml(), handlers).await;
    let url = format!("https://localhost:{}", s.addr.port());
    let creds = Credentials::ApiKey(SERVICE.into());
    // Without the CA the handshake fails: the server cannot be reached safely.
    let e = RemoteBridge::connect(&url, &creds, ClientOptions::default()).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::ServiceUnavailable, "{e}");
    // A missing or non-PEM CA file is a CONFIG error naming the option, before any connection.
    let missing = ClientOptions { ca_file: Some(cert.dir.join("nope.pem")), ..ClientOptions::default() };
    let e = RemoteBridge::connect(&url, &creds, missing).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Config, "{e}");
    assert!(e.message().contains("ca_file") && e.message().contains("nope.pem"), "{e}");
    let not_pem = ClientOptions { ca_file: Some(cert.key.clone()), ..ClientOptions::default() };
    let e = RemoteBridge::connect(&url, &creds, not_pem).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Config, "{e}");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn calls_beyond_max_connections_wait_for_a_free_connection_within_their_deadline() {
    let s = TestServer::start(&config(), handlers).await;
    let opts = ClientOptions { max_connections: 2, ..ClientOptions::default() };
    let r = RemoteBridge::connect(&s.url, &Credentials::ApiKey(AGENT.into()), opts).await.unwrap();
    // Many more calls than connections: each one waits its turn and is answered.
    let calls = (0..60).map(|i| {
        let r = r.clone();
        async move { r.route(msg("agents.echo", json!(i)), CallOptions::default()).await }
    });
    let replies = futures_util::future::join_all(calls).await;
    for (i, reply) in replies.into_iter().enumerate() {
        assert_eq!(reply.unwrap(), Payload::from(json!(i)));
    }
    // Both connections busy (slow calls): a call with a short deadline
    // times out waiting for one, with a message that says so.
    let slow = CallOptions { timeout: Some(Duration::from_secs(20)), ..CallOptions::default() };
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let (r, slow) = (r.clone(), slow.clone());
            tokio::spawn(async move { r.route(msg("agents.slow", json!(0)), slow).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let quick = CallOptions { timeout: Some(Duration::from_millis(200)), ..CallOptions::default() };
    let e = err(r.route(msg("agents.echo", json!(1)), quick)).await;
    assert_eq!(e.code(), ErrorCode::Timeout, "{e}");
    assert!(e.to_string().contains("max_connections"), "{e}");
    for b in busy {
        b.abort();
    }
    // A zero limit is a configuration error.
    let zero = ClientOptions { max_connections: 0, ..ClientOptions::default() };
    let Err(e) = RemoteBridge::connect(&s.url, &Credentials::ApiKey(AGENT.into()), zero).await else {
        panic!("max_connections 0 was accepted");
    };
    assert_eq!(e.code(), ErrorCode::Config, "{e}");
    // So is one beyond what a semaphore can count (a panic before the check).
    let huge = ClientOptions { max_connections: usize::MAX, ..ClientOptions::default() };
    let Err(e) = RemoteBridge::connect(&s.url, &Credentials::ApiKey(AGENT.into()), huge).await else {
        panic!("max_connections usize::MAX was accepted");
    };
    assert_eq!(e.code(), ErrorCode::Config, "{e}");
}

#[tokio::test]
async fn connect_timeout_bounds_a_server_that_accepts_and_never_answers() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    // Accept, read nothing, answer nothing, keep the connections open.
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let opts = ClientOptions { connect_timeout: Duration::from_millis(300), ..ClientOptions::default() };
    for connecting in [
        RemoteBridge::connect(&url, &Credentials::ApiKey(AGENT.into()), opts.clone()).await,
        RemoteBridge::connect_anonymous(&url, opts.clone()).await,
    ] {
        let e = connecting.expect_err("no server answered");
        assert_eq!(e.code(), ErrorCode::Timeout, "{e:?}");
        assert!(e.message().contains("did not answer within 0.3s"), "{e:?}");
    }
    silent.abort();
}
