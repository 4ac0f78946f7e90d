//! MetricsCollector: counters, gauges and latency histograms.
//!
//! STUB: interface only; the full implementation replaces this file.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::config::MonitoringConfig;
use crate::error::ErrorCode;

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

/// Message counters for one scope (all, a route, a principal).
#[derive(Debug, Default)]
pub struct MessageStats {}

impl MessageStats {
    /// Count one accepted message.
    pub fn accept(&self) {}
    /// Count how it ended and how long it took.
    pub fn finish(&self, _outcome: Outcome, _latency: Duration) {}
    /// Set the queue-depth gauge.
    pub fn set_queue_depth(&self, _depth: usize) {}
}

/// Circuit-breaker states, as a gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls fail fast.
    Open,
    /// A probe is allowed.
    HalfOpen,
}

/// Health of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Healthy.
    Up,
    /// Answering, with errors.
    Degraded,
    /// Not answering.
    Down,
}

/// Per-service connection metrics.
#[derive(Debug, Default)]
pub struct ServiceStats {}

impl ServiceStats {
    /// A connection (request in flight) started.
    pub fn connection_opened(&self) {}
    /// It ended.
    pub fn connection_closed(&self) {}
    /// A connect failure.
    pub fn connection_error(&self) {}
    /// One request attempt ended.
    pub fn request(&self, _ok: bool, _latency: Duration) {}
    /// One retry scheduled.
    pub fn retry(&self) {}
    /// Breaker state changed.
    pub fn set_breaker(&self, _state: BreakerState) {}
    /// Health changed.
    pub fn set_health(&self, _status: HealthStatus) {}
}

/// An alert event.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// `route` or `service`.
    pub scope: String,
    /// Route pattern or service name.
    pub name: String,
    /// Success ratio over the last interval.
    pub success_ratio: f64,
    /// The configured threshold.
    pub threshold: f64,
}

/// A point-in-time copy of every metric.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MetricsSnapshot {}

/// The collector.
#[derive(Debug)]
pub struct MetricsCollector {
    totals: Arc<MessageStats>,
}

impl MetricsCollector {
    /// From the `monitoring` section.
    pub fn new(_cfg: &MonitoringConfig) -> Self {
        MetricsCollector { totals: Arc::default() }
    }
    /// Bridge-wide message counters.
    pub fn totals(&self) -> &Arc<MessageStats> {
        &self.totals
    }
    /// Counters of one route pattern.
    pub fn route(&self, _pattern: &str) -> Arc<MessageStats> {
        Arc::default()
    }
    /// Counters of one principal.
    pub fn principal(&self, _name: &str) -> Arc<MessageStats> {
        Arc::default()
    }
    /// Metrics of one service.
    pub fn service(&self, _name: &str) -> Arc<ServiceStats> {
        Arc::default()
    }
    /// Count a message put into the dead-letter store (`evicted`: one fell out).
    pub fn dead_lettered(&self, _evicted: bool) {}
    /// Snapshot of everything.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot::default()
    }
    /// Prometheus text exposition.
    pub fn prometheus_text(&self) -> String {
        String::new()
    }
    /// Receive alert events.
    pub fn subscribe_alerts(&self) -> tokio::sync::broadcast::Receiver<Alert> {
        tokio::sync::broadcast::channel(1).1
    }
    /// Compare the last interval's success ratios with the threshold.
    pub fn evaluate_alerts(&self) {}
}
