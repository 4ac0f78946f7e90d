//! The message flow end to end through `BridgeManager`, as a Rust user
//! drives it: lifecycle, every rejection stage, delivery outcomes, publish
//! with dead letters and replay, shutdown with work in flight, and routes
//! changing while messages flow.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dreamos_bridge::{
    Action, AnswerNow, BridgeError, BridgeManager, CallOptions, ErrorCode, Message, Payload, handler_fn,
    sync_handler_fn,
};
use serde_json::json;
use tokio::sync::Notify;

fn echo() -> Arc<dyn dreamos_bridge::Handler> {
    handler_fn(|m: Message| async move { Ok(m.payload) })
}

async fn running(yaml: &str) -> BridgeManager {
    let b = BridgeManager::from_yaml(yaml).unwrap();
    b.initialize().await.unwrap();
    b
}

fn code<T: std::fmt::Debug>(r: Result<T, BridgeError>) -> ErrorCode {
    r.unwrap_err().code()
}

#[tokio::test]
async fn embedded_default_routes_to_a_handler() {
    let b = BridgeManager::new_default();
    b.initialize().await.unwrap();
    b.register_route("agents.echo", echo()).unwrap();
    let reply = b.route(Message::new("agents.echo", json!({"x": [1, 2]})), CallOptions::default()).await.unwrap();
    assert_eq!(reply, Payload::Json(json!({"x": [1, 2]})));
    let bytes = b.route(Message::new("agents.echo", vec![0u8, 255]), CallOptions::default()).await.unwrap();
    assert_eq!(bytes, Payload::from(vec![0u8, 255]));
    b.shutdown().await;
}

#[tokio::test]
async fn not_running_is_shutdown() {
    let b = BridgeManager::new_default();
    b.register_route("a.b", echo()).unwrap();
    assert_eq!(code(b.route(Message::new("a.b", json!(1)), CallOptions::default()).await), ErrorCode::Shutdown);
    b.initialize().await.unwrap();
    b.route(Message::new("a.b", json!(1)), CallOptions::default()).await.unwrap();
    b.shutdown().await;
    assert_eq!(code(b.route(Message::new("a.b", json!(1)), CallOptions::default()).await), ErrorCode::Shutdown);
    assert_eq!(b.initialize().await.unwrap_err().code(), ErrorCode::Shutdown, "no restart after shutdown");
}

#[tokio::test]
async fn bad_input_is_invalid_message_and_the_bridge_keeps_working() {
    let b = running("limits:\n  max_payload_bytes: 1000\n  max_json_depth: 8\n").await;
    b.register_route("a.>", echo()).unwrap();
    let o = CallOptions::default;
    assert_eq!(code(b.route(Message::new("a..b", json!(1)), o()).await), ErrorCode::InvalidMessage);
    assert_eq!(code(b.route(Message::new("a.*", json!(1)), o()).await), ErrorCode::InvalidMessage);
    let big = json!({"s": "x".repeat(2000)});
    assert_eq!(code(b.route(Message::new("a.b", big), o()).await), ErrorCode::InvalidMessage);
    let mut deep = json!(1);
    for _ in 0..20 {
        deep = json!([deep]);
    }
    assert_eq!(code(b.route(Message::new("a.b", deep), o()).await), ErrorCode::InvalidMessage);
    let crlf = Message::new("a.b", json!(1)).with_header("x-note", "a\r\nSet-Cookie: evil");
    assert_eq!(code(b.route(crlf, o()).await), ErrorCode::InvalidMessage);
    // Still working.
    assert_eq!(b.route(Message::new("a.b", json!("ok")), o()).await.unwrap(), Payload::Json(json!("ok")));
    b.shutdown().await;
}

#[tokio::test]
async fn unknown_destination_is_route_not_found() {
    let b = running("").await;
    b.register_route("agents.echo", echo()).unwrap();
    let e = b.route(Message::new("agents.other", json!(1)), CallOptions::default()).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::RouteNotFound);
    assert!(e.message().contains("agents.other"));
    b.shutdown().await;
}

