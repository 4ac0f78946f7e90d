//! Metrics as a bridge user sees them: every call, whatever its outcome,
//! shows up once in the totals and (once resolved) in its route, the
//! snapshot balances, the Prometheus text agrees with it, and the bridge's
//! own evaluation loop raises alerts.

use std::time::Duration;

use dreamos_bridge::metrics::{Alert, MessageSnapshot};
use dreamos_bridge::{BridgeError, BridgeManager, CallOptions, Message, handler_fn};
use serde_json::json;

async fn running(yaml: &str) -> BridgeManager {
    let b = BridgeManager::from_yaml(yaml).unwrap();
    b.initialize().await.unwrap();
    b.register_route("agents.echo", handler_fn(|m: Message| async move { Ok(m.payload) })).unwrap();
    b.register_route("agents.fail", handler_fn(|_m: Message| async move { Err(BridgeError::handler("boom")) }))
        .unwrap();
    b.register_route(
        "agents.hang",
        handler_fn(|m: Message| async move {
            std::future::pending::<()>().await;
            Ok(m.payload)
        }),
    )
    .unwrap();
    b
}

fn balanced(s: &MessageSnapshot) {
    assert_eq!(s.in_flight, 0, "{s:?}");
    assert_eq!(s.accepted, s.ok + s.failed + s.cancelled + s.rejected, "{s:?}");
    assert_eq!(s.latency.count, s.accepted, "{s:?}");
}

#[tokio::test]
async fn every_outcome_is_counted_once_and_scopes_balance() {
    let b = running(
        "bridge:\n  rate_limit_mode: reject\nroutes:\n  - pattern: limited\n    rate_limit: 1/min\n    burst: 1\n",
    )
    .await;
    b.register_route("limited", handler_fn(|m: Message| async move { Ok(m.payload) })).unwrap();
    let o = CallOptions::default;
    for _ in 0..3 {
        b.route(Message::new("agents.echo", json!(1)), o()).await.unwrap();
    }
    for _ in 0..2 {
        b.route(Message::new("agents.fail", json!(1)), o()).await.unwrap_err();
    }
    b.route(Message::new("agents.nowhere", json!(1)), o()).await.unwrap_err();
    b.route(Message::new("agents..bad", json!(1)), o()).await.unwrap_err();
    b.route(Message::new("limited", json!(1)), o()).await.unwrap();
    b.route(Message::new("limited", json!(1)), o()).await.unwrap_err();
    // The caller gives up: the dropped call is cancelled.
    let gave_up = tokio::time::timeout(Duration::from_millis(20), b.route(Message::new("agents.hang", json!(1)), o()));
    assert!(gave_up.await.is_err());

    let snap = b.metrics();
    assert!(snap.metrics_enabled);
    let t = &snap.totals;
    balanced(t);
    assert_eq!((t.accepted, t.ok, t.failed, t.cancelled, t.rejected), (10, 4, 2, 1, 3));
    assert_eq!(t.rate_limited, 1);
    assert_eq!(t.errors["HANDLER_ERROR"], 2);
    assert_eq!(t.errors["ROUTE_NOT_FOUND"], 1);
    assert_eq!(t.errors["INVALID_MESSAGE"], 1);
    assert_eq!(t.errors["RATE_LIMITED"], 1);
    for s in snap.routes.values() {
        balanced(s);
    }
    let r = |p: &str| &snap.routes[p];
    assert_eq!((r("agents.echo").accepted, r("agents.echo").ok), (3, 3));
    assert_eq!((r("agents.fail").failed, r("agents.fail").errors["HANDLER_ERROR"]), (2, 2));
    assert_eq!((r("limited").ok, r("limited").rejected, r("limited").rate_limited), (1, 1, 1));
    assert_eq!(r("agents.hang").cancelled, 1);
    // Unresolved calls only reach the totals.
    let routed: u64 = snap.routes.values().map(|s| s.accepted).sum();
    assert_eq!(routed, 8);

    let text = b.metrics_text();
    assert!(text.contains("dreamos_bridge_messages_accepted_total 10\n"), "{text}");
    assert!(text.contains("dreamos_bridge_route_messages_finished_total{route=\"agents.echo\",outcome=\"ok\"} 3\n"));
    assert!(text.contains("dreamos_bridge_route_message_latency_seconds_count{route=\"agents.fail\"} 2\n"));
    assert!(
        text.contains("dreamos_bridge_route_message_latency_seconds_bucket{route=\"agents.fail\",le=\"+Inf\"} 2\n")
    );

    // The JSON the bindings hand out has the documented top level.
    let v = serde_json::to_value(&snap).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["metrics_enabled", "uptime_secs", "totals", "routes", "principals", "services", "dead_letters"]);
    b.shutdown().await;
}

