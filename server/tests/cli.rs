//! The `dreamos-bridge` binary: exit codes, hash-key, token inspect, and the
//! serve lifecycle under real signals (SIGTERM drain, SIGHUP reload).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_dreamos-bridge");

fn tmp(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("dreamos-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn check_config_exit_codes() {
    let good = tmp("good.yaml", "bridge:\n  host: 127.0.0.1\n  port: 8123\n");
    let out = Command::new(BIN).arg("check-config").arg(&good).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));

    let bad = tmp("bad.yaml", "bridge:\n  max_connections: many\n");
    let out = Command::new(BIN).arg("check-config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bridge.max_connections"), "{err}");

    let public = tmp("public.yaml", "bridge:\n  host: 0.0.0.0\n");
    let out = Command::new(BIN).arg("check-config").arg(&public).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bridge.host"));

    let out = Command::new(BIN).args(["check-config", "/nonexistent.yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/bridge.yaml");
    let out = Command::new(BIN)
        .args(["check-config", example])
        .env("DREAMOS_TOKEN_KEY", "0123456789abcdef0123456789abcdef0123456789abcdef")
        .env("WEATHER_TOKEN", "test-weather-token")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn hash_key_from_arg_and_stdin() {
    // SHA-256 of "abc".
    let want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let out = Command::new(BIN).args(["hash-key", "abc"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want);
    let mut child = Command::new(BIN).arg("hash-key").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"abc\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want);
    let out = Command::new(BIN).args(["hash-key", ""]).output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn token_inspect_decodes_without_verifying() {
    use base64::Engine;
    let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let token = format!("{}.{}.sig", b64(json!({"alg": "HS256", "kid": "k1"})), b64(json!({"sub": "planner"})));
    let out = Command::new(BIN).args(["token", "inspect", &token]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verified"], false);
    assert_eq!(v["claims"]["sub"], "planner");
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT VERIFIED"));
    let out = Command::new(BIN).args(["token", "inspect", "garbage"]).output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn every_command_has_an_example_in_help() {
    for cmd in [
        &["serve"][..],
        &["check-config"],
        &["hash-key"],
        &["token", "inspect"],
        &["token", "issue"],
        &["route"],
        &["dead-letters", "list"],
        &["dead-letters", "replay"],
        &["bench"],
        &["echo-service"],
    ] {
        let out = Command::new(BIN).args(cmd).arg("--help").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Example:"), "{cmd:?} --help has no example:\n{text}");
    }
}

struct Served {
    child: Child,
    url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_serve(config: &std::path::Path) -> Served {
    spawn_serve_as(config, "http")
}

/// `serve` on `config`, expecting it to listen with `scheme` on 127.0.0.1.
fn spawn_serve_as(config: &std::path::Path, scheme: &str) -> Served {
    let config = config.to_str().unwrap();
    let (child, line) = spawn_with(&["serve", "--config", config, "--echo", "cli.echo", "--log-format", "json"]);
    let url = line.trim().rsplit(' ').next().unwrap().to_string();
    assert!(url.starts_with(&format!("{scheme}://127.0.0.1:")), "{line}");
    Served { child, url }
}

/// The binary with `args`, and the first line it printed.
fn spawn_with(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(BIN).args(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    (child, line)
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").args([&format!("-{sig}"), &child.id().to_string()]).status().unwrap();
    assert!(ok.success());
}

async fn route(url: &str, payload: serde_json::Value) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/route"))
        .json(&json!({"destination": "cli.echo", "payload": payload}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// The handlers are in place once "listening" is printed: a signal sent
/// at once drains (exit 0) instead of killing the process.
#[test]
fn a_signal_right_after_the_listening_line_drains_cleanly() {
    let cfg = tmp("early-signal.yaml", "bridge:\n  host: 127.0.0.1\n  port: 0\n");
    for (name, sig) in [("TERM", libc::SIGTERM), ("INT", libc::SIGINT)].repeat(5) {
        let mut served = spawn_serve(&cfg);
        // Directly (not through `kill(1)`, whose start-up gives the server time).
        // SAFETY: kill(2) on our own child's pid; no memory involved.
        let sent = unsafe { libc::kill(served.child.id() as libc::pid_t, sig) };
        assert_eq!(sent, 0);
        let status = served.child.wait().unwrap();
        assert!(status.success(), "SIG{name} right after start: {status}");
    }
}

#[tokio::test]
async fn sighup_with_a_bad_file_keeps_serving_and_a_good_one_reloads() {
    let cfg = tmp("reload.yaml", "bridge:\n  host: 127.0.0.1\n  port: 0\nlimits:\n  max_payload_bytes: 100000\n");
    let mut s = spawn_serve(&cfg);
    let big = json!("x".repeat(2000));
    assert_eq!(route(&s.url, big.clone()).await.0, 200);
    std::fs::write(&cfg, "bridge:\n  max_connections: many\n").unwrap();
    signal(&s.child, "HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(route(&s.url, big.clone()).await.0, 200, "a bad file must not replace the running config");
    // A valid file with a smaller payload limit takes effect.
    std::fs::write(&cfg, "bridge:\n  host: 127.0.0.1\n  port: 0\nlimits:\n  max_payload_bytes: 1000\n").unwrap();
    signal(&s.child, "HUP");
    let mut reloaded = false;
    for _ in 0..100 {
        let (st, v) = route(&s.url, big.clone()).await;
        if st == 400 && v["code"] == "INVALID_MESSAGE" {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reloaded, "the valid config was not applied");
    assert_eq!(route(&s.url, json!("small")).await.0, 200);
    signal(&s.child, "TERM");
    assert!(s.child.wait().unwrap().success());
}

/// Without `--config` there is nothing to reload, but SIGHUP must not kill
/// the server (its default action) and drop what is in flight.
#[tokio::test]
async fn sighup_without_a_config_file_keeps_serving() {
    // The embedded defaults listen on localhost:8000.
    let (mut child, line) = spawn_with(&["serve", "--echo", "cli.echo"]);
    let Some(url) = line.trim().strip_prefix("dreamos-bridge listening on ").map(str::to_string) else {
        let _ = child.kill();
        let _ = child.wait();
        eprintln!("skipped: the embedded defaults' port 8000 is taken on this machine ({line:?})");
        return;
    };
    let s = Served { child, url };
    signal(&s.child, "HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(route(&s.url, json!("still here")).await.0, 200, "SIGHUP killed the server");
    let mut s = s;
    signal(&s.child, "TERM");
    assert!(s.child.wait().unwrap().success());
}

#[tokio::test]
async fn sigterm_drains_a_request_in_flight() {
    // A connected service holds the request; SIGTERM arrives; the service answers within the grace period.
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Ws;
    let cfg = tmp("drain.yaml", "bridge:\n  host: 127.0.0.1\n  port: 0\n  shutdown_grace: 10s\n");
    let mut s = spawn_serve(&cfg);
    let ws_url = format!("{}/v1/connect", s.url.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    let next = async |ws: &mut tokio_tungstenite::WebSocketStream<_>| loop {
        if let Some(Ok(Ws::Text(t))) = ws.next().await {
            return serde_json::from_str::<serde_json::Value>(t.as_str()).unwrap();
        }
    };
    ws.send(Ws::Text(json!({"type": "auth", "credentials": {}}).to_string().into())).await.unwrap();
    assert_eq!(next(&mut ws).await["type"], "ready");
    ws.send(Ws::Text(json!({"type": "subscribe", "pattern": "slow.work"}).to_string().into())).await.unwrap();
    assert_eq!(next(&mut ws).await["type"], "subscribed");
    let url = s.url.clone();
    let call = tokio::spawn(async move {
        let r = reqwest::Client::new()
            .post(format!("{url}/v1/route"))
            .json(&json!({"destination": "slow.work", "payload": 1, "timeout": 20}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
    });
    let m = next(&mut ws).await;
    assert_eq!(m["type"], "message");
    signal(&s.child, "TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    ws.send(Ws::Text(json!({"type": "reply", "id": m["id"], "payload": "finished"}).to_string().into())).await.unwrap();
    let (st, v) = call.await.unwrap();
    assert_eq!((st, v), (200, json!({"payload": "finished"})));
    assert!(s.child.wait().unwrap().success());
}

#[test]
fn serve_refuses_public_address_without_security() {
    let cfg = tmp("public-serve.yaml", "bridge:\n  host: 0.0.0.0\n  port: 0\n");
    let out = Command::new(BIN).args(["serve", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to listen"));
}

const ISSUE_KEY: &str = "issue-test-signing-secret-0123456789abcdef";

fn secured_config(name: &str, secret: &str) -> std::path::PathBuf {
    tmp(
        name,
        &format!(
            "bridge:\n  host: 127.0.0.1\n  port: 0\nsecurity:\n  auth_type: token\n  token_expiry: 600\n\
             \x20 signing_keys:\n    - id: k1\n      secret: {secret}\n\
             \x20 roles:\n    agent:\n      route: [\"cli.*\"]\n    reader:\n      route: [\"other.*\"]\n"
        ),
    )
}

fn issue(config: &std::path::Path, extra: &[&str]) -> std::process::Output {
    Command::new(BIN).args(["token", "issue", "--config"]).arg(config).args(extra).output().unwrap()
}

async fn route_with(url: &str, token: &str) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/route"))
        .bearer_auth(token)
        .json(&json!({"destination": "cli.echo", "payload": "hi"}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn token_issue_is_accepted_by_a_server_with_the_same_config() {
    let cfg = secured_config("issue.yaml", ISSUE_KEY);
    let out = issue(&cfg, &["--principal", "nightly", "--role", "agent", "--ttl", "15m"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stdout.contains(ISSUE_KEY) && !stderr.contains(ISSUE_KEY), "the signing secret was printed");
    let agent = stdout.trim().to_string();
    assert_eq!(agent.split('.').count(), 3, "{agent}");
    assert!(stderr.contains("nightly"), "{stderr}");
    let reader = issue(&cfg, &["--principal", "nightly", "--role", "reader"]);
    let reader = String::from_utf8_lossy(&reader.stdout).trim().to_string();
    let stranger_cfg = secured_config("issue-other.yaml", "another-signing-secret-fedcba9876543210fedcba");
    let stranger = issue(&stranger_cfg, &["--principal", "nightly", "--role", "agent"]);
    let stranger = String::from_utf8_lossy(&stranger.stdout).trim().to_string();

    let mut s = spawn_serve(&cfg);
    assert_eq!(route_with(&s.url, &agent).await, (200, json!({"payload": "hi"})));
    let (st, v) = route_with(&s.url, &reader).await;
    assert_eq!((st, v["code"].as_str()), (403, Some("FORBIDDEN")), "{v}");
    let (st, v) = route_with(&s.url, &stranger).await;
    assert_eq!((st, v["code"].as_str()), (401, Some("UNAUTHENTICATED")), "{v}");
    signal(&s.child, "TERM");
    assert!(s.child.wait().unwrap().success());

    // Refusals: an undefined role, a bad lifetime, a config without signing keys.
    let out = issue(&cfg, &["--principal", "p", "--role", "root"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("security.roles"));
    let out = issue(&cfg, &["--principal", "p", "--ttl", "soon"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ttl"));
    let keyless = tmp("issue-keyless.yaml", "security:\n  auth_type: token\n");
    let out = issue(&keyless, &["--principal", "p"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("signing_keys"));
    assert!(out.stdout.is_empty());
}

#[test]
fn route_command_over_tls_trusts_a_ca_file() {
    let certs = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/tls");
    let config = tmp(
        "tls.yaml",
        &format!(
            "bridge:\n  host: 127.0.0.1\n  port: 0\n  tls: {{cert: {certs}/localhost.cert.pem, key: {certs}/localhost.key.pem}}\n"
        ),
    );
    let served = spawn_serve_as(&config, "https");
    let route = |extra: &[&str]| {
        Command::new(BIN)
            .args(["route", "cli.echo", "\"over tls\"", "--url", &served.url])
            .args(extra)
            .output()
            .unwrap()
    };
    // The test certificate is self-signed: without its CA the command fails ...
    let out = route(&[]);
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    // ... with it, the reply comes back.
    let out = route(&["--ca-file", &format!("{certs}/localhost.cert.pem")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("over tls"), "{}", String::from_utf8_lossy(&out.stdout));
    // A CA file that is not there is reported by name.
    let out = route(&["--ca-file", "/nonexistent/ca.pem"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ca-file /nonexistent/ca.pem"));
}
