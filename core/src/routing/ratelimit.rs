//! GCRA rate limiting (the generic cell rate algorithm).
//!
//! One atomic "theoretical arrival time" per limited key: a check is a load,
//! a little arithmetic and a compare-and-swap, with no lock and no timer.
//! `reserve` also supports the waiting mode of DESIGN.md section 3: it books
//! a slot in the near future (within the caller's deadline) and tells the
//! caller how long to sleep; bookings are exact, so waiting callers never
//! exceed the rate either.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::config::Rate;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since the limiter epoch (monotonic).
#[inline]
fn now_ns() -> u64 {
    Instant::now().saturating_duration_since(epoch()).as_nanos() as u64
}

/// One GCRA limiter: `rate` per second with a burst of `burst` cells.
#[derive(Debug)]
pub struct Gcra {
    /// Nanoseconds between cells at the steady rate.
    emission_ns: u64,
    /// How far the arrival time may run ahead of now (burst × emission).
    tolerance_ns: u64,
    /// Theoretical arrival time of the next cell, ns since the epoch.
    tat: AtomicU64,
}

impl Gcra {
    /// A limiter for `rate` with `burst` cells (at least 1; `None`: one
    /// second's worth, so a rate of 100/s allows bursts of 100).
    pub fn new(rate: Rate, burst: Option<u32>) -> Self {
        // At most a year between cells: slower rates are taken as one a
        // year, which keeps the arrival times far from u64 overflow.
        let emission_ns = (1e9 / rate.per_second).clamp(1.0, MAX_EMISSION_NS as f64) as u64;
        let burst = burst.unwrap_or_else(|| rate.per_second.ceil().max(1.0) as u32).max(1) as u64;
        Gcra { emission_ns, tolerance_ns: emission_ns.saturating_mul(burst), tat: AtomicU64::new(0) }
    }

    /// Take one cell now if the limit allows; otherwise `Err(wait)`, the
    /// time after which a cell will be free.
    pub fn check(&self) -> Result<(), Duration> {
        self.reserve(Duration::ZERO).map(|_| ())
    }

    /// Book a cell at most `max_wait` ahead. `Ok(wait)`: the cell is booked;
    /// sleep `wait` (often zero) before using it. `Err(wait)`: nothing was
    /// booked; a cell frees up after `wait`.
    pub fn reserve(&self, max_wait: Duration) -> Result<Duration, Duration> {
        let now = now_ns();
        let max_wait_ns = max_wait.as_nanos().min(u64::MAX as u128) as u64;
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let new_tat = tat.max(now).saturating_add(self.emission_ns);
            let ahead = new_tat - now;
            let wait = ahead.saturating_sub(self.tolerance_ns);
            if wait > max_wait_ns {
                return Err(Duration::from_nanos(wait.max(1)));
            }
            match self.tat.compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Ok(Duration::from_nanos(wait)),
                Err(actual) => tat = actual,
            }
        }
    }

    /// Give back a cell booked by `reserve` that was not used (the caller
    /// gave up), so that a cancelled wait does not cost the others.
    pub fn refund(&self) {
        let _ =
            self.tat.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |t| Some(t.saturating_sub(self.emission_ns)));
    }
}

/// The longest interval between cells: a year, in nanoseconds.
const MAX_EMISSION_NS: u64 = 365 * 24 * 3600 * 1_000_000_000;

/// Keys kept before idle limiters are pruned.
const PRUNE_ABOVE: usize = 4096;

/// A GCRA limiter per key (principal), created on first use.
///
/// Keys come from callers (with OIDC, every distinct subject is one), so
/// the map is pruned: a limiter whose next arrival time has passed is in
/// the same state as a new one, and is dropped once the map has grown past
/// [`PRUNE_ABOVE`] keys or doubled since the last pruning.
#[derive(Debug)]
pub struct KeyedGcra {
    rate: Rate,
    burst: Option<u32>,
    limiters: DashMap<Arc<str>, Arc<Gcra>>,
    prune_at: AtomicUsize,
}

impl KeyedGcra {
    /// Every key gets `rate` with `burst`.
    pub fn new(rate: Rate, burst: Option<u32>) -> Self {
        KeyedGcra { rate, burst, limiters: DashMap::new(), prune_at: AtomicUsize::new(PRUNE_ABOVE) }
    }