#[tokio::test]
async fn handler_errors_and_panics_are_handler_error() {
    let b = running("").await;
    b.register_route("h.fail", handler_fn(|_m| async { Err(BridgeError::handler("boom: bad input")) })).unwrap();
    b.register_route(
        "h.panic",
        handler_fn(|m: Message| async move {
            if m.payload.as_json().is_some() {
                panic!("handler bug");
            }
            Ok(m.payload)
        }),
    )
    .unwrap();
    let e = b.route(Message::new("h.fail", json!(1)), CallOptions::default()).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (ErrorCode::HandlerError, "boom: bad input"));
    assert_eq!(code(b.route(Message::new("h.panic", json!(1)), CallOptions::default()).await), ErrorCode::HandlerError);
    b.shutdown().await;
}

#[tokio::test]
async fn handlers_that_never_wait_answer_on_the_callers_thread() {
    let b = running("").await;
    b.register_route("sync.echo", sync_handler_fn(|m: Message| Ok(m.payload))).unwrap();
    b.register_route("sync.fail", sync_handler_fn(|_m| Err(BridgeError::handler("no such city")))).unwrap();
    b.register_route("sync.panic", sync_handler_fn(|_m| panic!("handler bug"))).unwrap();
    b.register_route("async.echo", echo()).unwrap();

    // Through route(): the same answers as any handler.
    let reply = b.route(Message::new("sync.echo", json!({"n": 1})), CallOptions::default()).await.unwrap();
    assert_eq!(reply, Payload::Json(json!({"n": 1})));
    let e = b.route(Message::new("sync.fail", json!(1)), CallOptions::default()).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (ErrorCode::HandlerError, "no such city"));
    assert_eq!(
        code(b.route(Message::new("sync.panic", json!(1)), CallOptions::default()).await),
        ErrorCode::HandlerError
    );

    // Staged, as bindings drive it: answered without any await.
    let mut call = b.begin(Action::Route, Message::new("sync.echo", json!(2)), &CallOptions::default()).unwrap();
    assert_eq!(call.try_admit().unwrap(), None);
    let AnswerNow::Answered(reply) = call.deliver_now() else { panic!("a sync handler answers at once") };
    assert_eq!(reply.unwrap(), Payload::Json(json!(2)));
    let mut call = b.begin(Action::Route, Message::new("sync.panic", json!(2)), &CallOptions::default()).unwrap();
    call.try_admit().unwrap();
    let AnswerNow::Answered(reply) = call.deliver_now() else { panic!("a sync handler answers at once") };
    assert_eq!(reply.unwrap_err().code(), ErrorCode::HandlerError);

    // An async handler, or a call not yet admitted, is handed back intact.
    let call = b.begin(Action::Route, Message::new("async.echo", json!(3)), &CallOptions::default()).unwrap();
    let AnswerNow::Later(mut call) = call.deliver_now() else { panic!("not admitted yet") };
    call.try_admit().unwrap();
    let AnswerNow::Later(call) = call.deliver_now() else { panic!("async handlers answer through deliver()") };
    assert_eq!(call.deliver().await.unwrap(), Payload::Json(json!(3)));

    let snap = b.metrics();
    assert_eq!((snap.routes["sync.echo"].accepted, snap.routes["sync.echo"].ok), (2, 2));
    assert_eq!(snap.routes["sync.panic"].errors["HANDLER_ERROR"], 2);
    assert_eq!((snap.routes["async.echo"].accepted, snap.routes["async.echo"].ok), (1, 1));
    assert_eq!(
        snap.totals.accepted,
        snap.totals.ok + snap.totals.failed + snap.totals.rejected + snap.totals.cancelled
    );
    b.shutdown().await;
}

