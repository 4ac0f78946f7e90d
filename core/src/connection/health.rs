//! HealthMonitor: is each service up, degraded or down?
//!
//! Two kinds of evidence, combined per service: *active* checks (a `GET` on
//! the service's `health_check` path every `health_check_interval`, run by
//! the connection manager's background task) and *passive* signals (the
//! outcome of every real request). A service is **down** when its breaker
//! is open, its last active check failed, or (without a health check) its
//! last few requests could not reach it; **degraded** when the breaker is
//! probing or a notable share of recent requests failed; **up** otherwise.
//!
//! The passive signal is recorded on every delivery, from any worker
//! thread. A healthy service's window only ever pushes a success out of a
//! window of successes, so that case writes nothing but the latency
//! average (one atomic store) and takes no lock; the lock is for changes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;

use crate::message::now_millis;
use crate::metrics::{BreakerState, HealthStatus, ServiceStats};

/// Requests remembered for the passive error rate.
const WINDOW: usize = 50;
/// Share of failed recent requests that makes a service degraded.
const DEGRADED_RATE: f64 = 0.1;
/// Consecutive unreachable requests that make a service without a health
/// check down.
const PASSIVE_DOWN: u32 = 3;

/// Health of one service as reported by `BridgeManager::health()`.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceHealth {
    /// up, degraded or down.
    pub status: HealthStatus,
    /// The circuit breaker's state.
    pub breaker: BreakerState,
    /// Share of the last requests that failed (0 to 1).
    pub error_rate: f64,
    /// Smoothed latency of recent successful requests, in milliseconds.
    pub latency_ms: Option<f64>,
    /// Requests in flight now.
    pub active_connections: usize,
    /// When the last active check ran, ms since the Unix epoch.
    pub last_check: Option<u64>,
    /// Whether the last active check passed.
    pub last_check_ok: Option<bool>,
    /// Why the last failure happened (never holds a credential).
    pub last_error: Option<String>,
}

/// What kind of failure a request had, for the passive signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Answered with success.
    Ok,
    /// Answered, with an error status (the service is reachable).
    Failed,
    /// Could not be reached or timed out.
    Unreachable,
}

/// Health state of one service.
#[derive(Debug)]
pub struct HealthMonitor {
    service: String,
    has_check: bool,
    stats: Arc<ServiceStats>,
    /// The last active check failed: read on every delivery, so an atomic
    /// rather than the state lock.
    check_failed: AtomicBool,
    /// The window is full of successes and nothing is unreachable: a
    /// success changes nothing but the latency. Written under `state`'s
    /// lock, read without it.
    steady: AtomicBool,
    /// Smoothed latency of successes in ms, as `f64` bits ([`NO_LATENCY`]:
    /// none yet). Updated by load and store, not under a lock: two
    /// simultaneous successes may keep only one of their samples, which a
    /// smoothed figure can afford.
    latency_ms: AtomicU64,
    state: Mutex<State>,
}

/// `latency_ms` before the first success.
const NO_LATENCY: u64 = u64::MAX;

#[derive(Debug)]
struct State {
    window: VecDeque<bool>,
    unreachable_streak: u32,
    last_check: Option<u64>,
    last_check_ok: Option<bool>,
    last_error: Option<String>,
    reported: HealthStatus,
}

impl HealthMonitor {
    /// A monitor; `has_check`: the service has an active `health_check`.
    pub fn new(service: &str, has_check: bool, stats: Arc<ServiceStats>) -> Self {
        stats.set_health(HealthStatus::Up);
        HealthMonitor {
            service: service.to_string(),
            has_check,
            stats,
            check_failed: AtomicBool::new(false),
            steady: AtomicBool::new(false),
            latency_ms: AtomicU64::new(NO_LATENCY),
            state: Mutex::new(State {
                window: VecDeque::with_capacity(WINDOW),
                unreachable_streak: 0,
                last_check: None,
                last_check_ok: None,
                last_error: None,
                reported: HealthStatus::Up,
            }),
        }
    }

    /// Record one real request (passive signal).
    pub fn observe(&self, signal: Signal, latency: Duration, error: Option<&str>) {
        if signal == Signal::Ok {
            let ms = latency.as_secs_f64() * 1000.0;
            let old = self.latency_ms.load(Ordering::Relaxed);
            let new = if old == NO_LATENCY { ms } else { f64::from_bits(old) * 0.8 + ms * 0.2 };
            self.latency_ms.store(new.to_bits(), Ordering::Relaxed);
            // (Linearised before any failure that clears the flag after this read.)
            if error.is_none() && self.steady.load(Ordering::Acquire) {
                return;
            }
        }
        let mut s = self.state.lock();
        if s.window.len() == WINDOW {
            s.window.pop_front();
        }
        s.window.push_back(signal == Signal::Ok);
        match signal {
            Signal::Ok | Signal::Failed => s.unreachable_streak = 0,
            Signal::Unreachable => s.unreachable_streak = s.unreachable_streak.saturating_add(1),
        }
        if let Some(e) = error {
            s.last_error = Some(e.to_string());
        }
        self.update_steady(&s);
    }

    /// Recompute the lock-free flag (under the lock).
    fn update_steady(&self, s: &State) {
        let steady = s.unreachable_streak == 0 && s.window.len() == WINDOW && s.window.iter().all(|ok| *ok);
        if self.steady.load(Ordering::Relaxed) != steady {
            self.steady.store(steady, Ordering::Release);
        }
    }

