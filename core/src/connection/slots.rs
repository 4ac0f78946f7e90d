//! ConnectionSlots: at most `max_connections` requests in flight per
//! service, without a lock on the usual path.
//!
//! A tokio `Semaphore` would do, but its release locks the waiter list on
//! every call, even when nobody waits: at concurrency 32 that is a mutex
//! both worker threads take once per request. Here a slot is one atomic
//! count; a release only touches the waiter queue (a `Notify`) when some
//! call is actually waiting for a slot, which happens only at the limit.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Why no slot was handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSlot {
    /// Every slot is taken (only from [`ConnectionSlots::try_acquire`]).
    Full,
    /// The service was terminated.
    Closed,
}

/// The connection slots of one service.
#[derive(Debug)]
pub struct ConnectionSlots {
    used: AtomicUsize,
    max: usize,
    /// Calls waiting in [`acquire`](Self::acquire); a release wakes one only
    /// when this is non-zero.
    waiting: AtomicUsize,
    closed: AtomicBool,
    freed: Notify,
}

/// One slot, given back when dropped.
#[derive(Debug)]
pub struct Slot<'a> {
    slots: &'a ConnectionSlots,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let s = self.slots;
        // SeqCst on both sides (here: the count, then `waiting`; a waiter:
        // `waiting`, then the count): either this release sees the waiter,
        // or the waiter's retry sees the freed slot.
        s.used.fetch_sub(1, Ordering::SeqCst);
        if s.waiting.load(Ordering::SeqCst) > 0 {
            s.freed.notify_one();
        }
    }
}

/// Counts a call in `waiting` for as long as it waits (a dropped future
/// included).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ConnectionSlots {
    /// `max` slots (at least one).
    pub fn new(max: usize) -> Self {
        ConnectionSlots {
            used: AtomicUsize::new(0),
            max: max.max(1),
            waiting: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            freed: Notify::new(),
        }
    }

    /// A slot now, or why not.
    pub fn try_acquire(&self) -> Result<Slot<'_>, NoSlot> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(NoSlot::Closed);
        }
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if used >= self.max {
                return Err(NoSlot::Full);
            }
            match self.used.compare_exchange_weak(used, used + 1, Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => return Ok(Slot { slots: self }),
                Err(now) => used = now,
            }
        }
    }

    /// A slot, waiting for one to be freed if need be; `Err(Closed)` once
    /// the service is terminated. Cancel-safe: a dropped wait holds nothing,
    /// and a wake-up it was given passes to the next waiter.
    pub async fn acquire(&self) -> Result<Slot<'_>, NoSlot> {
        match self.try_acquire() {
            Err(NoSlot::Full) => {}
            done => return done,
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        loop {
            // Registered before the retry, so a release (or close) between
            // the retry and the wait is not lost.
            let freed = self.freed.notified();
            let mut freed = std::pin::pin!(freed);
            freed.as_mut().enable();
            match self.try_acquire() {
                Err(NoSlot::Full) => freed.await,
                done => return done,
            }
        }
    }

    /// Refuse every slot from now on, and wake the calls waiting for one
    /// (slots already held stay valid until dropped).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.freed.notify_waiters();
    }

    /// Has [`close`](Self::close) been called?
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Slots held now.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn counts_and_refuses_at_the_limit() {
        let s = ConnectionSlots::new(2);
        let a = s.try_acquire().unwrap();
        let b = s.try_acquire().unwrap();
        assert_eq!(s.in_use(), 2);
        assert_eq!(s.try_acquire().unwrap_err(), NoSlot::Full);
        drop(a);
        assert_eq!(s.in_use(), 1);
        let _c = s.try_acquire().unwrap();
        drop(b);
        assert_eq!(s.in_use(), 1);
    }

    #[test]
    fn closed_refuses_but_held_slots_stay() {
        let s = ConnectionSlots::new(2);
        let a = s.try_acquire().unwrap();
        s.close();
        assert!(s.is_closed());
        assert_eq!(s.try_acquire().unwrap_err(), NoSlot::Closed);
        assert_eq!(s.in_use(), 1);
        drop(a);
        assert_eq!(s.in_use(), 0);
    }

    #[tokio::test]
    async fn a_waiter_gets_the_freed_slot() {
        let s = Arc::new(ConnectionSlots::new(1));
        let held = s.try_acquire().unwrap();
        let s2 = s.clone();
        let waiter = tokio::spawn(async move { s2.acquire().await.map(|_| ()) });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(held);
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap(), Ok(()));
        assert_eq!(s.in_use(), 0);
    }

    #[tokio::test]
    async fn close_wakes_waiters() {
        let s = Arc::new(ConnectionSlots::new(1));
        let _held = s.try_acquire().unwrap();
        let s2 = s.clone();
        let waiter = tokio::spawn(async move { s2.acquire().await.map(|_| ()) });
        tokio::task::yield_now().await;
        s.close();
        let r = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert_eq!(r, Err(NoSlot::Closed));
    }

    /// A waiter that gave up (its future dropped) must not swallow the
    /// wake-up meant for the next one.
    #[tokio::test]
    async fn a_cancelled_waiter_passes_its_wake_up_on() {
        let s = Arc::new(ConnectionSlots::new(1));
        let held = s.try_acquire().unwrap();
        let first = {
            let s = s.clone();
            tokio::spawn(async move { s.acquire().await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        let second = {
            let s = s.clone();
            tokio::spawn(async move { s.acquire().await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        first.abort();
        drop(held);
        let r = tokio::time::timeout(Duration::from_secs(5), second).await.unwrap().unwrap();
        assert_eq!(r, Ok(()));
        assert_eq!(s.waiting.load(Ordering::SeqCst), 0);
    }

    /// Many tasks on several threads contend for few slots: never more
    /// than `max` held at once, and every task gets through.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_more_than_max_under_contention() {
        let s = Arc::new(ConnectionSlots::new(3));
        let peak = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (s, peak) = (s.clone(), peak.clone());
                tokio::spawn(async move {
                    for _ in 0..200 {
                        let _slot = s.acquire().await.unwrap();
                        peak.fetch_max(s.in_use(), Ordering::SeqCst);
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(30), t).await.unwrap().unwrap();
        }
        assert!(peak.load(Ordering::SeqCst) <= 3);
        assert!(peak.load(Ordering::SeqCst) >= 1);
        assert_eq!(s.in_use(), 0);
    }
}