#[tokio::test]
async fn a_binding_can_validate_its_own_payload_and_install_it_later() {
    let b = running("limits:\n  max_json_depth: 2\n").await;
    b.register_route("sync.echo", sync_handler_fn(|m: Message| Ok(m.payload))).unwrap();
    let opts = CallOptions::default();
    let empty = || Message::new("sync.echo", Payload::default());

    // The binding's check sees the engine's limits and its refusal is accounted.
    let e = b
        .begin_with(Action::Route, empty(), &opts, |limits| {
            assert_eq!(limits.max_json_depth, 2);
            Err(BridgeError::invalid("too deep for the binding"))
        })
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidMessage);
    // The envelope is still the engine's to check.
    let bad = Message::new("sync..echo", Payload::default());
    assert_eq!(code(b.begin_with(Action::Route, bad, &opts, |_| Ok(()))), ErrorCode::InvalidMessage);

    // Accepted: the converted payload goes in before delivery.
    let mut call = b.begin_with(Action::Route, empty(), &opts, |_| Ok(())).unwrap();
    call.set_payload(Payload::Json(json!({"n": [1]}))).unwrap();
    call.try_admit().unwrap();
    let AnswerNow::Answered(reply) = call.deliver_now() else { panic!("a sync handler answers at once") };
    assert_eq!(reply.unwrap(), Payload::Json(json!({"n": [1]})));
    // set_payload still enforces the limits.
    let mut call = b.begin_with(Action::Route, empty(), &opts, |_| Ok(())).unwrap();
    assert_eq!(code(call.set_payload(Payload::Json(json!([[[1]]])))), ErrorCode::InvalidMessage);
    drop(call);

    let snap = b.metrics();
    assert_eq!(snap.totals.errors["INVALID_MESSAGE"], 3);
    assert_eq!((snap.totals.ok, snap.totals.rejected, snap.totals.cancelled), (1, 3, 0));
    b.shutdown().await;
}

#[tokio::test]
async fn slow_handler_times_out() {
    let b = running("").await;
    b.register_route(
        "slow",
        handler_fn(|m: Message| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(m.payload)
        }),
    )
    .unwrap();
    let opts = CallOptions::default().timeout(Duration::from_millis(50));
    assert_eq!(code(b.route(Message::new("slow", json!(1)), opts).await), ErrorCode::Timeout);
    b.shutdown_with_grace(Duration::ZERO).await;
}

#[tokio::test]
async fn most_specific_route_wins() {
    let b = running("").await;
    for p in ["svc.>", "svc.*", "svc.weather"] {
        let tag = p.to_string();
        b.register_route(
            p,
            handler_fn(move |_m| {
                let tag = tag.clone();
                async move { Ok(Payload::Json(json!(tag))) }
            }),
        )
        .unwrap();
    }
    let r = |d: &'static str| {
        let b = b.clone();
        async move { b.route(Message::new(d, json!(null)), CallOptions::default()).await.unwrap() }
    };
    assert_eq!(r("svc.weather").await, Payload::Json(json!("svc.weather")));
    assert_eq!(r("svc.news").await, Payload::Json(json!("svc.*")));
    assert_eq!(r("svc.news.today").await, Payload::Json(json!("svc.>")));
    assert!(b.unregister_route("svc.weather"));
    assert_eq!(r("svc.weather").await, Payload::Json(json!("svc.*")));
    b.shutdown().await;
}

#[tokio::test]
async fn route_rate_limit_waits_then_rejects() {
    let b = running("routes:\n  - pattern: limited\n    rate_limit: 20\n    burst: 2\n").await;
    b.register_route("limited", echo()).unwrap();
    // Burst of 2, then the third waits ~50 ms for its cell: within a long deadline it succeeds.
    for _ in 0..3 {
        b.route(Message::new("limited", json!(1)), CallOptions::default()).await.unwrap();
    }
    // With a deadline shorter than the wait, it is rejected at once with a retry-after.
    let opts = CallOptions::default().timeout(Duration::from_millis(1));
    let mut rejected = None;
    for _ in 0..4 {
        if let Err(e) = b.route(Message::new("limited", json!(1)), opts.clone()).await {
            rejected = Some(e);
            break;
        }
    }
    let e = rejected.expect("a burst over the limit is rejected");
    assert_eq!(e.code(), ErrorCode::RateLimited);
    assert!(e.retry_after().is_some_and(|r| r > Duration::ZERO));
    b.shutdown().await;
}

#[tokio::test]
async fn a_caller_that_gives_up_waiting_for_a_cell_gives_it_back() {
    // A cell every 250 ms, burst 1.
    let b = running("routes:\n  - pattern: limited\n    rate_limit: 4\n    burst: 1\n").await;
    b.register_route("limited", echo()).unwrap();
    b.route(Message::new("limited", json!(1)), CallOptions::default()).await.unwrap();
    // This caller books the next cell (~250 ms away), then gives up.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(20),
        b.route(Message::new("limited", json!(2)), CallOptions::default()),
    )
    .await;
    assert!(gave_up.is_err(), "the second call was still waiting for its cell");
    // Its cell went back: the next caller waits at most 250 ms, within its
    // 375 ms deadline. Had the cell been kept, the wait would be ~500 ms and
    // the call refused at once with RATE_LIMITED.
    let opts = CallOptions::default().timeout(Duration::from_millis(375));
    b.route(Message::new("limited", json!(3)), opts).await.expect("the given-back cell is used");
    b.shutdown().await;
}

