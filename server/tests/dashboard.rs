//! The dashboard in a real browser: headless Chromium driven over WebDriver
//! (chromedriver + plain HTTP calls). Signs in with an admin API key, sees
//! the numbers change after traffic, replays a dead letter, and saves a
//! screenshot to `target/dashboard.png`.
//!
//! Needs Debian's `chromium` and `chromium-driver`; `make test-server`
//! installs them and runs this test with `--ignored`.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{TestServer, post};
use dreamos_bridge::{BridgeError, Message, handler_fn};
use serde_json::{Value, json};
use sha2::Digest;

const ADMIN: &str = "dk_dash_admin";
const AGENT: &str = "dk_dash_agent";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn sha(k: &str) -> String {
    hex::encode(sha2::Sha256::digest(k.as_bytes()))
}

struct Driver {
    child: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: std::path::PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._profile);
    }
}

impl Driver {
    async fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver) must be installed: make test-server installs it");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        for _ in 0..200 {
            if http.get(format!("{base}/status")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = std::env::temp_dir().join(format!("dreamos-chromium-{}", std::process::id()));
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                     "--window-size=1400,1000", format!("--user-data-dir={}", profile.display())]
        }}}});
        let mut d = Driver { child, base, session: String::new(), http, _profile: profile };
        let v = d.call(reqwest::Method::POST, "/session", caps).await;
        d.session = v["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {v}")).to_string();
        d
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = if self.session.is_empty() || path == "/session" {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let mut rb = self.http.request(method.clone(), url);
        if method != reqwest::Method::GET && method != reqwest::Method::DELETE {
            rb = rb.json(&body);
        }
        let v: Value = rb.send().await.expect("webdriver").json().await.expect("webdriver json");
        v["value"].clone()
    }

    async fn find(&self, css: &str) -> String {
        let v = self.call(reqwest::Method::POST, "/element", json!({"using": "css selector", "value": css})).await;
        v[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {v}")).to_string()
    }

    async fn js(&self, script: &str) -> Value {
        self.call(reqwest::Method::POST, "/execute/sync", json!({"script": script, "args": []})).await
    }

    /// Wait for a DOM condition (a script returning true), not for time.
    async fn wait_for(&self, script: &str, what: &str) {
        for _ in 0..600 {
            if self.js(script).await == json!(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let text = self.js("return document.body.innerText").await;
        panic!("dashboard never showed {what}; page text:\n{text}");
    }
}

#[tokio::test]
#[ignore = "needs chromium and chromium-driver; run by `make test-server`"]
async fn dashboard_signs_in_and_shows_live_numbers() {
    let yaml = format!(
        "bridge:\n  host: 127.0.0.1\n  port: 0\n  retry_attempts: 0\n\
         security:\n  signing_keys:\n    - id: k1\n      secret: dashboard-test-secret-0123456789abcdef\n\
         \x20 api_keys:\n    - {{principal: ops, sha256: {}, roles: [admin]}}\n    - {{principal: agent, sha256: {}, roles: [agent]}}\n\
         \x20 roles:\n    admin: {{admin: [\">\"]}}\n    agent: {{route: [\"agents.>\"], publish: [\"agents.>\"]}}\n",
        sha(ADMIN),
        sha(AGENT)
    );
    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    let s = TestServer::start(&yaml, move |b| {
        b.register_route("agents.echo", handler_fn(|m: Message| async move { Ok(m.payload) })).unwrap();
        let h = h.clone();
        b.register_route(
            "agents.flaky",
            handler_fn(move |m: Message| {
                let ok = h.load(Ordering::SeqCst);
                async move { if ok { Ok(m.payload) } else { Err(BridgeError::handler("flaky is down")) } }
            }),
        )
        .unwrap();
    })
    .await;

    let d = Driver::start().await;
    d.call(reqwest::Method::POST, "/url", json!({"url": format!("{}/dashboard", s.url)})).await;
    let key = d.find("#api-key").await;
    d.call(reqwest::Method::POST, &format!("/element/{key}/value"), json!({"text": ADMIN})).await;
    let button = d.find("#login-button").await;
    d.call(reqwest::Method::POST, &format!("/element/{button}/click"), json!({})).await;
    d.wait_for("return Number(document.body.dataset.polls || 0) >= 1", "a first poll after sign-in").await;
    d.wait_for("return document.getElementById('bridge-health').textContent.includes('up')", "bridge health").await;
    let before = d.js("return document.getElementById('board').innerText").await;

    // Traffic: the per-route table must show the route and the numbers must change.
    let (st, _, v) = post(format!("{}/v1/auth/token", s.url), None, json!({"api_key": AGENT})).await;
    assert_eq!(st, 200, "{v}");
    let token = v["token"].as_str().unwrap().to_string();
    for i in 0..25 {
        let (st, _, _) =
            post(format!("{}/v1/route", s.url), Some(&token), json!({"destination": "agents.echo", "payload": i}))
                .await;
        assert_eq!(st, 200);
    }
    // Wait for the per-route row to count the traffic (a DOM condition, not a sleep).
    let accepted = "const row = document.querySelector(\"table[data-section='routes'] tr[data-name='agents.echo']\");\
        if (!row) return false;\
        const heads = [...row.parentNode.querySelector('tr').children].map((th) => th.textContent);\
        const i = heads.indexOf('accepted');\
        return i >= 0 && Number(row.children[i].textContent.replace(/,/g, '')) >= 25;";
    d.wait_for(accepted, "25 messages accepted on agents.echo").await;
    let after = d.js("return document.getElementById('board').innerText").await;
    assert_ne!(before, after, "numbers did not change after traffic");

    // A failed publish shows up as a dead letter; its Replay button delivers it.
    let (st, _, _) =
        post(format!("{}/v1/publish", s.url), Some(&token), json!({"destination": "agents.flaky", "payload": 1})).await;
    assert_eq!(st, 202);
    d.wait_for("return document.getElementById('dl-count').textContent === '1'", "one dead letter").await;
    healthy.store(true, Ordering::SeqCst);
    let target_dir = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let shot = d.call(reqwest::Method::GET, "/screenshot", json!({})).await;
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD.decode(shot.as_str().expect("screenshot")).unwrap();
    std::fs::create_dir_all(&target_dir).unwrap();
    std::fs::write(target_dir.join("dashboard.png"), &png).unwrap();
    let replay = d.find("button.replay").await;
    d.call(reqwest::Method::POST, &format!("/element/{replay}/click"), json!({})).await;
    d.wait_for("return document.getElementById('dl-count').textContent === '0'", "the dead letter replayed").await;
    let _ = d.call(reqwest::Method::DELETE, "", json!({})).await;
}
