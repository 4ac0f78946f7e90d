//! `make bench`: the cost of one `route` through every stage, beside the
//! floor of calling the same handler directly from a `HashMap`.
//!
//! Criterion measures each case; a summary table at the end prints the
//! medians side by side with the ratio to the peer, measured in this run.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group};
use dreamos_bridge::routing::RouteTable;
use dreamos_bridge::{BridgeManager, CallOptions, Credentials, Handler, Message, handler_fn};
use serde_json::json;
use sha2::{Digest, Sha256};

const API_KEY: &str = "dk_bench_0123456789abcdef";
const ROUTE_COUNTS: [usize; 3] = [10, 1_000, 100_000];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn echo() -> Arc<dyn Handler> {
    handler_fn(|m: Message| async move { Ok(m.payload) })
}

/// A secured bridge with `routes` registered routes and a token for it.
fn secured_bridge(rt: &tokio::runtime::Runtime, routes: usize) -> (BridgeManager, String) {
    let yaml = format!(
        "security:\n  rate_limit: 1000000000\n  api_keys:\n    - principal: bench\n      sha256: {}\n      roles: [agent]\n  roles:\n    agent:\n      route: [\"bench.>\"]\n",
        hex::encode(Sha256::digest(API_KEY))
    );
    let bridge = BridgeManager::from_yaml(&yaml).expect("config");
    rt.block_on(bridge.initialize()).expect("initialize");
    for i in 0..routes.saturating_sub(1) {
        bridge.register_route(&format!("bench.r{i}.*"), echo()).expect("register");
    }
    bridge.register_route("bench.echo", echo()).expect("register");
    let token = bridge.authenticate(&Credentials::ApiKey(API_KEY.into())).expect("authenticate").value;
    (bridge, token)
}

/// Time `iters` sequential routes inside one runtime entry.
fn time_routes(rt: &tokio::runtime::Runtime, bridge: &BridgeManager, token: &str, iters: u64) -> Duration {
    rt.block_on(async {
        let payload = json!({"q": "weather", "n": 1});
        let start = Instant::now();
        for _ in 0..iters {
            let msg = Message::new("bench.echo", payload.clone());
            let reply = bridge.route(msg, CallOptions::with_token(token)).await.expect("route");
            black_box(reply);
        }
        start.elapsed()
    })
}

/// The peer: the same handler looked up in a HashMap and awaited directly.
fn time_direct(rt: &tokio::runtime::Runtime, iters: u64) -> Duration {
    let mut map: HashMap<String, Arc<dyn Handler>> = HashMap::new();
    map.insert("bench.echo".into(), echo());
    rt.block_on(async {
        let payload = json!({"q": "weather", "n": 1});
        let start = Instant::now();
        for _ in 0..iters {
            let msg = Message::new("bench.echo", payload.clone());
            let h = map.get(black_box("bench.echo")).expect("handler");
            black_box(h.call(msg).await.expect("call"));
        }
        start.elapsed()
    })
}

fn bench_route(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("route");
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("peer_direct_hashmap_call", |b| b.iter_custom(|n| time_direct(&rt, n)));
    for routes in ROUTE_COUNTS {
        let (bridge, token) = secured_bridge(&rt, routes);
        group.bench_with_input(BenchmarkId::new("secured_in_process_echo", routes), &routes, |b, _| {
            b.iter_custom(|n| time_routes(&rt, &bridge, &token, n))
        });
        rt.block_on(bridge.shutdown());
    }
    group.finish();
}

fn bench_parts(c: &mut Criterion) {
    let rt = runtime();
    let (bridge, token) = secured_bridge(&rt, 10);
    c.bench_function("token_verify_cached", |b| {
        b.iter(|| black_box(bridge.verify_token(black_box(&token)).expect("verify")))
    });
    let mut group = c.benchmark_group("resolve");
    for routes in ROUTE_COUNTS {
        let mut table = RouteTable::new();
        for i in 0..routes {
            table.insert(&format!("svc.s{i}.*.>"), i).expect("insert");
        }
        table.insert("svc.weather.current", usize::MAX).expect("insert");
        group.bench_with_input(BenchmarkId::from_parameter(routes), &routes, |b, _| {
            b.iter(|| black_box(table.resolve(black_box("svc.weather.current"))))
        });
    }
    group.finish();
    rt.block_on(bridge.shutdown());
}

/// Medians of our own samples, printed side by side with the peer.
fn summary() {
    let rt = runtime();
    let median_ns = |f: &dyn Fn(u64) -> Duration| {
        let iters = 20_000;
        let mut samples: Vec<f64> = (0..15).map(|_| f(iters).as_nanos() as f64 / iters as f64).collect();
        samples.sort_by(f64::total_cmp);
        samples[samples.len() / 2]
    };
    let peer = median_ns(&|n| time_direct(&rt, n));
    println!("\nsummary (median ns per call, same run)");
    println!("{:<44} {:>10} {:>10}", "case", "ns/call", "vs peer");
    println!("{:<44} {:>10.0} {:>10}", "peer: HashMap lookup + direct handler call", peer, "1.00x");
    for routes in ROUTE_COUNTS {
        let (bridge, token) = secured_bridge(&rt, routes);
        // A bridge whose 100,000 routes were just built runs its first
        // calls with cold caches and a busy allocator: warm it up first.
        time_routes(&rt, &bridge, &token, 100_000);
        let ns = median_ns(&|n| time_routes(&rt, &bridge, &token, n));
        println!("{:<44} {:>10.0} {:>9.2}x", format!("bridge.route, secured, {routes} routes"), ns, ns / peer);
        rt.block_on(bridge.shutdown());
    }
}

criterion_group!(benches, bench_route, bench_parts);

fn main() {
    benches();
    criterion::Criterion::default().configure_from_args().final_summary();
    summary();
}
