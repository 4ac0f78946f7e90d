//! A lock-free latency histogram with fixed log-scale buckets.
//!
//! Recording must cost a few atomic adds on the message hot path, so the
//! bucket bounds are a compile-time table (no allocation, no lock, no
//! resizing) and a value lands in its bucket with one binary search.
//!
//! The bounds follow the Renard R10 series (1, 1.25, 1.6, 2, 2.5, 3.15, 4, 5,
//! 6.3, 8 per decade) from 1 µs to 8 s, then 10, 12.5, 16, 20, 25, 31.5, 40,
//! 50 and 60 s, plus an overflow bucket. Adjacent bounds differ by at most
//! 1.28×, which bounds the error of the interpolated percentiles. They are
//! held in nanoseconds so every bound is an exact integer, and the
//! Prometheus exposition prints them exactly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Number of finite bucket bounds.
pub(crate) const BOUND_COUNT: usize = 79;

/// Upper bounds (inclusive, nanoseconds) of the finite buckets.
pub(crate) const BOUNDS_NS: [u64; BOUND_COUNT] = build_bounds();

const R10: [u64; 10] = [1_000, 1_250, 1_600, 2_000, 2_500, 3_150, 4_000, 5_000, 6_300, 8_000];
const TAIL_NS: [u64; 9] = [
    10_000_000_000,
    12_500_000_000,
    16_000_000_000,
    20_000_000_000,
    25_000_000_000,
    31_500_000_000,
    40_000_000_000,
    50_000_000_000,
    60_000_000_000,
];

const fn build_bounds() -> [u64; BOUND_COUNT] {
    let mut out = [0u64; BOUND_COUNT];
    let mut i = 0;
    let mut scale = 1u64;
    let mut decade = 0;
    // 1 µs .. 8 s: seven decades of R10.
    while decade < 7 {
        let mut m = 0;
        while m < R10.len() {
            out[i] = R10[m] * scale;
            i += 1;
            m += 1;
        }
        scale *= 10;
        decade += 1;
    }
    let mut t = 0;
    while t < TAIL_NS.len() {
        out[i] = TAIL_NS[t];
        i += 1;
        t += 1;
    }
    out
}

/// Whether a bound is also exported to Prometheus: the 1-2.5-5 series
/// plus the last bound. Exporting a subset of the internal bounds keeps
/// the exposition short and still exact (buckets are cumulative).
pub(crate) fn exported(index: usize) -> bool {
    if index + 1 == BOUND_COUNT {
        return true;
    }
    let mut b = BOUNDS_NS[index];
    while b >= 10 && b.is_multiple_of(10) {
        b /= 10;
    }
    matches!(b, 1 | 25 | 5)
}

/// Counts of latencies per bucket and their sum.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BOUND_COUNT + 1],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { buckets: std::array::from_fn(|_| AtomicU64::new(0)), sum_ns: AtomicU64::new(0) }
    }
}

