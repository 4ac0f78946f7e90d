use std::collections::{BTreeMap, HashSet};
use std::sync::Barrier;
use std::sync::atomic::AtomicBool;

use serde_json::{Value, json};

use super::*;

fn collector() -> MetricsCollector {
    MetricsCollector::new(&MonitoringConfig::default())
}

fn collector_with(enabled: bool, threshold: f64) -> MetricsCollector {
    MetricsCollector::new(&MonitoringConfig {
        metrics_enabled: enabled,
        alert_threshold: threshold,
        ..Default::default()
    })
}

fn balanced(s: &MessageSnapshot) -> bool {
    s.accepted == s.ok + s.failed + s.cancelled + s.rejected + s.in_flight
}

#[test]
fn code_index_follows_the_declaration_order_of_all() {
    for (i, code) in ErrorCode::ALL.iter().enumerate() {
        assert_eq!(code_index(*code), i, "{code}");
    }
}

#[test]
fn each_outcome_lands_in_its_counter() {
    let s = MessageStats::default();
    let outcomes = [
        Outcome::Ok,
        Outcome::Ok,
        Outcome::Failed(ErrorCode::Timeout),
        Outcome::Failed(ErrorCode::HandlerError),
        Outcome::Cancelled,
        Outcome::Rejected(ErrorCode::RateLimited),
        Outcome::Rejected(ErrorCode::QueueFull),
    ];
    for o in outcomes {
        s.accept();
        s.finish(o, Duration::from_micros(50));
    }
    s.accept(); // still in flight
    s.set_queue_depth(4);
    let snap = s.snapshot();
    assert_eq!(
        (snap.accepted, snap.ok, snap.failed, snap.cancelled, snap.rejected, snap.in_flight),
        (8, 2, 2, 1, 2, 1)
    );
    assert_eq!(snap.rate_limited, 1);
    assert_eq!(snap.queue_depth, 4);
    assert_eq!(snap.errors["TIMEOUT"], 1);
    assert_eq!(snap.errors["HANDLER_ERROR"], 1);
    assert_eq!(snap.errors["RATE_LIMITED"], 1);
    assert_eq!(snap.errors["QUEUE_FULL"], 1);
    assert_eq!(snap.errors["INTERNAL"], 0);
    assert_eq!(snap.errors.len(), ErrorCode::ALL.len());
    assert_eq!(snap.latency.count, 7);
    assert!(balanced(&snap));
}

