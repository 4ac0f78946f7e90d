//! RetryManager: when to try a service again, and how long to wait first.
//!
//! Retries are the classic way a client turns a service's bad minute into
//! an outage: every failing request becomes four. Three rules keep them
//! honest here: only failures that a second attempt can fix are retried
//! (connect errors, timeouts, 429 and 5xx, never other 4xx); waits grow
//! exponentially with *full jitter* so that callers do not retry in lock
//! step; and a *retry budget* caps retries at a fraction of the requests
//! (plus a small floor), so that when everything fails the extra load stays
//! bounded. A `Retry-After` from the service is a lower bound on the wait.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// The longest single backoff, whatever the attempt number.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Retries that are always allowed before the budget must be earned.
pub const BUDGET_FLOOR: f64 = 10.0;

/// The most retry credit the budget holds (so a long good period cannot
/// bank enough retries to multiply a later outage).
const BUDGET_CAP: f64 = 100.0;

/// Retry policy of one service.
#[derive(Debug)]
pub struct RetryManager {
    attempts: u32,
    base: Duration,
    budget: RetryBudget,
}

impl RetryManager {
    /// `attempts` retries after the first try; backoff base `base`; at most
    /// `ratio` retries per request (plus [`BUDGET_FLOOR`]).
    pub fn new(attempts: u32, base: Duration, ratio: f64) -> Self {
        RetryManager { attempts, base, budget: RetryBudget::new(ratio) }
    }

    /// Retries allowed after the first attempt.
    pub fn max_retries(&self) -> u32 {
        self.attempts
    }

    /// A request starts: it earns retry credit for everyone.
    pub fn on_request(&self) {
        self.budget.deposit();
    }

    /// The wait before retry number `retry` (0-based): full jitter, uniform
    /// in `[0, base * 2^retry]` (capped), but never less than the service's
    /// `Retry-After`.
    pub fn backoff(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let jittered = full_jitter(self.base, retry);
        match retry_after {
            Some(r) => r.max(jittered),
            None => jittered,
        }
    }

    /// Take one retry from the budget; `false` when the budget is spent.
    pub fn try_spend(&self) -> bool {
        self.budget.withdraw()
    }
}

/// Uniform in `[0, min(MAX_BACKOFF, base * 2^n)]`.
pub fn full_jitter(base: Duration, n: u32) -> Duration {
    let cap = base.saturating_mul(1u32 << n.min(16)).min(MAX_BACKOFF);
    cap.mul_f64(rand::random::<f64>())
}

/// Credit is counted in millionths of a retry, in one atomic.
const UNIT: u64 = 1_000_000;

/// A token bucket of retry credit: each request deposits `ratio`, each
/// retry withdraws 1. It starts at the floor and never holds more than the
/// cap, so over any stretch retries ≤ floor-or-cap + ratio × requests.
///
/// Every request deposits, from any worker thread: the balance is one
/// atomic (no lock), and a full bucket (the usual state while the service
/// is healthy) is only read, never written.
#[derive(Debug)]
pub struct RetryBudget {
    /// Credit per request, in millionths.
    ratio: u64,
    /// The balance, in millionths.
    balance: AtomicU64,
}

impl RetryBudget {
    /// A budget allowing `ratio` retries per request on top of the floor.
    pub fn new(ratio: f64) -> Self {
        let ratio = (ratio.clamp(0.0, 1.0) * UNIT as f64).round() as u64;
        RetryBudget { ratio, balance: AtomicU64::new(BUDGET_FLOOR as u64 * UNIT) }
    }

    /// Credit for one request.
    pub fn deposit(&self) {
        let cap = BUDGET_CAP as u64 * UNIT;
        if self.ratio == 0 || self.balance.load(Ordering::Relaxed) >= cap {
            return;
        }
        let _ = self.balance.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some((b + self.ratio).min(cap)));
    }

    /// Spend one retry if there is credit for it.
    pub fn withdraw(&self) -> bool {
        self.balance.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(UNIT)).is_ok()
    }
}

/// The longest `Retry-After` taken from a service: a day. Longer values
/// (a buggy or hostile service can send `u64::MAX` seconds) are capped, so
/// that no deadline arithmetic on them can overflow.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// Parse a `Retry-After` value: delay seconds, or an HTTP date; at most
/// [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    let wait = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = httpdate::parse_http_date(v).ok()?;
            at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_retry_after_values_are_capped() {
        assert_eq!(parse_retry_after("18446744073709551615"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let base = Duration::from_millis(100);
        for n in 0..6 {
            let cap = base * (1 << n);
            let samples: Vec<Duration> = (0..200).map(|_| full_jitter(base, n)).collect();
            assert!(samples.iter().all(|d| *d <= cap), "attempt {n} over {cap:?}");
            let first = samples[0];
            assert!(samples.iter().any(|d| *d != first), "attempt {n}: no jitter");
            // Full jitter spreads over the whole range, not just near the cap.
            assert!(samples.iter().any(|d| *d < cap / 2) && samples.iter().any(|d| *d > cap / 2));
        }
        assert!(full_jitter(Duration::from_secs(10), 30) <= MAX_BACKOFF);
    }

    #[test]
    fn retry_after_is_a_lower_bound() {
        let r = RetryManager::new(3, Duration::from_millis(10), 0.2);
        for _ in 0..50 {
            assert!(r.backoff(0, Some(Duration::from_secs(2))) >= Duration::from_secs(2));
        }
    }

    #[test]
    fn budget_limits_retries_to_a_fraction_of_requests() {
        let b = RetryBudget::new(0.2);
        let mut retries = 0;
        for _ in 0..1000 {
            b.deposit();
            // Every request wants 3 retries, as in a full outage.
            for _ in 0..3 {
                if b.withdraw() {
                    retries += 1;
                }
            }
        }
        // Floor + 20% of the requests, not 3 per request.
        assert!(retries <= 10 + 200, "{retries}");
        assert!(retries >= 200, "{retries}");
    }

    #[test]
    fn budget_is_capped() {
        let b = RetryBudget::new(1.0);
        for _ in 0..10_000 {
            b.deposit();
        }
        let mut n = 0;
        while b.withdraw() {
            n += 1;
        }
        assert_eq!(n, BUDGET_CAP as usize);
    }

    #[test]
    fn parses_retry_after() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        let later = SystemTime::now() + Duration::from_secs(120);
        let d = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120), "{d:?}");
        let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(60));
        assert_eq!(parse_retry_after(&past), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }
}