impl Histogram {
    /// Record one latency.
    #[inline]
    pub fn record(&self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        // First bound >= ns; past the last bound it is the overflow bucket.
        let index = BOUNDS_NS.partition_point(|&b| b < ns);
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// A plain copy of the counts.
    pub fn read(&self) -> HistogramCounts {
        HistogramCounts {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

/// A point-in-time copy of a [`Histogram`]. The total count is derived
/// from the buckets, so it always equals the last cumulative bucket.
#[derive(Debug, Clone)]
pub struct HistogramCounts {
    /// Per-bucket counts (not cumulative); the last is the overflow bucket.
    pub buckets: [u64; BOUND_COUNT + 1],
    /// Sum of all recorded latencies, nanoseconds.
    pub sum_ns: u64,
}

impl HistogramCounts {
    /// Number of recorded latencies.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The `q` quantile (0 < q <= 1) in microseconds, interpolated linearly
    /// inside its bucket; 0 when nothing was recorded. Values past the last
    /// bound (60 s) are reported as 60 s.
    pub fn quantile_us(&self, q: f64) -> f64 {
        let count = self.count();
        if count == 0 {
            return 0.0;
        }
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
        let mut below = 0u64;
        for (i, &c) in self.buckets.iter().enumerate() {
            if c == 0 || below + c < rank {
                below += c;
                continue;
            }
            if i == BOUND_COUNT {
                return BOUNDS_NS[BOUND_COUNT - 1] as f64 / 1_000.0;
            }
            let lower = if i == 0 { 0 } else { BOUNDS_NS[i - 1] } as f64;
            let upper = BOUNDS_NS[i] as f64;
            let within = (rank - below) as f64 / c as f64;
            return (lower + (upper - lower) * within) / 1_000.0;
        }
        BOUNDS_NS[BOUND_COUNT - 1] as f64 / 1_000.0
    }

    /// The summary that goes into the JSON snapshot.
    pub fn summary(&self) -> LatencySnapshot {
        let count = self.count();
        let sum_us = self.sum_ns as f64 / 1_000.0;
        LatencySnapshot {
            count,
            sum_us,
            mean_us: if count == 0 { 0.0 } else { sum_us / count as f64 },
            p50_us: self.quantile_us(0.50),
            p90_us: self.quantile_us(0.90),
            p99_us: self.quantile_us(0.99),
        }
    }
}

/// Latency summary of one scope, in microseconds. Every field is 0 while
/// `count` is 0. Percentiles are estimates from the log-scale buckets
/// (within about 25% of the true value; 60 s at most).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySnapshot {
    /// Number of recorded latencies.
    pub count: u64,
    /// Their sum.
    pub sum_us: f64,
    /// Their mean.
    pub mean_us: f64,
    /// Median estimate.
    pub p50_us: f64,
    /// 90th percentile estimate.
    pub p90_us: f64,
    /// 99th percentile estimate.
    pub p99_us: f64,
}

/// Nanoseconds as an exact decimal number of seconds (`1250` → `0.00000125`).
pub(crate) fn ns_as_secs(ns: u64) -> String {
    let whole = ns / 1_000_000_000;
    let frac = ns % 1_000_000_000;
    if frac == 0 {
        return whole.to_string();
    }
    let digits = format!("{frac:09}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_strictly_increasing_and_span_1us_to_60s() {
        assert_eq!(BOUNDS_NS[0], 1_000);
        assert_eq!(BOUNDS_NS[BOUND_COUNT - 1], 60_000_000_000);
        for w in BOUNDS_NS.windows(2) {
            assert!(w[0] < w[1], "{} !< {}", w[0], w[1]);
            // Log scale: neighbours within 1.28x.
            assert!(w[1] as f64 / w[0] as f64 <= 1.28, "{} .. {}", w[0], w[1]);
        }
    }

    #[test]
    fn values_land_in_the_bucket_whose_bound_covers_them() {
        let h = Histogram::default();
        h.record(Duration::from_nanos(1)); // below 1 µs: first bucket
        h.record(Duration::from_micros(1)); // exactly on a bound: that bucket (le)
        h.record(Duration::from_nanos(1_001)); // just above: next bucket
        h.record(Duration::from_secs(61)); // overflow
        h.record(Duration::MAX); // saturates, still overflow
        let c = h.read();
        assert_eq!(c.buckets[0], 2);
        assert_eq!(c.buckets[1], 1);
        assert_eq!(c.buckets[BOUND_COUNT], 2);
        assert_eq!(c.count(), 5);
    }

    #[test]
    fn percentiles_of_a_uniform_distribution_are_close() {
        let h = Histogram::default();
        for us in 1..=10_000u64 {
            h.record(Duration::from_micros(us));
        }
        let c = h.read();
        for (q, truth) in [(0.5, 5_000.0), (0.9, 9_000.0), (0.99, 9_900.0)] {
            let est = c.quantile_us(q);
            let err = (est - truth).abs() / truth;
            assert!(err < 0.05, "q{q}: estimate {est} vs {truth}");
        }
        let s = c.summary();
        assert_eq!(s.count, 10_000);
        assert!((s.mean_us - 5_000.5).abs() < 1e-6, "{}", s.mean_us);
    }

    #[test]
    fn percentiles_of_a_point_mass_stay_inside_its_bucket() {
        let h = Histogram::default();
        for _ in 0..1_000 {
            h.record(Duration::from_millis(3));
        }
        // 3 ms lies in (2.5 ms, 3.15 ms].
        let c = h.read();
        for q in [0.5, 0.9, 0.99] {
            let est = c.quantile_us(q);
            assert!((2_500.0..=3_150.0).contains(&est), "q{q}: {est}");
        }
    }

    #[test]
    fn percentiles_of_a_bimodal_distribution_pick_the_right_mode() {
        let h = Histogram::default();
        for _ in 0..95 {
            h.record(Duration::from_micros(100));
        }
        for _ in 0..5 {
            h.record(Duration::from_secs(2));
        }
        let c = h.read();
        assert!(c.quantile_us(0.5) <= 100.0 && c.quantile_us(0.5) > 80.0);
        assert!(c.quantile_us(0.9) <= 100.0);
        assert!(c.quantile_us(0.99) > 1_600_000.0 && c.quantile_us(0.99) <= 2_000_000.0);
    }

    #[test]
    fn overflow_is_reported_as_the_last_bound_and_empty_as_zero() {
        assert_eq!(Histogram::default().read().quantile_us(0.5), 0.0);
        let h = Histogram::default();
        h.record(Duration::from_secs(600));
        assert_eq!(h.read().quantile_us(0.99), 60_000_000.0);
    }

    #[test]
    fn exported_bounds_are_the_1_2_5_series_and_the_last() {
        let exported: Vec<String> =
            (0..BOUND_COUNT).filter(|&i| exported(i)).map(|i| ns_as_secs(BOUNDS_NS[i])).collect();
        assert_eq!(exported.first().map(String::as_str), Some("0.000001"));
        assert!(exported.contains(&"0.0000025".to_string()));
        assert!(exported.contains(&"0.005".to_string()));
        assert!(!exported.contains(&"0.000002".to_string()));
        assert_eq!(exported.last().map(String::as_str), Some("60"));
        assert_eq!(exported.len(), 25);
    }

    #[test]
    fn seconds_are_printed_exactly() {
        assert_eq!(ns_as_secs(1_250), "0.00000125");
        assert_eq!(ns_as_secs(0), "0");
        assert_eq!(ns_as_secs(60_000_000_000), "60");
        assert_eq!(ns_as_secs(31_500_000_000), "31.5");
        assert_eq!(ns_as_secs(1_000_000_001), "1.000000001");
    }
}