#[test]
fn accounting_balances_under_concurrent_updates() {
    const THREADS: usize = 4;
    const PER_THREAD: u64 = 20_000;
    let m = Arc::new(collector());
    let route = m.route("agents.echo");
    let done = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(THREADS + 1));

    // A reader snapshots while the writers run: the identity must hold in
    // every snapshot, not only at rest.
    let reader = {
        let (m, done, start) = (m.clone(), done.clone(), start.clone());
        std::thread::spawn(move || {
            start.wait();
            let mut seen = 0u64;
            while !done.load(Ordering::Acquire) {
                let snap = m.snapshot();
                for s in std::iter::once(&snap.totals).chain(snap.routes.values()) {
                    let finished = s.ok + s.failed + s.cancelled + s.rejected;
                    assert!(s.accepted >= finished, "finished {finished} > accepted {}", s.accepted);
                    assert!(balanced(s), "{s:?}");
                }
                seen += 1;
            }
            seen
        })
    };
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (m, route, start) = (m.clone(), route.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                for i in 0..PER_THREAD {
                    m.totals().accept();
                    let outcome = match (i + t as u64) % 5 {
                        0 | 1 => Outcome::Ok,
                        2 => Outcome::Failed(ErrorCode::Timeout),
                        3 => Outcome::Cancelled,
                        _ => Outcome::Rejected(ErrorCode::RateLimited),
                    };
                    // Rejections here happen before the route resolves,
                    // as in the bridge: the route never sees them.
                    let routed = !matches!(outcome, Outcome::Rejected(_));
                    if routed {
                        route.accept();
                    }
                    let latency = Duration::from_micros(1 + i % 1_000);
                    m.totals().finish(outcome, latency);
                    if routed {
                        route.finish(outcome, latency);
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, Ordering::Release);
    assert!(reader.join().unwrap() > 0);

    let snap = m.snapshot();
    let all = THREADS as u64 * PER_THREAD;
    let t = &snap.totals;
    assert_eq!(t.accepted, all);
    assert_eq!(t.in_flight, 0);
    assert_eq!(t.ok + t.failed + t.cancelled + t.rejected, all);
    assert_eq!(t.ok, all * 2 / 5);
    assert_eq!((t.failed, t.cancelled, t.rejected), (all / 5, all / 5, all / 5));
    assert_eq!(t.rate_limited, all / 5);
    assert_eq!(t.errors["TIMEOUT"], all / 5);
    assert_eq!(t.latency.count, all);
    let r = &snap.routes["agents.echo"];
    assert_eq!(r.accepted, all * 4 / 5);
    assert_eq!(r.ok + r.failed + r.cancelled + r.rejected, r.accepted);
    assert_eq!(r.rejected, 0);
    assert_eq!(r.latency.count, r.accepted);
}

#[test]
fn scopes_are_shared_by_name() {
    let m = collector();
    let a = m.route("a.b");
    assert!(Arc::ptr_eq(&a, &m.route("a.b")));
    assert!(!Arc::ptr_eq(&a, &m.route("a.c")));
    assert!(Arc::ptr_eq(&m.principal("planner"), &m.principal("planner")));
    assert!(Arc::ptr_eq(&m.service("weather"), &m.service("weather")));
}

#[test]
fn principals_past_the_cap_share_one_scope() {
    let m = collector();
    for i in 0..MAX_PRINCIPALS {
        m.principal(&format!("p{i}"));
    }
    let late = m.principal("latecomer");
    assert!(Arc::ptr_eq(&late, &m.principal("another")));
    late.accept();
    late.finish(Outcome::Ok, Duration::from_micros(3));
    // Known principals keep their own scope.
    assert!(!Arc::ptr_eq(&late, &m.principal("p0")));
    let snap = m.snapshot();
    assert_eq!(snap.principals.len(), MAX_PRINCIPALS + 1);
    assert_eq!(snap.principals[OTHER_PRINCIPALS].ok, 1);
}

#[test]
fn disabled_metrics_record_nothing_but_stay_safe() {
    let m = collector_with(false, 0.9);
    assert!(!m.enabled());
    let r = m.route("a");
    let p = m.principal("bob");
    for s in [m.totals(), &r, &p] {
        s.accept();
        s.set_queue_depth(3);
        s.finish(Outcome::Failed(ErrorCode::Timeout), Duration::from_millis(1));
    }
    let svc = m.service("weather");
    svc.connection_opened();
    svc.request(false, Duration::from_millis(2));
    svc.set_breaker(BreakerState::Open);
    m.dead_lettered(true);
    m.evaluate_alerts();
    let snap = m.snapshot();
    assert!(!snap.metrics_enabled);
    assert_eq!(snap.totals, MessageStats::with_enabled(true).snapshot());
    assert!(snap.routes.is_empty() && snap.principals.is_empty());
    assert_eq!(snap.services["weather"].requests, 0);
    assert_eq!(snap.services["weather"].active_connections, 0);
    // State gauges are still kept.
    assert_eq!(snap.services["weather"].breaker, BreakerState::Open);
    assert_eq!(snap.dead_letters, DeadLetterSnapshot::default());
    // The text is still valid.
    parse_exposition(&m.prometheus_text());
}

#[test]
fn service_stats_track_connections_requests_and_state() {
    let m = collector();
    let s = m.service("weather");
    s.connection_opened();
    s.connection_opened();
    s.connection_closed();
    s.connection_error();
    s.request(true, Duration::from_millis(10));
    s.request(false, Duration::from_millis(20));
    s.retry();
    s.set_breaker(BreakerState::HalfOpen);
    s.set_health(HealthStatus::Degraded);
    let snap = m.snapshot().services["weather"].clone();
    assert_eq!(snap.active_connections, 1);
    assert_eq!(snap.connection_errors, 1);
    assert_eq!((snap.requests, snap.failures, snap.retries), (2, 1, 1));
    assert_eq!(snap.breaker, BreakerState::HalfOpen);
    assert_eq!(snap.health, HealthStatus::Degraded);
    assert_eq!(snap.latency.count, 2);
    assert!((snap.latency.mean_us - 15_000.0).abs() < 1e-6);
    // Before any evaluation, throughput covers the service's lifetime.
    assert_eq!(snap.throughput.requests, 2);
    // More closes than opens never show a negative gauge.
    s.connection_closed();
    s.connection_closed();
    assert_eq!(s.snapshot().active_connections, 0);
}

#[test]
fn snapshot_json_has_the_documented_shape() {
    let m = collector();
    let r = m.route("agents.echo");
    m.totals().accept();
    r.accept();
    r.set_queue_depth(2);
    m.totals().finish(Outcome::Ok, Duration::from_micros(120));
    r.finish(Outcome::Ok, Duration::from_micros(120));
    m.principal("planner");
    m.service("weather").request(true, Duration::from_millis(1));
    m.dead_lettered(false);
    m.dead_lettered(true);

    let v = serde_json::to_value(m.snapshot()).unwrap();
    let keys = |v: &Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(
        keys(&v),
        ["metrics_enabled", "uptime_secs", "totals", "routes", "principals", "services", "dead_letters"]
    );
    let message_keys = [
        "accepted",
        "ok",
        "failed",
        "cancelled",
        "rejected",
        "rate_limited",
        "in_flight",
        "queue_depth",
        "errors",
        "latency",
    ];
    assert_eq!(keys(&v["totals"]), message_keys);
    assert_eq!(keys(&v["routes"]["agents.echo"]), message_keys);
    assert_eq!(keys(&v["principals"]["planner"]), message_keys);
    let latency_keys = ["count", "sum_us", "mean_us", "p50_us", "p90_us", "p99_us"];
    assert_eq!(keys(&v["totals"]["latency"]), latency_keys);
    let mut codes: Vec<String> = ErrorCode::ALL.iter().map(|c| c.as_str().to_owned()).collect();
    codes.sort();
    assert_eq!(keys(&v["totals"]["errors"]), codes);
    assert_eq!(
        keys(&v["services"]["weather"]),
        [
            "active_connections",
            "connection_errors",
            "requests",
            "failures",
            "retries",
            "breaker",
            "health",
            "latency",
            "throughput"
        ]
    );
    assert_eq!(keys(&v["services"]["weather"]["throughput"]), ["interval_secs", "requests", "per_sec"]);
    assert_eq!(v["services"]["weather"]["breaker"], json!("closed"));
    assert_eq!(v["services"]["weather"]["health"], json!("up"));
    assert_eq!(v["dead_letters"], json!({"stored": 2, "evicted": 1}));
    assert_eq!(v["metrics_enabled"], json!(true));
    assert_eq!(v["totals"]["ok"], json!(1));
    // Totals show the sum of the routes' queue depths.
    assert_eq!(v["totals"]["queue_depth"], json!(2));
    assert_eq!(v["routes"]["agents.echo"]["latency"]["count"], json!(1));
    // The snapshot reads back.
    let back: MetricsSnapshot = serde_json::from_value(v).unwrap();
    assert_eq!(back.routes["agents.echo"].ok, 1);
}

// ---------------------------------------------------------------------
// Prometheus text: a strict line-by-line parser of format 0.0.4.

#[derive(Debug)]
struct Family {
    kind: String,
    samples: Vec<Sample>,
}

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(v: &str) -> f64 {
    match v {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => v.parse().unwrap_or_else(|_| panic!("bad value {v:?}")),
    }
}

fn parse_sample(line: &str) -> Sample {
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("no value: {line:?}"));
    let name = &line[..name_end];
    assert!(valid_name(name), "bad name {name:?}");
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        loop {
            // label name
            let start = chars.peek().map(|(i, _)| *i).unwrap();
            let mut end = start;
            while let Some(&(i, c)) = chars.peek() {
                if c == '=' {
                    end = i;
                    break;
                }
                chars.next();
            }
            let key = &r[start..end];
            assert!(valid_name(key), "bad label name {key:?} in {line:?}");
            assert_eq!(chars.next().map(|x| x.1), Some('='));
            assert_eq!(chars.next().map(|x| x.1), Some('"'), "unquoted label value in {line:?}");
            let mut value = String::new();
            loop {
                match chars.next().map(|x| x.1) {
                    Some('\\') => match chars.next().map(|x| x.1) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => panic!("bad escape {other:?} in {line:?}"),
                    },
                    Some('"') => break,
                    Some('\n') => panic!("raw newline in {line:?}"),
                    Some(c) => value.push(c),
                    None => panic!("unterminated label value in {line:?}"),
                }
            }
            labels.push((key.to_owned(), value));
            match chars.next() {
                Some((_, ',')) => continue,
                Some((i, '}')) => {
                    rest = &r[i + 1..];
                    break;
                }
                other => panic!("expected , or }} got {other:?} in {line:?}"),
            }
        }
    }
    let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("no space before value: {line:?}"));
    assert!(!value.contains(' '), "timestamps are not used: {line:?}");
    Sample { name: name.to_owned(), labels, value: parse_value(value) }
}

