//! MetricsCollector: counters, gauges and latency histograms.
//!
//! Every message passes through [`MessageStats::accept`] and
//! [`MessageStats::finish`] for the bridge-wide totals, its route and (with
//! security on) its principal, so those two calls are lock-free: a few
//! relaxed/release atomic adds on preallocated counters, no allocation. Maps
//! from names to stats are only touched when a route is registered, a
//! service is set up, or a principal is looked up (a concurrent-map read).
//!
//! Reading is the slow side: [`MetricsCollector::snapshot`] copies every
//! counter into a serde-serializable [`MetricsSnapshot`] (the JSON the
//! bindings hand out), [`MetricsCollector::prometheus_text`] renders the
//! Prometheus text format, and [`MetricsCollector::evaluate_alerts`]
//! compares each route's and service's success ratio over the last interval
//! with `monitoring.alert_threshold`.
//!
//! # Snapshot shape (stable)
//!
//! ```json
//! {
//!   "metrics_enabled": true,
//!   "uptime_secs": 12.5,
//!   "totals": MESSAGES,
//!   "routes": {"agents.echo": MESSAGES, ...},
//!   "principals": {"planner": MESSAGES, ...},
//!   "services": {"weather": SERVICE, ...},
//!   "dead_letters": {"stored": 0, "evicted": 0}
//! }
//! MESSAGES = {
//!   "accepted": 0, "ok": 0, "failed": 0, "cancelled": 0, "rejected": 0,
//!   "rate_limited": 0, "in_flight": 0, "queue_depth": 0,
//!   "errors": {"CONFIG": 0, ..., "TIMEOUT": 0, ...},   // every ErrorCode
//!   "latency": LATENCY
//! }
//! LATENCY = {"count": 0, "sum_us": 0.0, "mean_us": 0.0, "p50_us": 0.0, "p90_us": 0.0, "p99_us": 0.0}
//! SERVICE = {
//!   "active_connections": 0, "connection_errors": 0, "requests": 0, "failures": 0,
//!   "retries": 0, "breaker": "closed", "health": "up", "latency": LATENCY,
//!   "throughput": {"interval_secs": 30.0, "requests": 0, "per_sec": 0.0}
//! }
//! ```
//!
//! In every `MESSAGES` scope `accepted = ok + failed + cancelled + rejected +
//! in_flight` holds exactly (the snapshot reads outcomes before `accepted`),
//! so once nothing is in flight `accepted = ok + failed + cancelled +
//! rejected`. `errors` counts failed and rejected messages by code;
//! `rate_limited` is the rejections with `RATE_LIMITED`. Latency is the time
//! from acceptance to the outcome, whatever the outcome. Counters count
//! since the collector was created; `routes` keeps a pattern's counters
//! after it is unregistered (and resumes them if it comes back).
//!
//! # Alerts
//!
//! A route's success ratio over an interval is `ok / (ok + failed)` of the
//! messages that finished in it (cancelled and rejected ones are the
//! caller's or the admission policy's doing, not the route's); a service's
//! is `(requests - failures) / requests` of its attempts. Below
//! `alert_threshold` with at least [`MIN_ALERT_MESSAGES`] judged messages,
//! an [`Alert`] goes to every [`MetricsCollector::subscribe_alerts`]
//! receiver and to `tracing::warn!`, once: the scope alerts again only after
//! an interval at or above the threshold.
//!
//! # `metrics_enabled: false`
//!
//! Every recording call returns at once. `route` and `principal` hand out
//! one shared inert scope (no map access), so the snapshot has no routes or
//! principals and zero totals; services still show breaker and health.

mod alerts;
mod histogram;
mod prometheus;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::config::MonitoringConfig;
use crate::error::ErrorCode;

pub use histogram::LatencySnapshot;
use histogram::{Histogram, HistogramCounts};

