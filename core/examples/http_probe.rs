//! One side of the HTTP benchmark at a time, for profilers.
//!
//! `cargo bench --bench http` times the bridge against raw reqwest; this
//! example runs only one of them (`raw`, `raw-same` or `bridge`; `raw-same`
//! sends what the bridge sends, as the benchmark's like-for-like peer does), so that a profiler
//! sees one side. On a shared machine, instruction counts are the steady
//! figure: run each side at two request counts under callgrind and take the
//! difference, which cancels the set-up:
//!
//! ```text
//! cargo build --release -p dreamos-bridge --example http_probe
//! valgrind --tool=callgrind target/release/examples/http_probe raw 32 4000
//! valgrind --tool=callgrind target/release/examples/http_probe raw 32 8000
//! (the same with `bridge`)
//! ```

use std::time::Instant;

use dreamos_bridge::{BridgeManager, CallOptions, Message, Payload};
use serde_json::{Value, json};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let side = args.next().unwrap_or_else(|| "bridge".into());
    let concurrency: usize = args.next().and_then(|c| c.parse().ok()).unwrap_or(32).max(1);
    let total: usize = args.next().and_then(|c| c.parse().ok()).unwrap_or(20_000);
    if !["raw", "raw-same", "bridge"].contains(&side.as_str()) {
        return Err("usage: http_probe raw|raw-same|bridge [concurrency] [requests]".into());
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let app = axum::Router::new().fallback(|body: axum::body::Bytes| async move {
            ([(axum::http::header::CONTENT_TYPE, "application/json")], body)
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        let yaml = format!(
            "services:\n  echo:\n    url: http://{addr}\n    max_connections: 64\nroutes:\n  - pattern: echo.>\n    service: echo\n"
        );
        let bridge = BridgeManager::from_yaml(&yaml)?;
        bridge.initialize().await?;
        let raw = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .user_agent(concat!("dreamos-bridge/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let url = format!("http://{addr}/weather/current");

        let started = Instant::now();
        let lanes: Vec<_> = (0..concurrency)
            .map(|_| {
                let (bridge, raw, url, side) = (bridge.clone(), raw.clone(), url.clone(), side.clone());
                tokio::spawn(async move {
                    for _ in 0..total / concurrency {
                        let payload = json!({"city": "Paris", "units": "metric", "days": 3});
                        if side == "bridge" {
                            let reply = bridge.route(Message::new("echo.weather.current", payload), CallOptions::default());
                            if !matches!(reply.await, Ok(Payload::Json(_))) {
                                return Err("the bridge did not echo".to_string());
                            }
                        } else {
                            let mut req = raw.post(&url).json(&payload);
                            if side == "raw-same" {
                                let trace =
                                    format!("00-{:032x}-{:016x}-01", rand::random::<u128>(), rand::random::<u64>());
                                let key = uuid::Builder::from_random_bytes(rand::random()).into_uuid().to_string();
                                req = req
                                    .header("idempotency-key", key)
                                    .header("traceparent", trace)
                                    .header(reqwest::header::ACCEPT, "application/json, */*;q=0.5")
                                    .timeout(std::time::Duration::from_secs(30));
                            }
                            let resp = req.send().await.map_err(|e| e.to_string())?;
                            let _: Value = resp.json().await.map_err(|e| e.to_string())?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for lane in lanes {
            lane.await??;
        }
        let secs = started.elapsed().as_secs_f64();
        let done = total / concurrency * concurrency;
        println!("{side}: {done} requests at concurrency {concurrency}: {:.0} req/s", done as f64 / secs);
        bridge.shutdown().await;
        Ok(())
    })
}