/// Parse and check the structure; families by name, in order of appearance.
fn parse_exposition(text: &str) -> Vec<(String, Family)> {
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    let mut families: Vec<(String, Family)> = Vec::new();
    let mut helped: HashSet<String> = HashSet::new();
    for line in text.lines() {
        assert!(!line.is_empty(), "empty line");
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            assert!(valid_name(name));
            assert!(name.starts_with("dreamos_bridge_"), "{name}");
            assert!(!help.is_empty());
            assert!(helped.insert(name.to_owned()), "HELP twice for {name}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "{kind}");
            assert!(helped.contains(name), "TYPE before HELP for {name}");
            assert!(families.iter().all(|f| f.0 != name), "TYPE twice for {name}");
            families.push((name.to_owned(), Family { kind: kind.to_owned(), samples: Vec::new() }));
        } else {
            assert!(!line.starts_with('#'), "unknown comment {line:?}");
            let s = parse_sample(line);
            // Samples belong to the family declared last (contiguity).
            let (fname, family) = families.last_mut().expect("sample before any TYPE");
            let base = if family.kind == "histogram" {
                ["_bucket", "_sum", "_count"].iter().find_map(|suf| s.name.strip_suffix(suf)).unwrap_or(&s.name)
            } else {
                &s.name
            };
            assert_eq!(base, fname, "sample {line:?} outside its family");
            if family.kind == "counter" {
                assert!(s.name.ends_with("_total"), "{}", s.name);
                assert!(s.value >= 0.0);
            }
            family.samples.push(s);
        }
    }
    for (name, f) in &families {
        assert!(!f.samples.is_empty(), "family {name} without samples");
        if f.kind == "histogram" {
            check_histogram(name, f);
        }
    }
    families
}