#[tokio::test]
async fn a_pattern_too_deep_to_walk_is_refused_and_the_bridge_works_on() {
    // 100,000 tokens: the route table would recurse once per token (a
    // stack overflow aborts the process: a WebSocket subscription could do it).
    let b = running("").await;
    let deep = vec!["a"; 100_000].join(".");
    let e = b.register_route(&deep, echo()).expect_err("refused");
    assert_eq!(e.code(), ErrorCode::InvalidMessage);
    b.register_route("a.>", echo()).unwrap();
    assert!(!b.unregister_route(&deep));
    b.route(Message::new("a.b", json!(1)), CallOptions::default()).await.unwrap();
    b.shutdown().await;
}

#[tokio::test]
async fn reject_mode_rejects_without_waiting() {
    let b = running(
        "bridge:\n  rate_limit_mode: reject\nroutes:\n  - pattern: limited\n    rate_limit: 1/min\n    burst: 1\n",
    )
    .await;
    b.register_route("limited", echo()).unwrap();
    b.route(Message::new("limited", json!(1)), CallOptions::default()).await.unwrap();
    let e = b.route(Message::new("limited", json!(1)), CallOptions::default()).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::RateLimited);
    assert!(e.retry_after().unwrap() > Duration::from_secs(30));
    b.shutdown().await;
}