    /// Record an active check.
    pub fn checked(&self, ok: bool, error: Option<String>) {
        let mut s = self.state.lock();
        s.last_check = Some(now_millis());
        s.last_check_ok = Some(ok);
        self.check_failed.store(!ok, Ordering::Relaxed);
        if ok {
            s.unreachable_streak = 0;
        }
        if error.is_some() {
            s.last_error = error;
        }
        self.update_steady(&s);
    }

    /// Did the last active check fail? Deliveries are refused while it
    /// did: the service said it cannot serve, and sending it requests
    /// anyway would only burn the caller's deadline and the retry budget.
    /// The next passing check lifts this.
    pub fn check_failed(&self) -> bool {
        self.check_failed.load(Ordering::Relaxed)
    }

    /// The status last reported (cheap: an atomic read, no lock; every
    /// delivery asks).
    pub fn last_reported(&self) -> HealthStatus {
        self.stats.health()
    }

    /// The current health, given the breaker's state and the connections in use.
    pub fn report(&self, breaker: BreakerState, active_connections: usize) -> ServiceHealth {
        let mut s = self.state.lock();
        let failed = s.window.iter().filter(|ok| !**ok).count();
        let error_rate = if s.window.is_empty() { 0.0 } else { failed as f64 / s.window.len() as f64 };
        let status = if breaker == BreakerState::Open
            || s.last_check_ok == Some(false)
            || (!self.has_check && s.unreachable_streak >= PASSIVE_DOWN)
        {
            HealthStatus::Down
        } else if breaker == BreakerState::HalfOpen || error_rate >= DEGRADED_RATE || s.unreachable_streak > 0 {
            HealthStatus::Degraded
        } else {
            HealthStatus::Up
        };
        if status != s.reported {
            s.reported = status;
            self.stats.set_health(status);
            match status {
                HealthStatus::Up => tracing::info!(service = %self.service, "service is up"),
                HealthStatus::Degraded => tracing::warn!(service = %self.service, error_rate, "service is degraded"),
                HealthStatus::Down => {
                    tracing::warn!(service = %self.service, last_error = ?s.last_error, "service is down")
                }
            }
        }
        ServiceHealth {
            status,
            breaker,
            error_rate,
            latency_ms: match self.latency_ms.load(Ordering::Relaxed) {
                NO_LATENCY => None,
                bits => Some(f64::from_bits(bits)),
            },
            active_connections,
            last_check: s.last_check,
            last_check_ok: s.last_check_ok,
            last_error: s.last_error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_checks_drive_up_and_down() {
        let h = HealthMonitor::new("t", true, Arc::default());
        assert_eq!(h.report(BreakerState::Closed, 0).status, HealthStatus::Up);
        assert!(!h.check_failed());
        h.checked(false, Some("status 503".into()));
        assert!(h.check_failed());
        let r = h.report(BreakerState::Closed, 0);
        assert_eq!(r.status, HealthStatus::Down);
        assert_eq!(r.last_error.as_deref(), Some("status 503"));
        h.checked(true, None);
        assert!(!h.check_failed());
        assert_eq!(h.report(BreakerState::Closed, 0).status, HealthStatus::Up);
        assert_eq!(h.report(BreakerState::Open, 0).status, HealthStatus::Down);
        assert_eq!(h.report(BreakerState::HalfOpen, 0).status, HealthStatus::Degraded);
    }

    #[test]
    fn passive_signals_degrade_then_recover() {
        let h = HealthMonitor::new("t", false, Arc::default());
        for _ in 0..9 {
            h.observe(Signal::Ok, Duration::from_millis(5), None);
        }
        h.observe(Signal::Failed, Duration::from_millis(5), Some("status 500"));
        assert_eq!(h.report(BreakerState::Closed, 0).status, HealthStatus::Degraded);
        for _ in 0..3 {
            h.observe(Signal::Unreachable, Duration::ZERO, Some("connection refused"));
        }
        assert_eq!(h.report(BreakerState::Closed, 0).status, HealthStatus::Down);
        for _ in 0..WINDOW {
            h.observe(Signal::Ok, Duration::from_millis(5), None);
        }
        let r = h.report(BreakerState::Closed, 2);
        assert_eq!(r.status, HealthStatus::Up);
        assert_eq!(r.active_connections, 2);
        assert!(r.latency_ms.is_some());
    }

    #[test]
    fn a_steady_window_still_sees_failures() {
        let h = HealthMonitor::new("t", false, Arc::default());
        assert_eq!(h.report(BreakerState::Closed, 0).latency_ms, None);
        for _ in 0..(WINDOW * 2) {
            h.observe(Signal::Ok, Duration::from_millis(4), None);
        }
        assert!(h.steady.load(Ordering::Relaxed), "a window of successes is the lock-free state");
        let r = h.report(BreakerState::Closed, 0);
        assert_eq!((r.status, r.error_rate), (HealthStatus::Up, 0.0));
        assert!((r.latency_ms.unwrap() - 4.0).abs() < 1e-9);
        // Five of fifty: the degraded share, and more than enough for down.
        for _ in 0..5 {
            h.observe(Signal::Unreachable, Duration::ZERO, Some("connection refused"));
        }
        assert!(!h.steady.load(Ordering::Relaxed));
        let r = h.report(BreakerState::Closed, 0);
        assert_eq!(r.status, HealthStatus::Down);
        assert_eq!(r.last_error.as_deref(), Some("connection refused"));
        h.observe(Signal::Ok, Duration::from_millis(4), None);
        assert_eq!(h.report(BreakerState::Closed, 0).status, HealthStatus::Degraded, "failures stay in the window");
    }
}