/// Buckets cumulative and ending at +Inf = _count, for every label set.
fn check_histogram(name: &str, f: &Family) {
    type Series = (Vec<(f64, f64)>, Option<f64>, Option<f64>);
    let mut series: BTreeMap<Vec<(String, String)>, Series> = BTreeMap::new();
    for s in &f.samples {
        let mut labels = s.labels.clone();
        let le = labels.iter().position(|(k, _)| k == "le").map(|i| labels.remove(i).1);
        let e = series.entry(labels).or_default();
        if s.name.ends_with("_bucket") {
            e.0.push((parse_value(&le.expect("bucket without le")), s.value));
        } else if s.name.ends_with("_sum") {
            e.1 = Some(s.value);
        } else {
            e.2 = Some(s.value);
        }
    }
    for (labels, (buckets, sum, count)) in series {
        let count = count.unwrap_or_else(|| panic!("{name} {labels:?}: no _count"));
        assert!(sum.is_some(), "{name} {labels:?}: no _sum");
        for w in buckets.windows(2) {
            assert!(w[0].0 < w[1].0, "{name}: le not increasing");
            assert!(w[0].1 <= w[1].1, "{name}: buckets not cumulative");
        }
        let last = buckets.last().unwrap();
        assert!(last.0.is_infinite(), "{name}: last bucket is not +Inf");
        assert_eq!(last.1, count, "{name} {labels:?}: +Inf bucket != _count");
    }
}

