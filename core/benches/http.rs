//! `route` to a local HTTP echo service, beside raw reqwest doing the same
//! POSTs in the same run, at concurrency 1 and 32.
//!
//! Both sides talk to the same axum echo server on loopback, in the same
//! runtime, so the machine's speed cancels out: the number that matters is
//! the ratio (the bridge's throughput over reqwest's). Goal: the bridge
//! costs at most 10% at concurrency 32.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use dreamos_bridge::{BridgeManager, CallOptions, Message, Payload};
use serde_json::{Value, json};

const CONCURRENCY: [usize; 2] = [1, 32];

struct Setup {
    rt: tokio::runtime::Runtime,
    bridge: BridgeManager,
    raw: reqwest::Client,
    url: String,
}

fn setup() -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let (bridge, url) = rt.block_on(async {
        let app = axum::Router::new().fallback(|body: axum::body::Bytes| async move {
            ([(axum::http::header::CONTENT_TYPE, "application/json")], body)
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        let yaml = format!(
            "bridge:\n  max_connections: 64\nservices:\n  echo:\n    url: http://{addr}\nroutes:\n  - pattern: echo.>\n    service: echo\n"
        );
        let bridge = BridgeManager::from_yaml(&yaml).expect("config");
        bridge.initialize().await.expect("initialize");
        (bridge, format!("http://{addr}"))
    });
    let raw = reqwest::Client::builder().pool_max_idle_per_host(64).tcp_nodelay(true).build().expect("client");
    Setup { rt, bridge, raw, url }
}

fn payload() -> Value {
    json!({"city": "Paris", "units": "metric", "days": 3})
}

async fn via_bridge(bridge: BridgeManager, n: usize) {
    for _ in 0..n {
        let r = bridge.route(Message::new("echo.weather.current", payload()), CallOptions::default()).await;
        assert!(matches!(r, Ok(Payload::Json(_))), "{r:?}");
    }
}

async fn via_reqwest(client: reqwest::Client, url: String, n: usize) {
    for _ in 0..n {
        let resp = client.post(&url).json(&payload()).send().await.expect("send");
        assert!(resp.status().is_success());
        let _: Value = resp.json().await.expect("json");
    }
}

/// Run `total` requests at `concurrency` through the bridge or raw reqwest.
fn run(s: &Setup, bridge: bool, concurrency: usize, total: usize) -> Duration {
    let per_task = total.div_ceil(concurrency);
    let url = format!("{}/weather/current", s.url);
    s.rt.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                if bridge {
                    tokio::spawn(via_bridge(s.bridge.clone(), per_task))
                } else {
                    tokio::spawn(via_reqwest(s.raw.clone(), url.clone(), per_task))
                }
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        start.elapsed()
    })
}

fn benches(c: &mut Criterion, s: &Arc<Setup>) {
    for conc in CONCURRENCY {
        let mut g = c.benchmark_group(format!("http_c{conc}"));
        g.throughput(Throughput::Elements(conc as u64));
        g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
        g.bench_function(BenchmarkId::new("raw_reqwest", conc), |b| {
            b.iter_custom(|iters| run(s, false, conc, iters as usize * conc))
        });
        g.bench_function(BenchmarkId::new("bridge_route", conc), |b| {
            b.iter_custom(|iters| run(s, true, conc, iters as usize * conc))
        });
        g.finish();
    }
}

/// The side-by-side numbers: alternate the two several times and keep each
/// side's best, so a burst of noise on the shared machine hurts neither.
fn summary(s: &Setup) {
    println!("\nHTTP delivery: bridge `route` vs raw reqwest, same echo server, same run");
    for conc in CONCURRENCY {
        let total = if conc == 1 { 2_000 } else { 8_000 };
        run(s, false, conc, total / 4);
        run(s, true, conc, total / 4);
        let (mut raw, mut bridge) = (Duration::MAX, Duration::MAX);
        for _ in 0..3 {
            raw = raw.min(run(s, false, conc, total));
            bridge = bridge.min(run(s, true, conc, total));
        }
        let raw_rps = total as f64 / raw.as_secs_f64();
        let bridge_rps = total as f64 / bridge.as_secs_f64();
        println!(
            "  concurrency {conc:>2}: raw reqwest {raw_rps:>9.0} req/s | bridge route {bridge_rps:>9.0} req/s | \
             bridge/raw {:.3} (overhead {:+.1}%)",
            bridge_rps / raw_rps,
            (raw_rps / bridge_rps - 1.0) * 100.0
        );
    }
}

fn main() {
    let s = Arc::new(setup());
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c, &s);
    summary(&s);
    c.final_summary();
    s.rt.block_on(s.bridge.shutdown());
}