    /// The limiter of `key`.
    pub fn get(&self, key: &Arc<str>) -> Arc<Gcra> {
        if let Some(l) = self.limiters.get(key) {
            return l.clone();
        }
        if self.limiters.len() >= self.prune_at.load(Ordering::Relaxed) {
            self.prune();
        }
        self.limiters.entry(key.clone()).or_insert_with(|| Arc::new(Gcra::new(self.rate, self.burst))).clone()
    }

    /// Drop the limiters that are idle (equivalent to new ones); the next
    /// pruning waits until the map has doubled, so each new key pays O(1).
    /// A limiter some caller holds is kept even if idle: that caller is
    /// about to book a cell on it, and dropping it would let the next
    /// caller start a fresh one with a full burst. (`get` clones under the
    /// map's shard lock, which `retain` holds while it looks.)
    fn prune(&self) {
        let now = now_ns();
        self.limiters.retain(|_, g| Arc::strong_count(g) > 1 || g.tat.load(Ordering::Relaxed) > now);
        self.prune_at.store((self.limiters.len() * 2).max(PRUNE_ABOVE), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tiny_rate_does_not_overflow() {
        let g = Gcra::new(Rate::per_second(1e-11), Some(1));
        g.check().unwrap();
        assert!(g.check().is_err());
        assert!(g.check().is_err());
    }

    #[test]
    fn idle_keys_are_pruned() {
        let k = KeyedGcra::new(Rate::per_second(1000.0), Some(1));
        for i in 0..PRUNE_ABOVE {
            k.get(&Arc::from(format!("p{i}"))).check().unwrap();
        }
        assert_eq!(k.limiters.len(), PRUNE_ABOVE);
        // A millisecond later every limiter is idle again.
        std::thread::sleep(Duration::from_millis(5));
        let busy: Arc<str> = Arc::from("busy");
        k.get(&busy).check().unwrap();
        assert_eq!(k.limiters.len(), 1, "only the new key is left");
        // A busy key keeps its state: its next cell is still booked.
        assert!(k.get(&busy).check().is_err());
        // An idle limiter a caller holds is kept, and with it its state.
        let held: Arc<str> = Arc::from("held");
        let limiter = k.get(&held);
        for i in 0..PRUNE_ABOVE {
            k.get(&Arc::from(format!("q{i}"))).check().unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
        k.get(&Arc::from("trigger"));
        assert!(Arc::ptr_eq(&limiter, &k.get(&held)), "the held limiter survived the pruning");
    }

    #[test]
    fn burst_then_reject_with_retry_after() {
        let g = Gcra::new(Rate::per_second(10.0), Some(3));
        for _ in 0..3 {
            g.check().unwrap();
        }
        let wait = g.check().unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100), "{wait:?}");
    }

    #[test]
    fn reserve_books_future_slots_in_order() {
        let g = Gcra::new(Rate::per_second(100.0), Some(1));
        assert_eq!(g.reserve(Duration::from_secs(1)).unwrap(), Duration::ZERO);
        let w1 = g.reserve(Duration::from_secs(1)).unwrap();
        let w2 = g.reserve(Duration::from_secs(1)).unwrap();
        assert!(w1 > Duration::ZERO && w2 > w1, "{w1:?} {w2:?}");
        // Too far ahead: rejected and nothing booked.
        let before = g.tat.load(Ordering::Relaxed);
        assert!(g.reserve(Duration::from_millis(1)).is_err());
        assert_eq!(before, g.tat.load(Ordering::Relaxed));
        g.refund();
        assert!(g.tat.load(Ordering::Relaxed) < before);
    }

    #[test]
    fn default_burst_is_one_seconds_worth() {
        let g = Gcra::new(Rate::per_second(5.0), None);
        for _ in 0..5 {
            g.check().unwrap();
        }
        assert!(g.check().is_err());
    }

    #[test]
    fn keyed_limiters_are_independent() {
        let k = KeyedGcra::new(Rate::per_second(1.0), Some(1));
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        k.get(&a).check().unwrap();
        assert!(k.get(&a).check().is_err());
        k.get(&b).check().unwrap();
    }
}
