//! Shared test helpers: a real server on 127.0.0.1:0 in this process.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use dreamos_bridge::{BridgeConfig, BridgeManager};
use dreamos_bridge_server::{Server, ServerOptions};
use tokio::sync::oneshot;

pub struct TestServer {
    pub addr: SocketAddr,
    pub url: String,
    pub server: Arc<Server>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<dreamos_bridge::Result<()>>>,
}

impl TestServer {
    /// Start a server for `yaml`, after `setup` registered handlers on the bridge.
    pub async fn start(yaml: &str, setup: impl FnOnce(&BridgeManager)) -> TestServer {
        Self::start_with(yaml, setup, |_| {}).await
    }

    pub async fn start_with(
        yaml: &str,
        setup: impl FnOnce(&BridgeManager),
        tweak: impl FnOnce(&mut ServerOptions),
    ) -> TestServer {
        let config = BridgeConfig::from_yaml(yaml).expect("test config is valid");
        let mut options = ServerOptions::from_config(&config).expect("options");
        tweak(&mut options);
        let bridge = BridgeManager::new(config).expect("bridge");
        setup(&bridge);
        let server = Arc::new(Server::new(bridge, options));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let s = server.clone();
        let task = tokio::spawn(async move {
            s.run(listener, async {
                let _ = rx.await;
            })
            .await
        });
        let scheme = if server.state().options.tls.is_some() { "https" } else { "http" };
        let ts = TestServer { addr, url: format!("{scheme}://{addr}"), server, stop: Some(tx), task: Some(task) };
        // run() initializes the bridge; wait until it admits messages.
        for _ in 0..200 {
            if ts.server.bridge().is_running() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        ts
    }

    pub fn bridge(&self) -> BridgeManager {
        self.server.bridge()
    }

    /// Trigger the drain; returns when the server stopped.
    pub async fn stop(mut self) -> dreamos_bridge::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(t) => t.await.expect("server task"),
            None => Ok(()),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/connect", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().build().unwrap()
}

/// POST JSON; (status, headers, body as JSON).
pub async fn post(
    url: impl AsRef<str>,
    token: Option<&str>,
    body: serde_json::Value,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let mut rb = client().post(url.as_ref()).json(&body);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    let resp = rb.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, headers, v)
}

pub async fn get(url: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut rb = client().get(url);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    let resp = rb.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

pub const LOCAL: &str = "bridge:\n  host: 127.0.0.1\n  port: 0\n  retry_attempts: 0\n";
