//! Success-ratio alerting over evaluation intervals.
//!
//! Counters only grow, so the ratio "over the last interval" is computed
//! from the difference between this evaluation's counters and the previous
//! one's. Each route and service keeps whether it is currently alerting, so
//! an alert is an edge (healthy → below threshold), not a level repeated
//! every interval; an interval with fewer than [`MIN_ALERT_MESSAGES`]
//! judged messages leaves that state alone.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{Alert, MIN_ALERT_MESSAGES};

/// What kind of thing is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scope {
    Route,
    Service,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::Route => "route",
            Scope::Service => "service",
        }
    }
}

/// Counters seen at the previous evaluation, and whether an alert is active.
#[derive(Debug, Default)]
struct Track {
    good: u64,
    total: u64,
    firing: bool,
}

/// State kept between evaluations.
#[derive(Debug)]
pub(super) struct AlertState {
    last: Instant,
    routes: HashMap<String, Track>,
    services: HashMap<String, Track>,
}

impl AlertState {
    pub(super) fn new(started: Instant) -> Self {
        AlertState { last: started, routes: HashMap::new(), services: HashMap::new() }
    }

    /// Start an evaluation at `now`; the length of the interval it closes.
    pub(super) fn begin_interval(&mut self, now: Instant) -> Duration {
        let interval = now.saturating_duration_since(self.last);
        self.last = now;
        interval
    }

    /// Judge one scope from its cumulative `good` and `total` counters.
    /// Returns the interval's `total` delta and the alert to send, if any.
    pub(super) fn judge(
        &mut self,
        scope: Scope,
        name: &str,
        good: u64,
        total: u64,
        threshold: f64,
        interval: Duration,
    ) -> (u64, Option<Alert>) {
        let map = match scope {
            Scope::Route => &mut self.routes,
            Scope::Service => &mut self.services,
        };
        let track = match map.get_mut(name) {
            Some(t) => t,
            None => map.entry(name.to_owned()).or_default(),
        };
        let d_total = total.saturating_sub(track.total);
        let d_good = good.saturating_sub(track.good).min(d_total);
        track.good = good;
        track.total = total;
        if d_total < MIN_ALERT_MESSAGES {
            return (d_total, None);
        }
        let ratio = d_good as f64 / d_total as f64;
        if ratio >= threshold {
            if track.firing {
                track.firing = false;
                tracing::info!(scope = scope.as_str(), name, success_ratio = ratio, "success ratio recovered");
            }
            return (d_total, None);
        }
        if track.firing {
            return (d_total, None);
        }
        track.firing = true;
        let alert = Alert {
            scope: scope.as_str().to_owned(),
            name: name.to_owned(),
            success_ratio: ratio,
            threshold,
            failed: d_total - d_good,
            total: d_total,
            interval_secs: interval.as_secs_f64(),
        };
        (d_total, Some(alert))
    }
}