#[tokio::test]
async fn dead_letters_are_counted() {
    let b = running("bridge:\n  retry_attempts: 0\n  dead_letter_capacity: 1\n").await;
    for _ in 0..2 {
        b.publish(Message::new("agents.fail", json!(1)), CallOptions::default()).await.unwrap();
    }
    for _ in 0..100 {
        if b.metrics().dead_letters.stored == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let snap = b.metrics();
    assert_eq!(snap.dead_letters.stored, 2);
    assert_eq!(snap.dead_letters.evicted, 1, "the store holds one: the second evicts the first");
    assert_eq!(b.dead_letters().len(), 1);
    b.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_bridge_raises_an_alert_when_a_route_fails() {
    let b = running("monitoring:\n  health_check_interval: 1\n  alert_threshold: 0.9\n").await;
    let mut alerts = b.subscribe_alerts();
    for _ in 0..12 {
        b.route(Message::new("agents.fail", json!(1)), CallOptions::default()).await.unwrap_err();
    }
    // The bridge's own loop evaluates every health_check_interval (paused
    // clock: it advances as soon as the runtime is idle).
    let alert: Alert = tokio::time::timeout(Duration::from_secs(5), alerts.recv()).await.unwrap().unwrap();
    assert_eq!((alert.scope.as_str(), alert.name.as_str()), ("route", "agents.fail"));
    assert_eq!((alert.failed, alert.total), (12, 12));
    assert_eq!(alert.success_ratio, 0.0);
    // Still failing, but no new alert at the next evaluations.
    for _ in 0..12 {
        b.route(Message::new("agents.fail", json!(1)), CallOptions::default()).await.unwrap_err();
    }
    assert!(tokio::time::timeout(Duration::from_secs(3), alerts.recv()).await.is_err());
    b.shutdown().await;
}

#[tokio::test]
async fn metrics_disabled_keeps_the_bridge_working_and_records_nothing() {
    let b = running("monitoring:\n  metrics_enabled: false\n").await;
    b.route(Message::new("agents.echo", json!(1)), CallOptions::default()).await.unwrap();
    b.route(Message::new("agents.fail", json!(1)), CallOptions::default()).await.unwrap_err();
    let snap = b.metrics();
    assert!(!snap.metrics_enabled);
    assert_eq!(snap.totals.accepted, 0);
    assert!(snap.routes.is_empty());
    assert!(b.metrics_text().contains("dreamos_bridge_messages_accepted_total 0\n"));
    b.shutdown().await;
}

#[tokio::test]
async fn the_queue_depth_gauge_drops_when_a_queued_caller_gives_up() {
    let b = running("routes:\n  - pattern: agents.hang\n    max_concurrency: 1\n    queue_size: 4\n").await;
    let o = CallOptions::default;
    // The first call holds the only slot; the second waits in the queue,
    // and its caller gives up.
    let holder = tokio::spawn({
        let b = b.clone();
        async move { b.route(Message::new("agents.hang", json!(1)), CallOptions::default()).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let queued = tokio::time::timeout(Duration::from_millis(50), b.route(Message::new("agents.hang", json!(2)), o()));
    assert!(queued.await.is_err(), "the second call was waiting");
    assert_eq!(b.metrics().routes["agents.hang"].queue_depth, 0);
    assert!(b.metrics_text().contains("dreamos_bridge_route_queue_depth{route=\"agents.hang\"} 0"));
    holder.abort();
    b.shutdown().await;
}