fn find<'a>(fams: &'a [(String, Family)], name: &str) -> &'a Family {
    &fams.iter().find(|f| f.0 == name).unwrap_or_else(|| panic!("no family {name}")).1
}

fn value(f: &Family, name: &str, labels: &[(&str, &str)]) -> f64 {
    f.samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
        })
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
        .value
}

#[test]
fn prometheus_text_parses_and_matches_the_counters() {
    let m = collector();
    let r = m.route("agents.echo");
    for (i, outcome) in
        [Outcome::Ok, Outcome::Ok, Outcome::Failed(ErrorCode::Timeout), Outcome::Cancelled].into_iter().enumerate()
    {
        m.totals().accept();
        r.accept();
        let latency = Duration::from_micros(10u64.pow(i as u32 + 1)); // 10 µs .. 10 ms
        m.totals().finish(outcome, latency);
        r.finish(outcome, latency);
    }
    m.totals().accept();
    m.totals().finish(Outcome::Rejected(ErrorCode::RateLimited), Duration::from_secs(100)); // overflow bucket
    let s = m.service("weather");
    s.request(true, Duration::from_millis(3));
    s.set_breaker(BreakerState::Open);
    m.dead_lettered(true);

    let text = m.prometheus_text();
    let fams = parse_exposition(&text);
    let accepted = find(&fams, "dreamos_bridge_messages_accepted_total");
    assert_eq!(accepted.kind, "counter");
    assert_eq!(value(accepted, "dreamos_bridge_messages_accepted_total", &[]), 5.0);
    let finished = find(&fams, "dreamos_bridge_route_messages_finished_total");
    let route_ok =
        value(finished, "dreamos_bridge_route_messages_finished_total", &[("route", "agents.echo"), ("outcome", "ok")]);
    assert_eq!(route_ok, 2.0);
    let errors = find(&fams, "dreamos_bridge_messages_errors_total");
    assert_eq!(value(errors, "dreamos_bridge_messages_errors_total", &[("code", "RATE_LIMITED")]), 1.0);
    assert_eq!(value(errors, "dreamos_bridge_messages_errors_total", &[("code", "TIMEOUT")]), 1.0);
    assert_eq!(errors.samples.len(), ErrorCode::ALL.len());
    assert_eq!(
        value(
            find(&fams, "dreamos_bridge_messages_rate_limited_total"),
            "dreamos_bridge_messages_rate_limited_total",
            &[]
        ),
        1.0
    );

    let lat = find(&fams, "dreamos_bridge_message_latency_seconds");
    assert_eq!(lat.kind, "histogram");
    let n = "dreamos_bridge_message_latency_seconds";
    assert_eq!(value(lat, &format!("{n}_count"), &[]), 5.0);
    assert_eq!(value(lat, &format!("{n}_bucket"), &[("le", "0.00001")]), 1.0);
    assert_eq!(value(lat, &format!("{n}_bucket"), &[("le", "0.01")]), 4.0);
    assert_eq!(value(lat, &format!("{n}_bucket"), &[("le", "60")]), 4.0);
    assert_eq!(value(lat, &format!("{n}_bucket"), &[("le", "+Inf")]), 5.0);
    let sum = value(lat, &format!("{n}_sum"), &[]);
    assert!((sum - 100.01111).abs() < 1e-9, "{sum}");

    let svc = find(&fams, "dreamos_bridge_service_breaker_state");
    assert_eq!(svc.kind, "gauge");
    assert_eq!(value(svc, "dreamos_bridge_service_breaker_state", &[("service", "weather")]), 2.0);
    let svc_lat = find(&fams, "dreamos_bridge_service_request_latency_seconds");
    assert_eq!(value(svc_lat, "dreamos_bridge_service_request_latency_seconds_count", &[("service", "weather")]), 1.0);
    assert_eq!(
        value(
            find(&fams, "dreamos_bridge_dead_letters_evicted_total"),
            "dreamos_bridge_dead_letters_evicted_total",
            &[]
        ),
        1.0
    );
    // No principal was seen: no principal families at all.
    assert!(!text.contains("dreamos_bridge_principal_"));
}