/// At most this many principals get their own counters; later ones share
/// the [`OTHER_PRINCIPALS`] scope, so that many distinct OIDC subjects
/// cannot grow the metrics (and the Prometheus series) without bound.
pub const MAX_PRINCIPALS: usize = 1_000;

/// Name of the scope shared by principals past [`MAX_PRINCIPALS`].
pub const OTHER_PRINCIPALS: &str = "(other)";

/// A route or service needs at least this many finished messages (route:
/// ok + failed) or requests (service) in an interval before its success
/// ratio is judged: a single failure among three calls is noise, not an
/// outage.
pub const MIN_ALERT_MESSAGES: u64 = 10;

const CODES: usize = ErrorCode::ALL.len();

/// How one accepted message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered and answered.
    Ok,
    /// Delivery failed (handler error, upstream error, timeout, unavailable).
    Failed(ErrorCode),
    /// The caller stopped waiting (future dropped, task cancelled).
    Cancelled,
    /// Refused before delivery (invalid, auth, not found, limits, shutdown).
    Rejected(ErrorCode),
}

/// Position of a code in [`ErrorCode::ALL`] (its declaration order).
#[inline]
fn code_index(code: ErrorCode) -> usize {
    code as usize
}

/// Message counters for one scope (all, a route, a principal).
pub struct MessageStats {
    enabled: bool,
    accepted: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    rejected: AtomicU64,
    rate_limited: AtomicU64,
    errors: [AtomicU64; CODES],
    queue_depth: AtomicU64,
    latency: Histogram,
}

impl std::fmt::Debug for MessageStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.snapshot();
        f.debug_struct("MessageStats")
            .field("enabled", &self.enabled)
            .field("accepted", &s.accepted)
            .field("ok", &s.ok)
            .field("failed", &s.failed)
            .field("cancelled", &s.cancelled)
            .field("rejected", &s.rejected)
            .field("in_flight", &s.in_flight)
            .finish_non_exhaustive()
    }
}

impl Default for MessageStats {
    fn default() -> Self {
        MessageStats::with_enabled(true)
    }
}

impl MessageStats {
    fn with_enabled(enabled: bool) -> Self {
        MessageStats {
            enabled,
            accepted: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            queue_depth: AtomicU64::new(0),
            latency: Histogram::default(),
        }
    }