#[tokio::test]
async fn full_queue_is_queue_full_after_waiting() {
    let b = running("routes:\n  - pattern: narrow\n    max_concurrency: 1\n    queue_size: 1\n").await;
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    b.register_route(
        "narrow",
        handler_fn(move |m: Message| {
            let g = g.clone();
            async move {
                g.notified().await;
                Ok(m.payload)
            }
        }),
    )
    .unwrap();
    let long = CallOptions::default().timeout(Duration::from_secs(10));
    let first = tokio::spawn({
        let b = b.clone();
        let o = long.clone();
        async move { b.route(Message::new("narrow", json!(1)), o).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = tokio::spawn({
        let b = b.clone();
        async move { b.route(Message::new("narrow", json!(2)), long).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let third =
        b.route(Message::new("narrow", json!(3)), CallOptions::default().timeout(Duration::from_millis(100))).await;
    assert_eq!(code(third), ErrorCode::QueueFull);
    gate.notify_one();
    assert_eq!(first.await.unwrap().unwrap(), Payload::Json(json!(1)));
    gate.notify_one();
    assert_eq!(second.await.unwrap().unwrap(), Payload::Json(json!(2)));
    b.shutdown().await;
}

#[tokio::test]
async fn publish_delivers_in_the_background() {
    let b = running("").await;
    let got = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let (g, d) = (got.clone(), done.clone());
    b.register_route(
        "events.>",
        handler_fn(move |_m| {
            let (g, d) = (g.clone(), d.clone());
            async move {
                g.fetch_add(1, Ordering::SeqCst);
                d.notify_one();
                Ok(Payload::default())
            }
        }),
    )
    .unwrap();
    let id = b.publish(Message::new("events.audit", json!({"who": "me"})), CallOptions::default()).await.unwrap();
    assert_eq!(id.get_version_num(), 7);
    tokio::time::timeout(Duration::from_secs(5), done.notified()).await.unwrap();
    assert_eq!(got.load(Ordering::SeqCst), 1);
    assert!(b.dead_letters().is_empty());
    b.shutdown().await;
}

#[tokio::test]
async fn failed_publish_is_dead_lettered_then_replayed() {
    let b = running("bridge:\n  retry_attempts: 2\n  retry_delay: 1ms\n").await;
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    b.register_route(
        "jobs.run",
        handler_fn(move |_m| {
            let a = a.clone();
            async move {
                a.fetch_add(1, Ordering::SeqCst);
                Err(BridgeError::handler("downstream is broken"))
            }
        }),
    )
    .unwrap();
    let id = b.publish(Message::new("jobs.run", json!({"n": 1})), CallOptions::default()).await.unwrap();
    let letter = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(d) = b.dead_letters().into_iter().next() {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(letter.id, id);
    assert_eq!(letter.attempts, 3, "first attempt plus retry_attempts");
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert_eq!(letter.error.code(), ErrorCode::HandlerError);
    assert_eq!(letter.message.payload, Payload::Json(json!({"n": 1})));

    // Replay while still broken: it goes back into the store.
    assert_eq!(code(b.replay(id).await), ErrorCode::HandlerError);
    assert_eq!(b.dead_letters().len(), 1);
    // Fix the handler; replay delivers and empties the store.
    b.register_route("jobs.run", echo()).unwrap();
    b.replay(id).await.unwrap();
    assert!(b.dead_letters().is_empty());
    assert_eq!(code(b.replay(id).await), ErrorCode::InvalidMessage, "unknown id");
    b.shutdown().await;
}

/// A publish whose handler fails: its dead letter, once it is stored.
async fn dead_letter_of(b: &BridgeManager, dest: &str) -> dreamos_bridge::DeadLetter {
    b.register_route(dest, handler_fn(|_m| async { Err(BridgeError::handler("downstream is broken")) })).unwrap();
    b.publish(Message::new(dest, json!({"n": 1})), CallOptions::default()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(d) = b.dead_letters().into_iter().next() {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_replay_refused_by_admission_keeps_the_dead_letter() {
    let b = running(
        "bridge:\n  retry_attempts: 0\n  rate_limit_mode: reject\nroutes:\n  - pattern: jobs.limited\n    rate_limit: 1/min\n    burst: 1\n",
    )
    .await;
    let letter = dead_letter_of(&b, "jobs.limited").await;
    b.register_route("jobs.limited", echo()).unwrap();
    // Another call takes the one token of the minute: the replay is refused.
    b.route(Message::new("jobs.limited", json!(1)), CallOptions::default()).await.unwrap();
    assert_eq!(code(b.replay(letter.id).await), ErrorCode::RateLimited);
    let kept = b.dead_letters();
    assert_eq!(kept.len(), 1, "the refused replay kept the letter");
    assert_eq!((kept[0].id, kept[0].attempts, kept[0].error.code()), (letter.id, 1, ErrorCode::HandlerError));
    b.shutdown().await;
}

#[tokio::test]
async fn a_cancelled_replay_keeps_the_dead_letter() {
    let b = running("bridge:\n  retry_attempts: 0\n").await;
    let letter = dead_letter_of(&b, "jobs.slow").await;
    b.register_route(
        "jobs.slow",
        handler_fn(|m: Message| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(m.payload)
        }),
    )
    .unwrap();
    // The caller gives up while the delivery is in progress.
    assert!(tokio::time::timeout(Duration::from_millis(100), b.replay(letter.id)).await.is_err());
    let kept = b.dead_letters();
    assert_eq!(kept.len(), 1, "the cancelled replay put the letter back");
    assert_eq!(
        (kept[0].id, kept[0].failed_at, kept[0].error.code()),
        (letter.id, letter.failed_at, ErrorCode::HandlerError)
    );
    assert_eq!(b.metrics().dead_letters.stored, 1, "putting it back is not a new dead letter");
    b.register_route("jobs.slow", echo()).unwrap();
    b.replay(letter.id).await.unwrap();
    assert!(b.dead_letters().is_empty());
    b.shutdown().await;
}

#[tokio::test]
async fn unregister_route_if_removes_only_what_the_caller_owns() {
    let b = running("").await;
    b.register_route("owned.route", echo()).unwrap();
    assert!(!b.unregister_route_if("owned.route", |_| false), "not ours: stays");
    assert_eq!(b.routes(), vec!["owned.route".to_string()]);
    assert!(!b.unregister_route_if("no.such.route", |_| true));
    assert!(b.unregister_route_if("owned.route", |_| true));
    assert!(b.routes().is_empty());
    b.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_a_wait_for_a_rate_limit_cell() {
    let b = running("routes:\n  - pattern: slow.rate\n    rate_limit: 10/min\n    burst: 1\n").await;
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    b.register_route(
        "slow.rate",
        handler_fn(move |m: Message| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                Ok(m.payload)
            }
        }),
    )
    .unwrap();
    b.route(Message::new("slow.rate", json!(1)), CallOptions::default()).await.unwrap();
    // The next cell is 6 s away: this call waits for it.
    let waiting = {
        let b = b.clone();
        tokio::spawn(async move { b.route(Message::new("slow.rate", json!(2)), CallOptions::default()).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.shutdown_with_grace(Duration::from_millis(100)).await;
    let r = tokio::time::timeout(Duration::from_secs(3), waiting).await.expect("the waiting call ended").unwrap();
    assert_eq!(code(r), ErrorCode::Shutdown);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler did not run after shutdown");
}

#[tokio::test]
async fn shutdown_answers_every_caller() {
    let b = running("").await;
    b.register_route(
        "work.>",
        handler_fn(|m: Message| async move {
            let ms = m.payload.as_json().and_then(|v| v.as_u64()).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(m.payload)
        }),
    )
    .unwrap();
    let long = CallOptions::default().timeout(Duration::from_secs(60));
    let quick = tokio::spawn({
        let (b, o) = (b.clone(), long.clone());
        async move { b.route(Message::new("work.quick", json!(20)), o).await }
    });
    let stuck: Vec<_> = (0..10)
        .map(|_| {
            let (b, o) = (b.clone(), long.clone());
            tokio::spawn(async move { b.route(Message::new("work.stuck", json!(60_000)), o).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    b.shutdown_with_grace(Duration::from_millis(300)).await;
    // The quick one finished within the grace period; the stuck ones got SHUTDOWN.
    assert_eq!(quick.await.unwrap().unwrap(), Payload::Json(json!(20)));
    for s in stuck {
        assert_eq!(code(s.await.unwrap()), ErrorCode::Shutdown);
    }
    assert!(!b.is_running());
    b.shutdown().await; // twice is harmless
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_change_while_routing() {
    let b = running("").await;
    b.register_route("race.stable", echo()).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = tokio::spawn({
        let (b, stop) = (b.clone(), stop.clone());
        async move {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                b.register_route("race.x", echo()).unwrap();
                b.register_route("race.>", echo()).unwrap();
                b.unregister_route("race.x");
                b.unregister_route("race.>");
                n += 1;
                tokio::task::yield_now().await;
            }
            n
        }
    });
    let mut routers = Vec::new();
    for i in 0..4 {
        let b = b.clone();
        routers.push(tokio::spawn(async move {
            let (mut ok, mut missing) = (0, 0);
            for j in 0..2000 {
                let dest = if j % 2 == 0 { "race.x" } else { "race.stable" };
                match b.route(Message::new(dest, json!([i, j])), CallOptions::default()).await {
                    Ok(p) => {
                        assert_eq!(p, Payload::Json(json!([i, j])));
                        ok += 1;
                    }
                    Err(e) => {
                        assert_eq!(e.code(), ErrorCode::RouteNotFound, "{e}");
                        assert_eq!(dest, "race.x");
                        missing += 1;
                    }
                }
            }
            (ok, missing)
        }));
    }
    let mut total = 0;
    for r in routers {
        let (ok, missing) = r.await.unwrap();
        assert!(ok >= 1000, "race.stable always resolves");
        total += ok + missing;
    }
    stop.store(true, Ordering::Relaxed);
    assert!(churn.await.unwrap() > 0);
    assert_eq!(total, 8000);
    b.shutdown().await;
}

#[tokio::test]
async fn cancelled_caller_frees_its_queue_slot() {
    let b = running("routes:\n  - pattern: one\n    max_concurrency: 1\n    queue_size: 4\n").await;
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    b.register_route(
        "one",
        handler_fn(move |m: Message| {
            let g = g.clone();
            async move {
                if m.payload == Payload::Json(json!("block")) {
                    g.notified().await;
                }
                Ok(m.payload)
            }
        }),
    )
    .unwrap();
    let blocker = tokio::spawn({
        let b = b.clone();
        async move { b.route(Message::new("one", json!("block")), CallOptions::default()).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    // A caller that gives up while queued.
    let waiting = tokio::spawn({
        let b = b.clone();
        async move { b.route(Message::new("one", json!("queued")), CallOptions::default()).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    waiting.abort();
    let _ = waiting.await;
    gate.notify_one();
    blocker.await.unwrap().unwrap();
    // The slot is free again.
    let r = b.route(Message::new("one", json!("next")), CallOptions::default().timeout(Duration::from_secs(2))).await;
    assert_eq!(r.unwrap(), Payload::Json(json!("next")));
    b.shutdown().await;
}
