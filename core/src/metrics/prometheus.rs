//! The Prometheus text exposition format (version 0.0.4).
//!
//! Rendering is kept apart from collection so the format rules live in one
//! place: each family's `# HELP` and `# TYPE` come once, before its samples,
//! and all samples of a family are contiguous; label values escape `\`, `"`
//! and newlines; histograms are cumulative `_bucket{le=...}` series ending
//! in `le="+Inf"` (equal to `_count`), then `_sum` and `_count`, in seconds.
//!
//! Names: `dreamos_bridge_*` for bridge-wide series,
//! `dreamos_bridge_route_*{route=...}`, `dreamos_bridge_principal_*{principal=...}`
//! and `dreamos_bridge_service_*{service=...}` for the scoped ones.

use std::fmt::{Display, Write};

use super::histogram::{BOUND_COUNT, BOUNDS_NS, HistogramCounts, exported, ns_as_secs};
use super::{MessageCounts, ServiceCounts, code_index};
use crate::error::ErrorCode;

/// Everything one exposition shows, already read from the atomics.
pub(super) struct Input<'a> {
    pub uptime_secs: f64,
    pub totals: &'a MessageCounts,
    pub routes: &'a [(String, MessageCounts)],
    pub principals: &'a [(String, MessageCounts)],
    pub services: &'a [(String, ServiceCounts)],
    pub dead_stored: u64,
    pub dead_evicted: u64,
}

const PREFIX: &str = "dreamos_bridge_";

pub(super) fn render(input: &Input<'_>) -> String {
    let mut w = Writer { out: String::with_capacity(16 * 1024) };
    w.header("uptime_seconds", "gauge", "Seconds since the bridge was created.");
    w.sample("uptime_seconds", &[], input.uptime_secs);

    let totals = [(String::new(), input.totals.clone())];
    messages(&mut w, "", None, &totals, true);
    messages(&mut w, "route_", Some("route"), input.routes, true);
    messages(&mut w, "principal_", Some("principal"), input.principals, false);
    services(&mut w, input.services);

    w.header("dead_letters_stored_total", "counter", "Messages put into the dead-letter store.");
    w.sample("dead_letters_stored_total", &[], input.dead_stored);
    w.header("dead_letters_evicted_total", "counter", "Dead letters dropped because the store was full.");
    w.sample("dead_letters_evicted_total", &[], input.dead_evicted);
    w.out
}

/// One family per counter, each holding every scope of the group.
fn messages(w: &mut Writer, scope: &str, label: Option<&str>, entries: &[(String, MessageCounts)], with_queue: bool) {
    if entries.is_empty() {
        return;
    }
    let base = |value: &str| -> Vec<(&str, String)> { label.map(|l| vec![(l, value.to_owned())]).unwrap_or_default() };
    let with = |value: &str, k: &'static str, v: &str| -> Vec<(&str, String)> {
        let mut l = base(value);
        l.push((k, v.to_owned()));
        l
    };

    let name = format!("{scope}messages_accepted_total");
    w.header(&name, "counter", "Messages accepted (received).");
    for (n, c) in entries {
        w.sample(&name, &base(n), c.accepted);
    }

    let name = format!("{scope}messages_finished_total");
    w.header(&name, "counter", "Messages finished, by outcome (ok, failed, cancelled, rejected).");
    for (n, c) in entries {
        for (outcome, v) in [("ok", c.ok), ("failed", c.failed), ("cancelled", c.cancelled), ("rejected", c.rejected)] {
            w.sample(&name, &with(n, "outcome", outcome), v);
        }
    }

    let name = format!("{scope}messages_errors_total");
    w.header(&name, "counter", "Failed and rejected messages, by error code.");
    for (n, c) in entries {
        for code in ErrorCode::ALL {
            w.sample(&name, &with(n, "code", code.as_str()), c.errors[code_index(code)]);
        }
    }

    let name = format!("{scope}messages_rate_limited_total");
    w.header(&name, "counter", "Messages rejected with RATE_LIMITED.");
    for (n, c) in entries {
        w.sample(&name, &base(n), c.rate_limited);
    }

    let name = format!("{scope}messages_in_flight");
    w.header(&name, "gauge", "Messages accepted and not finished yet.");
    for (n, c) in entries {
        w.sample(&name, &base(n), c.in_flight);
    }

    if with_queue {
        let name = format!("{scope}queue_depth");
        w.header(&name, "gauge", "Messages waiting for admission.");
        for (n, c) in entries {
            w.sample(&name, &base(n), c.queue_depth);
        }
    }

    let name = format!("{scope}message_latency_seconds");
    w.header(&name, "histogram", "Time from accepting a message to its outcome.");
    for (n, c) in entries {
        w.histogram(&name, &base(n), &c.latency);
    }
}