    /// Count one accepted message.
    #[inline]
    pub fn accept(&self) {
        if self.enabled {
            self.accepted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Count how it ended and how long it took.
    #[inline]
    pub fn finish(&self, outcome: Outcome, latency: Duration) {
        if !self.enabled {
            return;
        }
        // Latency and code first, the outcome last with Release: a reader
        // that sees the outcome (Acquire) also sees everything before it,
        // including this scope's `accept`.
        self.latency.record(latency);
        let counter = match outcome {
            Outcome::Ok => &self.ok,
            Outcome::Failed(code) => {
                self.errors[code_index(code)].fetch_add(1, Ordering::Relaxed);
                &self.failed
            }
            Outcome::Cancelled => &self.cancelled,
            Outcome::Rejected(code) => {
                self.errors[code_index(code)].fetch_add(1, Ordering::Relaxed);
                if code == ErrorCode::RateLimited {
                    self.rate_limited.fetch_add(1, Ordering::Relaxed);
                }
                &self.rejected
            }
        };
        counter.fetch_add(1, Ordering::Release);
    }

    /// Set the queue-depth gauge.
    #[inline]
    pub fn set_queue_depth(&self, depth: usize) {
        if self.enabled {
            self.queue_depth.store(depth as u64, Ordering::Relaxed);
        }
    }

    /// Messages delivered and answered so far.
    pub fn ok_count(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Messages whose delivery failed so far.
    pub fn failed_count(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// A consistent copy (see the module docs for the invariant).
    pub fn snapshot(&self) -> MessageSnapshot {
        self.read().summary()
    }

    fn read(&self) -> MessageCounts {
        // Outcomes before `accepted`, with Acquire: every finish we count
        // has its accept visible, so in_flight never goes negative.
        let ok = self.ok.load(Ordering::Acquire);
        let failed = self.failed.load(Ordering::Acquire);
        let cancelled = self.cancelled.load(Ordering::Acquire);
        let rejected = self.rejected.load(Ordering::Acquire);
        let accepted = self.accepted.load(Ordering::Acquire);
        let finished = ok + failed + cancelled + rejected;
        MessageCounts {
            accepted,
            ok,
            failed,
            cancelled,
            rejected,
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            in_flight: accepted.saturating_sub(finished),
            queue_depth: self.queue_depth.load(Ordering::Relaxed),
            errors: std::array::from_fn(|i| self.errors[i].load(Ordering::Relaxed)),
            latency: self.latency.read(),
        }
    }
}

/// Plain copy of a [`MessageStats`], shared by the JSON and Prometheus views.
#[derive(Debug, Clone)]
struct MessageCounts {
    accepted: u64,
    ok: u64,
    failed: u64,
    cancelled: u64,
    rejected: u64,
    rate_limited: u64,
    in_flight: u64,
    queue_depth: u64,
    errors: [u64; CODES],
    latency: HistogramCounts,
}

impl MessageCounts {
    fn summary(&self) -> MessageSnapshot {
        MessageSnapshot {
            accepted: self.accepted,
            ok: self.ok,
            failed: self.failed,
            cancelled: self.cancelled,
            rejected: self.rejected,
            rate_limited: self.rate_limited,
            in_flight: self.in_flight,
            queue_depth: self.queue_depth,
            errors: ErrorCode::ALL.iter().map(|c| (c.as_str().to_owned(), self.errors[code_index(*c)])).collect(),
            latency: self.latency.summary(),
        }
    }
}

/// Message counters of one scope in a [`MetricsSnapshot`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MessageSnapshot {
    /// Messages received (each call the scope saw).
    pub accepted: u64,
    /// Delivered and answered.
    pub ok: u64,
    /// Delivery failed.
    pub failed: u64,
    /// The caller stopped waiting.
    pub cancelled: u64,
    /// Refused before delivery.
    pub rejected: u64,
    /// Rejected with `RATE_LIMITED` (also counted in `rejected` and `errors`).
    pub rate_limited: u64,
    /// Accepted and not finished yet.
    pub in_flight: u64,
    /// Messages waiting for admission (routes; the sum of routes in `totals`).
    pub queue_depth: u64,
    /// Failed and rejected messages by error code; every code is present.
    pub errors: BTreeMap<String, u64>,
    /// Time from acceptance to outcome.
    pub latency: LatencySnapshot,
}

/// Circuit-breaker states, as a gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls fail fast.
    Open,
    /// A probe is allowed.
    HalfOpen,
}

impl BreakerState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => BreakerState::HalfOpen,
            2 => BreakerState::Open,
            _ => BreakerState::Closed,
        }
    }

    /// The Prometheus gauge value: 0 closed, 1 half-open, 2 open.
    pub fn as_gauge(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

/// Health of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Healthy.
    Up,
    /// Answering, with errors.
    Degraded,
    /// Not answering.
    Down,
}

impl HealthStatus {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => HealthStatus::Down,
            1 => HealthStatus::Degraded,
            _ => HealthStatus::Up,
        }
    }

    /// The Prometheus gauge value: 0 down, 1 degraded, 2 up.
    pub fn as_gauge(self) -> u8 {
        match self {
            HealthStatus::Down => 0,
            HealthStatus::Degraded => 1,
            HealthStatus::Up => 2,
        }
    }
}

/// Per-service connection metrics.
///
/// With `metrics_enabled: false` the counters stay at zero, but the breaker
/// and health states are still kept (they are rare events, and the
/// snapshot would be misleading without them).
pub struct ServiceStats {
    enabled: bool,
    active: AtomicI64,
    connection_errors: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
    retries: AtomicU64,
    latency: Histogram,
    breaker: AtomicU8,
    health: AtomicU8,
    created: Instant,
    /// Requests in the last evaluated interval and its length (µs; 0: no
    /// interval evaluated yet). Written by `evaluate_alerts`.
    interval_requests: AtomicU64,
    interval_us: AtomicU64,
}

