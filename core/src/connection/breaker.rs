//! CircuitBreaker: stop calling a service that is failing.
//!
//! When a service is down, waiting for each call to time out wastes the
//! caller's deadline and piles load on the service as it tries to recover.
//! The breaker opens after `breaker_failures` consecutive failures, or when
//! the failure ratio over the last [`WINDOW`] attempts reaches
//! `breaker_failure_rate` (1 turns this rule off); while open, calls fail at once. After
//! `breaker_cooldown` exactly one probe goes through (half-open): success
//! closes the breaker, failure opens it for another cooldown.
//!
//! Only failures that say "the service is unwell" count (connect errors,
//! timeouts, 5xx); a 4xx is the caller's problem and a 429 means the
//! service is alive and pacing us.
//!
//! Every delivery asks the breaker twice (admission, then the outcome), from
//! whichever worker thread runs it: a lock there is a cache line both cores
//! write on every request. So a healthy breaker answers from one atomic
//! flag and writes nothing; the lock is taken only when something changes
//! (a failure, or a breaker that is not yet steadily closed).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::metrics::{BreakerState, ServiceStats};

/// Attempts remembered for the failure ratio.
pub const WINDOW: usize = 20;
/// Attempts needed in the window before the ratio can open the breaker.
pub const MIN_SAMPLES: usize = 10;

/// One service's breaker.
#[derive(Debug)]
pub struct CircuitBreaker {
    service: String,
    failures_to_open: u32,
    failure_rate: f64,
    cooldown: Duration,
    stats: Arc<ServiceStats>,
    /// Closed, no failure since the last success, and a full window of
    /// successes: then a success changes nothing (it pushes a success out
    /// of a window of successes) and admission needs no lock. Written only
    /// under `state`'s lock; read without it.
    steady: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    mode: BreakerState,
    consecutive: u32,
    window: VecDeque<bool>,
    opened_at: Option<Instant>,
    probe_out: bool,
}

/// Leave to make one attempt. Report its outcome with [`success`](Self::success)
/// or [`failure`](Self::failure); dropping it unreported (the caller gave up)
/// frees a half-open probe slot without judging the service.
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    reported: bool,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(
        service: &str,
        failures_to_open: u32,
        failure_rate: f64,
        cooldown: Duration,
        stats: Arc<ServiceStats>,
    ) -> Self {
        stats.set_breaker(BreakerState::Closed);
        CircuitBreaker {
            service: service.to_string(),
            failures_to_open: failures_to_open.max(1),
            failure_rate,
            cooldown,
            stats,
            steady: AtomicBool::new(false),
            state: Mutex::new(State {
                mode: BreakerState::Closed,
                consecutive: 0,
                window: VecDeque::with_capacity(WINDOW),
                opened_at: None,
                probe_out: false,
            }),
        }
    }

    /// The current state (an open breaker whose cooldown is over reads as
    /// half-open: the next call will probe).
    pub fn state(&self) -> BreakerState {
        let s = self.state.lock();
        match s.mode {
            BreakerState::Open if s.opened_at.is_some_and(|t| t.elapsed() >= self.cooldown) => BreakerState::HalfOpen,
            m => m,
        }
    }

    /// Ask to make an attempt. `Err(wait)`: the breaker is open (or its one
    /// probe is out); `wait` is how long until it may let a probe through.
    pub fn acquire(&self) -> Result<Permit<'_>, Duration> {
        if self.steady.load(Ordering::Acquire) {
            return Ok(Permit { breaker: self, probe: false, reported: false });
        }
        let mut s = self.state.lock();
        match s.mode {
            BreakerState::Closed => Ok(Permit { breaker: self, probe: false, reported: false }),
            BreakerState::Open => {
                let since = s.opened_at.map(|t| t.elapsed()).unwrap_or(self.cooldown);
                if since < self.cooldown {
                    return Err(self.cooldown - since);
                }
                s.mode = BreakerState::HalfOpen;
                s.probe_out = true;
                drop(s);
                self.stats.set_breaker(BreakerState::HalfOpen);
                tracing::info!(service = %self.service, "circuit breaker half-open: sending one probe");
                Ok(Permit { breaker: self, probe: true, reported: false })
            }
            BreakerState::HalfOpen if s.probe_out => Err(Duration::ZERO),
            BreakerState::HalfOpen => {
                s.probe_out = true;
                Ok(Permit { breaker: self, probe: true, reported: false })
            }
        }
    }

    fn record(&self, ok: bool, probe: bool) {
        // A success in the steady state leaves it as it is: nothing to write.
        // (Linearised before any failure that clears the flag after this read.)
        if ok && !probe && self.steady.load(Ordering::Acquire) {
            return;
        }
        let mut s = self.state.lock();
        if probe {
            s.probe_out = false;
        }
        if s.window.len() == WINDOW {
            s.window.pop_front();
        }
        s.window.push_back(ok);
        let new_mode = if ok {
            s.consecutive = 0;
            match s.mode {
                // A late success from before the breaker opened proves little.
                BreakerState::Open => None,
                BreakerState::HalfOpen if !probe => None,
                BreakerState::HalfOpen => {
                    // Start the ratio afresh, or old failures would reopen it.
                    s.window.clear();
                    Some(BreakerState::Closed)
                }
                BreakerState::Closed => None,
            }
        } else {
            s.consecutive = s.consecutive.saturating_add(1);
            let failed = s.window.iter().filter(|ok| !**ok).count();
            // A rate of 1 (or more) turns the ratio rule off.
            let ratio_trips = self.failure_rate < 1.0
                && s.window.len() >= MIN_SAMPLES
                && failed as f64 >= self.failure_rate * s.window.len() as f64;
            match s.mode {
                BreakerState::HalfOpen if probe => Some(BreakerState::Open),
                BreakerState::Closed if s.consecutive >= self.failures_to_open || ratio_trips => {
                    Some(BreakerState::Open)
                }
                _ => None,
            }
        };
        if let Some(mode) = new_mode {
            s.mode = mode;
            s.opened_at = (mode == BreakerState::Open).then(Instant::now);
        }
        let steady = s.mode == BreakerState::Closed
            && s.consecutive == 0
            && s.window.len() == WINDOW
            && s.window.iter().all(|ok| *ok);
        if self.steady.load(Ordering::Relaxed) != steady {
            self.steady.store(steady, Ordering::Release);
        }
        if let Some(mode) = new_mode {
            let consecutive = s.consecutive;
            drop(s);
            self.stats.set_breaker(mode);
            match mode {
                BreakerState::Open => {
                    tracing::warn!(service = %self.service, consecutive, cooldown = ?self.cooldown, "circuit breaker opened: failing fast")
                }
                _ => tracing::info!(service = %self.service, "circuit breaker closed: the service answers again"),
            }
        }
    }
}