#[test]
fn prometheus_label_values_are_escaped() {
    let m = collector();
    let weird = "bob \"the\" \\admin\\\nline2";
    let p = m.principal(weird);
    p.accept();
    p.finish(Outcome::Ok, Duration::from_micros(5));
    m.service("svc\"x").request(true, Duration::from_micros(5));
    let text = m.prometheus_text();
    assert!(
        text.contains(
            "dreamos_bridge_principal_messages_accepted_total{principal=\"bob \\\"the\\\" \\\\admin\\\\\\nline2\"} 1\n"
        ),
        "{text}"
    );
    assert!(text.contains("dreamos_bridge_service_requests_total{service=\"svc\\\"x\"} 1\n"));
    // Every line parses, and the parser recovers the original value.
    let fams = parse_exposition(&text);
    let f = find(&fams, "dreamos_bridge_principal_messages_accepted_total");
    assert_eq!(f.samples[0].labels, vec![("principal".to_owned(), weird.to_owned())]);
    let mut out = String::new();
    prometheus::escape_label(&mut out, "a\\b\"c\nd");
    assert_eq!(out, "a\\\\b\\\"c\\nd");
}

#[test]
fn prometheus_families_are_contiguous_with_many_scopes() {
    let m = collector();
    for i in 0..5 {
        let r = m.route(&format!("r{i}.>"));
        r.accept();
        r.finish(Outcome::Ok, Duration::from_micros(i * 100 + 1));
        let p = m.principal(&format!("p{i}"));
        p.accept();
        p.finish(Outcome::Failed(ErrorCode::UpstreamError), Duration::from_millis(i));
        m.service(&format!("s{i}")).request(i % 2 == 0, Duration::from_millis(i));
    }
    let fams = parse_exposition(&m.prometheus_text());
    let routes = find(&fams, "dreamos_bridge_route_messages_accepted_total");
    assert_eq!(routes.samples.len(), 5);
    let hist = find(&fams, "dreamos_bridge_principal_message_latency_seconds");
    // 25 exported bounds + Inf + sum + count, per principal.
    assert_eq!(hist.samples.len(), 5 * 28);
}

// ---------------------------------------------------------------------
// Alerts.

fn run(route: &MessageStats, ok: u64, failed: u64) {
    for _ in 0..ok {
        route.accept();
        route.finish(Outcome::Ok, Duration::from_micros(10));
    }
    for _ in 0..failed {
        route.accept();
        route.finish(Outcome::Failed(ErrorCode::HandlerError), Duration::from_micros(10));
    }
}

fn drain(rx: &mut tokio::sync::broadcast::Receiver<Alert>) -> Vec<Alert> {
    let mut out = Vec::new();
    while let Ok(a) = rx.try_recv() {
        out.push(a);
    }
    out
}

