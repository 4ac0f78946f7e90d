//! `route` to a local HTTP echo service, beside raw reqwest doing the same
//! requests in the same run, at concurrency 1 and 32.
//!
//! All sides talk to the same axum echo server on loopback, in the same
//! runtime, so the machine's speed cancels out: the number that matters is
//! the ratio. Goal: the bridge costs at most 10% at concurrency 32.
//!
//! Two reqwest peers:
//! - **the same requests**: what a careful user writes by hand to send what
//!   the bridge sends — an idempotency key (a UUID from the thread's RNG, no
//!   system call), a W3C `traceparent`,
//!   `Accept` and `User-Agent` (set once on the client), and a deadline
//!   (`.timeout`). This is the like-for-like peer: the same bytes on the wire
//!   and the same deadline, so the ratio is what the bridge's own machinery
//!   (validation, routing, admission, retries, breaker, metrics) costs.
//! - **a bare POST**: no idempotency key, trace context or deadline. Printed
//!   as the floor, so that the price of those features is visible too.
//!
//! Besides throughput, each side's CPU time per request (the whole process:
//! client and echo server, user and system, `getrusage`) is printed: on a
//! shared machine it moves far less than the wall clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use dreamos_bridge::{BridgeManager, CallOptions, Message, Payload};
use serde_json::{Value, json};

const CONCURRENCY: [usize; 2] = [1, 32];
/// The bridge's default `bridge.request_timeout`, given to the peer too.
const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Bare,
    Same,
    Bridge,
}

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
        (bridge, format!("http://{addr}/weather/current"))
    });
    let raw = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .user_agent(concat!("dreamos-bridge/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("client");
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

async fn via_reqwest(client: reqwest::Client, url: String, n: usize, same: bool) {
    for _ in 0..n {
        let mut req = client.post(&url).json(&payload());
        if same {
            let trace = format!("00-{:032x}-{:016x}-01", rand::random::<u128>(), rand::random::<u64>());
            req = req
                .header("idempotency-key", uuid::Builder::from_random_bytes(rand::random()).into_uuid().to_string())
                .header("traceparent", trace)
                .header(reqwest::header::ACCEPT, "application/json, */*;q=0.5")
                .timeout(DEADLINE);
        }
        let resp = req.send().await.expect("send");
        assert!(resp.status().is_success());
        let _: Value = resp.json().await.expect("json");
    }
}

/// CPU time used by this process so far (all threads, user and system).
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Run `total` requests at `concurrency` on one side: (wall, CPU).
fn run(s: &Setup, side: Side, concurrency: usize, total: usize) -> (Duration, Duration) {
    let per_task = total.div_ceil(concurrency);
    s.rt.block_on(async {
        let (start, cpu) = (Instant::now(), cpu_time());
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| match side {
                Side::Bridge => tokio::spawn(via_bridge(s.bridge.clone(), per_task)),
                _ => tokio::spawn(via_reqwest(s.raw.clone(), s.url.clone(), per_task, side == Side::Same)),
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        (start.elapsed(), cpu_time() - cpu)
    })
}

fn benches(c: &mut Criterion, s: &Arc<Setup>) {
    for conc in CONCURRENCY {
        let mut g = c.benchmark_group(format!("http_c{conc}"));
        g.throughput(Throughput::Elements(conc as u64));
        g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
        for (name, side) in
            [("raw_reqwest_bare", Side::Bare), ("raw_reqwest_same", Side::Same), ("bridge_route", Side::Bridge)]
        {
            g.bench_function(BenchmarkId::new(name, conc), |b| {
                b.iter_custom(|iters| run(s, side, conc, iters as usize * conc).0)
            });
        }
        g.finish();
    }
}

/// The side-by-side numbers: the three sides take turns (the order rotates
/// every round) and each keeps its best wall time and its least CPU, so a
/// burst of noise on the shared machine hurts none of them.
fn summary(s: &Setup) {
    const ROUNDS: usize = 5;
    let sides = [Side::Bare, Side::Same, Side::Bridge];
    println!("\nHTTP delivery: bridge `route` vs raw reqwest, same echo server, same run (best of {ROUNDS} rounds)");
    for conc in CONCURRENCY {
        let total = if conc == 1 { 2_000 } else { 8_000 };
        for side in sides {
            run(s, side, conc, total / 4);
        }
        let mut best = [(Duration::MAX, Duration::MAX); 3];
        for round in 0..ROUNDS {
            for i in 0..3 {
                let k = (i + round) % 3;
                let (wall, cpu) = run(s, sides[k], conc, total);
                best[k] = (best[k].0.min(wall), best[k].1.min(cpu));
            }
        }
        let rps = |k: usize| total as f64 / best[k].0.as_secs_f64();
        let cpu_us = |k: usize| best[k].1.as_secs_f64() * 1e6 / total as f64;
        println!("  concurrency {conc}:");
        for (k, name) in ["raw reqwest, bare POST", "raw reqwest, the same requests", "bridge route"].iter().enumerate()
        {
            println!("    {name:<32} {:>8.0} req/s  {:>6.1} us CPU/req", rps(k), cpu_us(k));
        }
        println!(
            "    bridge vs the same requests: throughput {:.3}x (overhead {:+.1}%), CPU {:+.1}%",
            rps(2) / rps(1),
            (rps(1) / rps(2) - 1.0) * 100.0,
            (cpu_us(2) / cpu_us(1) - 1.0) * 100.0
        );
        println!(
            "    bridge vs a bare POST:       throughput {:.3}x (overhead {:+.1}%), CPU {:+.1}%",
            rps(2) / rps(0),
            (rps(0) / rps(2) - 1.0) * 100.0,
            (cpu_us(2) / cpu_us(0) - 1.0) * 100.0
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