impl std::fmt::Debug for ServiceStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (requests, failures) = self.requests_failures();
        f.debug_struct("ServiceStats")
            .field("enabled", &self.enabled)
            .field("requests", &requests)
            .field("failures", &failures)
            .field("breaker", &self.breaker())
            .field("health", &self.health())
            .finish_non_exhaustive()
    }
}

impl Default for ServiceStats {
    fn default() -> Self {
        ServiceStats::with_enabled(true)
    }
}

impl ServiceStats {
    fn with_enabled(enabled: bool) -> Self {
        ServiceStats {
            enabled,
            active: AtomicI64::new(0),
            connection_errors: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            latency: Histogram::default(),
            breaker: AtomicU8::new(BreakerState::Closed.as_gauge()),
            health: AtomicU8::new(HealthStatus::Up.as_gauge()),
            created: Instant::now(),
            interval_requests: AtomicU64::new(0),
            interval_us: AtomicU64::new(0),
        }
    }

    /// A connection (request in flight) started.
    #[inline]
    pub fn connection_opened(&self) {
        if self.enabled {
            self.active.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// It ended.
    #[inline]
    pub fn connection_closed(&self) {
        if self.enabled {
            self.active.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// A connect failure.
    #[inline]
    pub fn connection_error(&self) {
        if self.enabled {
            self.connection_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One request attempt ended.
    #[inline]
    pub fn request(&self, ok: bool, latency: Duration) {
        if !self.enabled {
            return;
        }
        self.latency.record(latency);
        if !ok {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        // Requests after failures (Release), read in the opposite order, so
        // a reader never sees more failures than requests.
        self.requests.fetch_add(1, Ordering::Release);
    }

    /// One retry scheduled.
    #[inline]
    pub fn retry(&self) {
        if self.enabled {
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Breaker state changed.
    pub fn set_breaker(&self, state: BreakerState) {
        self.breaker.store(state.as_gauge(), Ordering::Relaxed);
    }

    /// Health changed.
    pub fn set_health(&self, status: HealthStatus) {
        self.health.store(status.as_gauge(), Ordering::Relaxed);
    }

    /// The current breaker state.
    pub fn breaker(&self) -> BreakerState {
        BreakerState::from_u8(self.breaker.load(Ordering::Relaxed))
    }

    /// The current health status.
    pub fn health(&self) -> HealthStatus {
        HealthStatus::from_u8(self.health.load(Ordering::Relaxed))
    }

    /// A copy of every metric of this service.
    pub fn snapshot(&self) -> ServiceSnapshot {
        self.read().summary()
    }

    /// (requests, failures), failures never above requests.
    fn requests_failures(&self) -> (u64, u64) {
        let requests = self.requests.load(Ordering::Acquire);
        let failures = self.failures.load(Ordering::Relaxed);
        (requests, failures.min(requests))
    }

    fn read(&self) -> ServiceCounts {
        let (requests, failures) = self.requests_failures();
        let interval_us = self.interval_us.load(Ordering::Relaxed);
        // Until the first alert evaluation, the "interval" is the lifetime.
        let (interval_secs, interval_requests) = if interval_us == 0 {
            (self.created.elapsed().as_secs_f64(), requests)
        } else {
            (interval_us as f64 / 1e6, self.interval_requests.load(Ordering::Relaxed))
        };
        ServiceCounts {
            active: self.active.load(Ordering::Relaxed).max(0) as u64,
            connection_errors: self.connection_errors.load(Ordering::Relaxed),
            requests,
            failures,
            retries: self.retries.load(Ordering::Relaxed),
            breaker: self.breaker(),
            health: self.health(),
            latency: self.latency.read(),
            interval_secs,
            interval_requests,
        }
    }
}

/// Plain copy of a [`ServiceStats`].
#[derive(Debug, Clone)]
struct ServiceCounts {
    active: u64,
    connection_errors: u64,
    requests: u64,
    failures: u64,
    retries: u64,
    breaker: BreakerState,
    health: HealthStatus,
    latency: HistogramCounts,
    interval_secs: f64,
    interval_requests: u64,
}

impl ServiceCounts {
    fn per_sec(&self) -> f64 {
        if self.interval_secs > 0.0 { self.interval_requests as f64 / self.interval_secs } else { 0.0 }
    }

    fn summary(&self) -> ServiceSnapshot {
        ServiceSnapshot {
            active_connections: self.active,
            connection_errors: self.connection_errors,
            requests: self.requests,
            failures: self.failures,
            retries: self.retries,
            breaker: self.breaker,
            health: self.health,
            latency: self.latency.summary(),
            throughput: ThroughputSnapshot {
                interval_secs: self.interval_secs,
                requests: self.interval_requests,
                per_sec: self.per_sec(),
            },
        }
    }
}

/// Metrics of one service in a [`MetricsSnapshot`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSnapshot {
    /// Requests in flight to the service now.
    pub active_connections: u64,
    /// Connect failures.
    pub connection_errors: u64,
    /// Request attempts (each retry is one more).
    pub requests: u64,
    /// Attempts that failed.
    pub failures: u64,
    /// Retries scheduled.
    pub retries: u64,
    /// Circuit-breaker state.
    pub breaker: BreakerState,
    /// Health status.
    pub health: HealthStatus,
    /// Attempt latency.
    pub latency: LatencySnapshot,
    /// Requests in the last alert-evaluation interval
    /// (`monitoring.health_check_interval`); before the first one ends,
    /// since the service was set up.
    pub throughput: ThroughputSnapshot,
}

/// Requests over an interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ThroughputSnapshot {
    /// Length of the interval.
    pub interval_secs: f64,
    /// Requests in it.
    pub requests: u64,
    /// `requests / interval_secs` (0 for an empty interval).
    pub per_sec: f64,
}

/// Dead-letter counters in a [`MetricsSnapshot`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterSnapshot {
    /// Messages put into the dead-letter store.
    pub stored: u64,
    /// Dead letters dropped because the store was full.
    pub evicted: u64,
}

/// An alert event: a route's or service's success ratio over the last
/// interval fell below `monitoring.alert_threshold`. Sent once when the
/// ratio crosses below; again only after the scope has recovered (an
/// interval at or above the threshold) and falls again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// `route` or `service`.
    pub scope: String,
    /// Route pattern or service name.
    pub name: String,
    /// Success ratio over the last interval.
    pub success_ratio: f64,
    /// The configured threshold.
    pub threshold: f64,
    /// Failed messages (route) or requests (service) in the interval.
    pub failed: u64,
    /// Messages judged (route: ok + failed) or requests (service) in the interval.
    pub total: u64,
    /// Length of the interval.
    pub interval_secs: f64,
}

/// A point-in-time copy of every metric. See the module docs for the JSON shape.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// `monitoring.metrics_enabled`; when false every counter stays 0.
    pub metrics_enabled: bool,
    /// Seconds since the collector (the bridge) was created.
    pub uptime_secs: f64,
    /// Every message the bridge accepted.
    pub totals: MessageSnapshot,
    /// By route pattern.
    pub routes: BTreeMap<String, MessageSnapshot>,
    /// By authenticated principal (security on).
    pub principals: BTreeMap<String, MessageSnapshot>,
    /// By service name.
    pub services: BTreeMap<String, ServiceSnapshot>,
    /// The dead-letter store.
    pub dead_letters: DeadLetterSnapshot,
}

/// The collector.
#[derive(Debug)]
pub struct MetricsCollector {
    enabled: bool,
    threshold: f64,
    started: Instant,
    totals: Arc<MessageStats>,
    /// Handed out for routes and principals when metrics are off, so the
    /// hot path neither records nor touches a map.
    inert: Arc<MessageStats>,
    routes: ScopeMap<MessageStats>,
    principals: ScopeMap<MessageStats>,
    services: ScopeMap<ServiceStats>,
    dead_stored: AtomicU64,
    dead_evicted: AtomicU64,
    alerts: tokio::sync::broadcast::Sender<Alert>,
    alert_state: Mutex<alerts::AlertState>,
}

/// Scope name → stats. foldhash rather than SipHash: the principal map is
/// read on every call, keys are short, and the names come from
/// authenticated identities (at most [`MAX_PRINCIPALS`] of them).
type ScopeMap<T> = DashMap<String, Arc<T>, foldhash::fast::RandomState>;

/// Alert events a slow subscriber may fall behind by before it misses some.
const ALERT_CHANNEL_CAPACITY: usize = 256;

impl MetricsCollector {
    /// From the `monitoring` section.
    pub fn new(cfg: &MonitoringConfig) -> Self {
        let enabled = cfg.metrics_enabled;
        let started = Instant::now();
        MetricsCollector {
            enabled,
            threshold: cfg.alert_threshold,
            started,
            totals: Arc::new(MessageStats::with_enabled(enabled)),
            inert: Arc::new(MessageStats::with_enabled(false)),
            routes: ScopeMap::default(),
            principals: ScopeMap::default(),
            services: ScopeMap::default(),
            dead_stored: AtomicU64::new(0),
            dead_evicted: AtomicU64::new(0),
            alerts: tokio::sync::broadcast::channel(ALERT_CHANNEL_CAPACITY).0,
            alert_state: Mutex::new(alerts::AlertState::new(started)),
        }
    }

    /// Whether metrics are recorded (`monitoring.metrics_enabled`).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Bridge-wide message counters.
    pub fn totals(&self) -> &Arc<MessageStats> {
        &self.totals
    }

    /// Counters of one route pattern (the same ones for the same pattern;
    /// a shared inert scope when metrics are off).
    pub fn route(&self, pattern: &str) -> Arc<MessageStats> {
        if !self.enabled {
            return self.inert.clone();
        }
        Self::scope(&self.routes, pattern, self.enabled)
    }

    /// Counters of one principal. Called per message: a map read when the
    /// principal was seen before; nothing when metrics are off. Past
    /// [`MAX_PRINCIPALS`] names, new ones share [`OTHER_PRINCIPALS`].
    pub fn principal(&self, name: &str) -> Arc<MessageStats> {
        if !self.enabled {
            return self.inert.clone();
        }
        if let Some(s) = self.principals.get(name) {
            return s.clone();
        }
        let name = if self.principals.len() >= MAX_PRINCIPALS { OTHER_PRINCIPALS } else { name };
        Self::scope(&self.principals, name, self.enabled)
    }

    fn scope(map: &ScopeMap<MessageStats>, name: &str, enabled: bool) -> Arc<MessageStats> {
        if let Some(s) = map.get(name) {
            return s.clone();
        }
        map.entry(name.to_owned()).or_insert_with(|| Arc::new(MessageStats::with_enabled(enabled))).clone()
    }

    /// Metrics of one service (the same ones for the same name).
    pub fn service(&self, name: &str) -> Arc<ServiceStats> {
        if let Some(s) = self.services.get(name) {
            return s.clone();
        }
        self.services
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(ServiceStats::with_enabled(self.enabled)))
            .clone()
    }

    /// Count a message put into the dead-letter store (`evicted`: one fell out).
    pub fn dead_lettered(&self, evicted: bool) {
        if !self.enabled {
            return;
        }
        self.dead_stored.fetch_add(1, Ordering::Relaxed);
        if evicted {
            self.dead_evicted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A dead letter dropped to make room, not a new one.
    pub fn dead_letter_evicted(&self) {
        if self.enabled {
            self.dead_evicted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Snapshot of everything.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let routes: BTreeMap<String, MessageSnapshot> =
            self.routes.iter().map(|e| (e.key().clone(), e.value().snapshot())).collect();
        let mut totals = self.totals.snapshot();
        totals.queue_depth = routes.values().map(|r| r.queue_depth).sum();
        MetricsSnapshot {
            metrics_enabled: self.enabled,
            uptime_secs: self.started.elapsed().as_secs_f64(),
            totals,
            routes,
            principals: self.principals.iter().map(|e| (e.key().clone(), e.value().snapshot())).collect(),
            services: self.services.iter().map(|e| (e.key().clone(), e.value().snapshot())).collect(),
            dead_letters: DeadLetterSnapshot {
                stored: self.dead_stored.load(Ordering::Relaxed),
                evicted: self.dead_evicted.load(Ordering::Relaxed),
            },
        }
    }

    /// Prometheus text exposition (format 0.0.4).
    pub fn prometheus_text(&self) -> String {
        let sorted = |map: &ScopeMap<MessageStats>| {
            let mut v: Vec<(String, MessageCounts)> = map.iter().map(|e| (e.key().clone(), e.value().read())).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let routes = sorted(&self.routes);
        let mut totals = self.totals.read();
        totals.queue_depth = routes.iter().map(|r| r.1.queue_depth).sum();
        let mut services: Vec<(String, ServiceCounts)> =
            self.services.iter().map(|e| (e.key().clone(), e.value().read())).collect();
        services.sort_by(|a, b| a.0.cmp(&b.0));
        prometheus::render(&prometheus::Input {
            uptime_secs: self.started.elapsed().as_secs_f64(),
            totals: &totals,
            routes: &routes,
            principals: &sorted(&self.principals),
            services: &services,
            dead_stored: self.dead_stored.load(Ordering::Relaxed),
            dead_evicted: self.dead_evicted.load(Ordering::Relaxed),
        })
    }

    /// Receive alert events.
    pub fn subscribe_alerts(&self) -> tokio::sync::broadcast::Receiver<Alert> {
        self.alerts.subscribe()
    }

    /// Compare the last interval's success ratios with the threshold, send
    /// an [`Alert`] for each route or service that fell below it, and update
    /// each service's throughput. The bridge calls this every
    /// `monitoring.health_check_interval`.
    pub fn evaluate_alerts(&self) {
        if !self.enabled {
            return;
        }
        let mut state = self.alert_state.lock();
        let interval = state.begin_interval(Instant::now());
        let mut fired = Vec::new();
        for e in self.routes.iter() {
            let (ok, failed) = e.value().ok_failed();
            let (_, judged) = state.judge(alerts::Scope::Route, e.key(), ok, ok + failed, self.threshold, interval);
            fired.extend(judged);
        }
        for e in self.services.iter() {
            let s = e.value();
            let (requests, failures) = s.requests_failures();
            let (delta, judged) =
                state.judge(alerts::Scope::Service, e.key(), requests - failures, requests, self.threshold, interval);
            s.interval_requests.store(delta, Ordering::Relaxed);
            s.interval_us.store(u64::try_from(interval.as_micros()).unwrap_or(u64::MAX).max(1), Ordering::Relaxed);
            fired.extend(judged);
        }
        drop(state);
        for alert in fired {
            tracing::warn!(
                scope = %alert.scope, name = %alert.name, success_ratio = alert.success_ratio,
                threshold = alert.threshold, failed = alert.failed, total = alert.total,
                "success ratio fell below monitoring.alert_threshold"
            );
            // No subscriber is fine: the warning above is the record.
            let _ = self.alerts.send(alert);
        }
    }
}

impl MessageStats {
    /// (ok, failed), read in the snapshot's order.
    fn ok_failed(&self) -> (u64, u64) {
        (self.ok.load(Ordering::Acquire), self.failed.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests;
