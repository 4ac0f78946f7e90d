//! Shared test helpers: a real `dreamos-bridge` server on 127.0.0.1 in this
//! process (port 0, or a given address to restart on the same port).
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
    /// Start a server for `yaml` on a free port, after `setup` registered handlers on the bridge.
    pub async fn start(yaml: &str, setup: impl FnOnce(&BridgeManager)) -> TestServer {
        Self::start_at(yaml, setup, "127.0.0.1:0".parse().expect("address")).await
    }

    /// The same on `addr` (to restart a server where its clients expect it).
    pub async fn start_at(yaml: &str, setup: impl FnOnce(&BridgeManager), addr: SocketAddr) -> TestServer {
        let config = BridgeConfig::from_yaml(yaml).expect("test config is valid");
        let options = ServerOptions::from_config(&config).expect("options");
        let bridge = BridgeManager::new(config).expect("bridge");
        setup(&bridge);
        let server = Arc::new(Server::new(bridge, options));
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
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
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