fn services(w: &mut Writer, entries: &[(String, ServiceCounts)]) {
    if entries.is_empty() {
        return;
    }
    let l = |n: &str| vec![("service", n.to_owned())];
    type Family = (&'static str, &'static str, &'static str, fn(&ServiceCounts) -> f64);
    let families: [Family; 8] = [
        ("service_active_connections", "gauge", "Requests in flight to the service.", |c| c.active as f64),
        ("service_connection_errors_total", "counter", "Connect failures.", |c| c.connection_errors as f64),
        ("service_requests_total", "counter", "Request attempts (each retry is one more).", |c| c.requests as f64),
        ("service_failures_total", "counter", "Request attempts that failed.", |c| c.failures as f64),
        ("service_retries_total", "counter", "Retries scheduled.", |c| c.retries as f64),
        ("service_breaker_state", "gauge", "Circuit breaker: 0 closed, 1 half-open, 2 open.", |c| {
            f64::from(c.breaker.as_gauge())
        }),
        ("service_health", "gauge", "Health: 0 down, 1 degraded, 2 up.", |c| f64::from(c.health.as_gauge())),
        ("service_throughput_per_second", "gauge", "Requests per second over the last health-check interval.", |c| {
            c.per_sec()
        }),
    ];
    for (name, kind, help, value) in families {
        w.header(name, kind, help);
        for (n, c) in entries {
            w.sample(name, &l(n), value(c));
        }
    }
    let name = "service_request_latency_seconds";
    w.header(name, "histogram", "Latency of request attempts to the service.");
    for (n, c) in entries {
        w.histogram(name, &l(n), &c.latency);
    }
}

struct Writer {
    out: String,
}

impl Writer {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        self.out.push_str("# HELP ");
        self.out.push_str(PREFIX);
        self.out.push_str(name);
        self.out.push(' ');
        escape_help(&mut self.out, help);
        self.out.push('\n');
        let _ = writeln!(self.out, "# TYPE {PREFIX}{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, String)], value: impl Display) {
        self.out.push_str(PREFIX);
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_label(&mut self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, String)], h: &HistogramCounts) {
        let bucket = format!("{name}_bucket");
        let mut le = labels.to_vec();
        le.push(("le", String::new()));
        let last = le.len() - 1;
        let mut cumulative = 0u64;
        for (i, (&count, &bound)) in h.buckets.iter().zip(BOUNDS_NS.iter()).enumerate() {
            cumulative += count;
            if exported(i) {
                le[last].1 = ns_as_secs(bound);
                self.sample(&bucket, &le, cumulative);
            }
        }
        cumulative += h.buckets[BOUND_COUNT];
        le[last].1 = "+Inf".to_owned();
        self.sample(&bucket, &le, cumulative);
        self.sample(&format!("{name}_sum"), labels, ns_as_secs(h.sum_ns));
        self.sample(&format!("{name}_count"), labels, cumulative);
    }
}

/// Label values: `\` → `\\`, `"` → `\"`, newline → `\n`.
pub(crate) fn escape_label(out: &mut String, value: &str) {
    for ch in value.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text: `\` → `\\`, newline → `\n` (quotes stay).
fn escape_help(out: &mut String, text: &str) {
    for ch in text.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}