impl Permit<'_> {
    /// The attempt succeeded (or failed in a way that proves the service is up).
    pub fn success(mut self) {
        self.reported = true;
        self.breaker.record(true, self.probe);
    }

    /// The attempt failed in a way that says the service is unwell.
    pub fn failure(mut self) {
        self.reported = true;
        self.breaker.record(false, self.probe);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.reported && self.probe {
            self.breaker.state.lock().probe_out = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(n: u32, cooldown: Duration) -> CircuitBreaker {
        CircuitBreaker::new("t", n, 0.5, cooldown, Arc::default())
    }

    #[test]
    fn opens_after_consecutive_failures_and_recovers() {
        let b = breaker(3, Duration::from_millis(30));
        for _ in 0..2 {
            b.acquire().unwrap().failure();
        }
        b.acquire().unwrap().success();
        for _ in 0..2 {
            b.acquire().unwrap().failure();
        }
        assert_eq!(b.state(), BreakerState::Closed, "a success resets the count");
        b.acquire().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.acquire().is_err());
        std::thread::sleep(Duration::from_millis(40));
        let probe = b.acquire().unwrap();
        assert!(b.acquire().is_err(), "only one probe while half-open");
        probe.failure();
        assert_eq!(b.state(), BreakerState::Open, "a failed probe reopens");
        std::thread::sleep(Duration::from_millis(40));
        b.acquire().unwrap().success();
        assert_eq!(b.state(), BreakerState::Closed);
        b.acquire().unwrap().success();
    }

    #[test]
    fn a_dropped_probe_frees_the_slot() {
        let b = breaker(1, Duration::ZERO);
        b.acquire().unwrap().failure();
        let probe = b.acquire().unwrap();
        assert!(b.acquire().is_err());
        drop(probe);
        b.acquire().unwrap().success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn opens_on_failure_ratio() {
        let b = breaker(100, Duration::from_secs(60));
        // Alternate: never two failures in a row, but half of them fail.
        for i in 0..MIN_SAMPLES {
            let p = b.acquire().unwrap();
            if i % 2 == 0 { p.success() } else { p.failure() }
        }
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn a_steady_breaker_still_counts_failures() {
        let b = breaker(3, Duration::from_secs(60));
        for _ in 0..(WINDOW * 2) {
            b.acquire().unwrap().success();
        }
        assert!(b.steady.load(Ordering::Relaxed), "a window of successes is the lock-free state");
        b.acquire().unwrap().failure();
        assert!(!b.steady.load(Ordering::Relaxed));
        b.acquire().unwrap().success();
        assert!(!b.steady.load(Ordering::Relaxed), "a failure in the window keeps the lock");
        for _ in 0..3 {
            b.acquire().unwrap().failure();
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.acquire().is_err());
    }

    #[test]
    fn low_failure_ratio_stays_closed() {
        let b = breaker(100, Duration::from_secs(60));
        for i in 0..200 {
            let p = b.acquire().unwrap();
            if i % 5 == 0 { p.failure() } else { p.success() }
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
