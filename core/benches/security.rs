//! `make bench`: the per-call security cost (token verification on a cache
//! hit, and authorization), beside two peers measured in the same run: the
//! floor (SHA-256 of the token plus one `HashMap` lookup) and what an
//! uncached check would cost (a full `jsonwebtoken::decode`).

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use dreamos_bridge::security::SecurityManager;
use dreamos_bridge::security::apikeys::hash_key;
use dreamos_bridge::{Action, BridgeConfig, Credentials};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};

const API_KEY: &str = "dk_bench_0123456789abcdef";
const SECRET: &str = "bench-signing-secret-0123456789abcdef0123";

fn manager() -> (SecurityManager, String) {
    let yaml = format!(
        "security:\n  signing_keys:\n    - id: k1\n      secret: {SECRET}\n  api_keys:\n    - principal: bench\n      sha256: {}\n      roles: [agent]\n  roles:\n    agent:\n      route: [\"services.weather.>\", \"agents.*\"]\n      publish: [\"events.>\"]\n      deny: [\"agents.admin\"]\n",
        hash_key(API_KEY)
    );
    let cfg = BridgeConfig::from_yaml(&yaml).expect("config");
    let sec = SecurityManager::new(cfg.security.as_ref()).expect("security");
    let token = sec.authenticate(&Credentials::ApiKey(API_KEY.into())).expect("authenticate").value;
    (sec, token)
}

fn time<F: FnMut()>(iters: u64, mut f: F) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed()
}

struct Cases {
    sec: SecurityManager,
    token: String,
    floor: HashMap<[u8; 32], u64>,
    key: DecodingKey,
    validation: Validation,
}

impl Cases {
    fn new() -> Self {
        let (sec, token) = manager();
        let floor = HashMap::from([(<[u8; 32]>::from(Sha256::digest(token.as_bytes())), 1u64)]);
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&["dreamos-bridge"]);
        Cases { sec, token, floor, key: DecodingKey::from_secret(SECRET.as_bytes()), validation }
    }
    fn floor(&self, n: u64) -> Duration {
        time(n, || {
            let d: [u8; 32] = Sha256::digest(black_box(self.token.as_bytes())).into();
            black_box(self.floor.get(&d));
        })
    }
    fn decode(&self, n: u64) -> Duration {
        time(n, || {
            let r = jsonwebtoken::decode::<serde_json::Value>(black_box(&self.token), &self.key, &self.validation);
            black_box(r.expect("decode"));
        })
    }
    fn verify(&self, n: u64) -> Duration {
        time(n, || {
            black_box(self.sec.verify(black_box(&self.token)).expect("verify"));
        })
    }
    fn authorize(&self, n: u64) -> Duration {
        let p = self.sec.verify(&self.token).expect("verify");
        time(n, || {
            self.sec.authorize(&p, Action::Route, black_box("services.weather.current")).expect("authorize");
        })
    }
    fn verify_authorize(&self, n: u64) -> Duration {
        time(n, || {
            let p = self.sec.verify(black_box(&self.token)).expect("verify");
            self.sec.authorize(&p, Action::Route, black_box("services.weather.current")).expect("authorize");
        })
    }
}

fn bench(c: &mut Criterion) {
    let cases = Cases::new();
    let mut g = c.benchmark_group("security");
    g.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    g.bench_function("peer_sha256_plus_hashmap", |b| b.iter_custom(|n| cases.floor(n)));
    g.bench_function("peer_jsonwebtoken_decode", |b| b.iter_custom(|n| cases.decode(n)));
    g.bench_function("verify_cache_hit", |b| b.iter_custom(|n| cases.verify(n)));
    g.bench_function("authorize_allowed", |b| b.iter_custom(|n| cases.authorize(n)));
    g.bench_function("verify_and_authorize", |b| b.iter_custom(|n| cases.verify_authorize(n)));
    g.finish();
}

fn median_ns(f: &dyn Fn(u64) -> Duration) -> f64 {
    const N: u64 = 20_000;
    let mut v: Vec<f64> = (0..15).map(|_| f(N).as_nanos() as f64 / N as f64).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn summary() {
    let c = Cases::new();
    let floor = median_ns(&|n| c.floor(n));
    let rows = [
        ("peer: sha256(token) + HashMap lookup", floor),
        ("peer: jsonwebtoken::decode (uncached)", median_ns(&|n| c.decode(n))),
        ("SecurityManager::verify (cache hit)", median_ns(&|n| c.verify(n))),
        ("SecurityManager::authorize (allowed)", median_ns(&|n| c.authorize(n))),
        ("verify + authorize (allowed)", median_ns(&|n| c.verify_authorize(n))),
    ];
    println!("\nsummary (median ns per call, same run)");
    println!("{:<44} {:>10} {:>10}", "case", "ns/call", "vs floor");
    for (name, ns) in rows {
        println!("{name:<44} {ns:>10.0} {:>9.2}x", ns / floor);
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