#[test]
fn alert_fires_once_below_threshold_and_again_after_recovery() {
    let m = collector_with(true, 0.9);
    let mut rx = m.subscribe_alerts();
    let r = m.route("agents.flaky");

    run(&r, 15, 5); // 75% over 20
    m.evaluate_alerts();
    let alerts = drain(&mut rx);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!((a.scope.as_str(), a.name.as_str()), ("route", "agents.flaky"));
    assert_eq!((a.failed, a.total), (5, 20));
    assert!((a.success_ratio - 0.75).abs() < 1e-9);
    assert_eq!(a.threshold, 0.9);

    // Still failing: no repeat.
    run(&r, 0, 20);
    m.evaluate_alerts();
    assert!(drain(&mut rx).is_empty());

    // Healthy: nothing, and the alert resets.
    run(&r, 50, 0);
    m.evaluate_alerts();
    m.evaluate_alerts(); // an empty interval changes nothing
    assert!(drain(&mut rx).is_empty());

    // Failing again: a new alert, judged on this interval only.
    run(&r, 10, 10);
    m.evaluate_alerts();
    let alerts = drain(&mut rx);
    assert_eq!(alerts.len(), 1);
    assert_eq!((alerts[0].failed, alerts[0].total), (10, 20));
}

#[test]
fn no_alert_above_threshold_or_with_too_few_messages() {
    let m = collector_with(true, 0.9);
    let mut rx = m.subscribe_alerts();
    let r = m.route("agents.ok");
    run(&r, 95, 5); // 95%
    m.evaluate_alerts();
    run(&r, 9, 0); // exactly at the threshold is healthy: 9/10 = 0.9
    run(&r, 0, 1);
    m.evaluate_alerts();
    let few = m.route("agents.rare");
    run(&few, 0, MIN_ALERT_MESSAGES - 1); // all failed, but too few
    m.evaluate_alerts();
    // Cancelled and rejected messages are not judged.
    let rej = m.route("agents.busy");
    for _ in 0..50 {
        rej.accept();
        rej.finish(Outcome::Rejected(ErrorCode::QueueFull), Duration::ZERO);
        rej.accept();
        rej.finish(Outcome::Cancelled, Duration::ZERO);
    }
    m.evaluate_alerts();
    assert!(drain(&mut rx).is_empty());
}

#[test]
fn few_messages_accumulate_into_the_next_judged_interval_only_by_delta() {
    // The too-few interval is consumed (deltas advance), so nine failures
    // followed by ten successes is a healthy interval, not 10/19.
    let m = collector_with(true, 0.9);
    let mut rx = m.subscribe_alerts();
    let r = m.route("agents.x");
    run(&r, 0, 9);
    m.evaluate_alerts();
    run(&r, 10, 0);
    m.evaluate_alerts();
    assert!(drain(&mut rx).is_empty());
}

#[test]
fn service_alerts_and_throughput() {
    let m = collector_with(true, 0.5);
    let mut rx = m.subscribe_alerts();
    let s = m.service("weather");
    for i in 0..12 {
        s.request(i < 3, Duration::from_millis(1)); // 25% ok
    }
    m.evaluate_alerts();
    let alerts = drain(&mut rx);
    assert_eq!(alerts.len(), 1);
    assert_eq!((alerts[0].scope.as_str(), alerts[0].name.as_str()), ("service", "weather"));
    assert_eq!((alerts[0].failed, alerts[0].total), (9, 12));
    let t = m.snapshot().services["weather"].throughput.clone();
    assert_eq!(t.requests, 12);
    assert!(t.interval_secs > 0.0);
    assert!((t.per_sec - 12.0 / t.interval_secs).abs() < 1e-6);
    s.request(true, Duration::from_millis(1));
    m.evaluate_alerts();
    assert_eq!(m.snapshot().services["weather"].throughput.requests, 1);
    assert!(drain(&mut rx).is_empty());
}

#[test]
fn evaluating_without_subscribers_is_fine() {
    let m = collector_with(true, 0.9);
    run(&m.route("a"), 0, 20);
    m.evaluate_alerts();
    // A subscriber that joins later gets only later alerts.
    let mut rx = m.subscribe_alerts();
    m.evaluate_alerts();
    assert!(drain(&mut rx).is_empty());
}
