//! ConnectionSlots: at most `max_connections` requests in flight per
//! service, without a lock on the usual path, and first come, first served
//! at the limit.
//!
//! A tokio `Semaphore` would do, but its release locks the waiter list on
//! every call, even when nobody waits: at concurrency 32 that is a mutex
//! both worker threads take once per request. Here a slot is one atomic
//! count; a release only touches the waiter queue (a `Notify`) when some
//! call is actually waiting for a slot, which happens only at the limit.
//!
//! At the limit, a freed slot is handed to the longest waiter instead of
//! being put back for whoever asks first. Without the hand-off, a new call
//! would take the slot in the moment between the release and the woken
//! waiter running, and under steady overload a waiter could lose that race
//! again and again until its deadline passed, while later calls got
//! through. So: while anyone waits, [`ConnectionSlots::try_acquire`]
//! refuses and new calls queue behind; a release then leaves the slot
//! counted as used, adds it to `handed` and wakes one waiter (`Notify`
//! wakes in arrival order), and only a woken waiter takes a handed slot.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Why no slot was handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSlot {
    /// Every slot is taken, or calls are already waiting for one (only from
    /// [`ConnectionSlots::try_acquire`]).
    Full,
    /// The service was terminated.
    Closed,
}

/// The connection slots of one service.
#[derive(Debug)]
pub struct ConnectionSlots {
    /// Slots held, plus slots handed to a waiter and not yet taken.
    used: AtomicUsize,
    max: usize,
    /// Calls waiting in [`acquire`](Self::acquire); a release hands its slot
    /// over (and wakes one) only when this is non-zero.
    waiting: AtomicUsize,
    /// Freed slots set aside for the woken waiters (still counted in `used`).
    handed: AtomicUsize,
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
        self.slots.release();
    }
}

/// Counts a call in `waiting` for as long as it waits (a dropped future
/// included).
struct Waiting<'a>(&'a ConnectionSlots);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let s = self.0;
        if s.waiting.fetch_sub(1, Ordering::SeqCst) == 1 {
            // The last waiter left (served, gave up or closed): a slot handed
            // over in the meantime has nobody to take it. Release it again,
            // which hands it to a call that started waiting since, if any.
            while s.take_handed() {
                s.release();
            }
        }
    }
}

impl ConnectionSlots {
    /// `max` slots (at least one).
    pub fn new(max: usize) -> Self {
        ConnectionSlots {
            used: AtomicUsize::new(0),
            max: max.max(1),
            waiting: AtomicUsize::new(0),
            handed: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            freed: Notify::new(),
        }
    }

    /// A slot now, or why not. Calls already waiting go first: while there
    /// are any, this is `Full` even if a slot was just freed.
    pub fn try_acquire(&self) -> Result<Slot<'_>, NoSlot> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(NoSlot::Closed);
        }
        if self.waiting.load(Ordering::SeqCst) > 0 {
            return Err(NoSlot::Full);
        }
        // With nobody waiting, a handed slot is one whose waiter left as it
        // was handed over: anyone may take it.
        if self.take_handed() || self.take_free() { Ok(Slot { slots: self }) } else { Err(NoSlot::Full) }
    }

    /// A slot, waiting for one to be freed if need be (behind the calls
    /// already waiting); `Err(Closed)` once the service is terminated.
    /// Cancel-safe: a dropped wait holds nothing, and a slot or wake-up it
    /// was given passes to the next waiter.
    pub async fn acquire(&self) -> Result<Slot<'_>, NoSlot> {
        match self.try_acquire() {
            Err(NoSlot::Full) => {}
            done => return done,
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(self);
        loop {
            // Registered before looking, so a hand-off (or close) between
            // the look and the wait is not lost.
            let freed = self.freed.notified();
            let mut freed = std::pin::pin!(freed);
            freed.as_mut().enable();
            if self.closed.load(Ordering::SeqCst) {
                return Err(NoSlot::Closed);
            }
            // A slot free without a hand-off: released just before this call
            // was counted as waiting.
            if self.take_free() {
                return Ok(Slot { slots: self });
            }
            freed.await;
            if self.closed.load(Ordering::SeqCst) {
                return Err(NoSlot::Closed);
            }
            if self.take_handed() {
                return Ok(Slot { slots: self });
            }
            // Woken with nothing handed (a slot taken back by the last
            // waiter leaving): wait again.
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

    /// Slots held now (handed over and not yet taken ones excluded).
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Relaxed).saturating_sub(self.handed.load(Ordering::Relaxed))
    }

    /// Count one more slot used, if one is free.
    fn take_free(&self) -> bool {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if used >= self.max {
                return false;
            }
            match self.used.compare_exchange_weak(used, used + 1, Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    /// Take a slot handed over by a release, if there is one.
    fn take_handed(&self) -> bool {
        self.handed.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| h.checked_sub(1)).is_ok()
    }

    /// Give a held slot back: to the longest waiter if there is one, else
    /// to the free count.
    fn release(&self) {
        // SeqCst on both sides (here: the count, then `waiting`; a waiter:
        // `waiting`, then the count): either this release sees the waiter,
        // or the waiter sees the freed slot.
        self.used.fetch_sub(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 && self.take_free() {
            // Taken back at once (unless a waiter just took it itself) and
            // set aside for the woken waiter: a new call cannot get it first.
            self.handed.fetch_add(1, Ordering::SeqCst);
            self.freed.notify_one();
        }
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

    /// Lets the spawned tasks run until `cond` holds (current-thread runtime).
    async fn until(cond: impl Fn() -> bool) {
        for _ in 0..1000 {
            if cond() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("condition not reached");
    }

    /// A slot freed while a call waits goes to that call, not to a new one
    /// that asks first.
    #[tokio::test]
    async fn a_new_call_does_not_take_a_slot_from_a_waiter() {
        let s = Arc::new(ConnectionSlots::new(1));
        let held = s.try_acquire().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move {
                let _slot = s.acquire().await.unwrap();
                let _ = rx.await;
            })
        };
        until(|| s.waiting.load(Ordering::SeqCst) == 1).await;
        drop(held);
        // The waiter has not run yet, but the slot is already its own.
        assert_eq!(s.try_acquire().unwrap_err(), NoSlot::Full);
        until(|| s.waiting.load(Ordering::SeqCst) == 0).await;
        assert_eq!(s.in_use(), 1);
        assert_eq!(s.try_acquire().unwrap_err(), NoSlot::Full);
        tx.send(()).unwrap();
        waiter.await.unwrap();
        assert_eq!(s.in_use(), 0);
        drop(s.try_acquire().unwrap());
    }

    /// Waiters are served in the order they started waiting, and calls that
    /// arrive meanwhile queue behind them.
    #[tokio::test]
    async fn waiters_are_served_in_arrival_order() {
        let s = Arc::new(ConnectionSlots::new(1));
        let held = s.try_acquire().unwrap();
        let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for id in 0..4 {
            let (s2, order) = (s.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = s2.acquire().await.unwrap();
                order.lock().push(id);
                tokio::task::yield_now().await;
            }));
            let n = id + 1;
            until(|| s.waiting.load(Ordering::SeqCst) == n).await;
        }
        drop(held);
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(5), t).await.unwrap().unwrap();
        }
        assert_eq!(*order.lock(), vec![0, 1, 2, 3]);
        assert_eq!((s.in_use(), s.handed.load(Ordering::SeqCst)), (0, 0));
    }

    /// A slot handed to a waiter that is cancelled before it runs is not
    /// lost: with nobody else waiting it is free again.
    #[tokio::test]
    async fn a_slot_handed_to_a_cancelled_waiter_is_not_lost() {
        let s = Arc::new(ConnectionSlots::new(1));
        let held = s.try_acquire().unwrap();
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.acquire().await.map(|_| ()) })
        };
        until(|| s.waiting.load(Ordering::SeqCst) == 1).await;
        drop(held);
        assert_eq!(s.handed.load(Ordering::SeqCst), 1);
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        assert_eq!((s.in_use(), s.handed.load(Ordering::SeqCst)), (0, 0));
        let again = s.try_acquire().unwrap();
        assert_eq!(s.in_use(), 1);
        drop(again);
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

    /// The same with waits that give up (dropped futures, as a deadline
    /// does): no slot is lost or duplicated, and all are free at the end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_slot_lost_when_waiters_give_up() {
        let s = Arc::new(ConnectionSlots::new(2));
        let peak = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let (s, peak) = (s.clone(), peak.clone());
                tokio::spawn(async move {
                    for n in 0..300u64 {
                        let patience = Duration::from_micros((i * 7 + n * 13) % 50);
                        if let Ok(slot) = tokio::time::timeout(patience, s.acquire()).await {
                            let _slot = slot.unwrap();
                            peak.fetch_max(s.in_use(), Ordering::SeqCst);
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(30), t).await.unwrap().unwrap();
        }
        assert!(peak.load(Ordering::SeqCst) <= 2);
        assert_eq!((s.in_use(), s.handed.load(Ordering::SeqCst), s.waiting.load(Ordering::SeqCst)), (0, 0, 0));
        let (a, b) = (s.try_acquire().unwrap(), s.try_acquire().unwrap());
        assert_eq!(s.try_acquire().unwrap_err(), NoSlot::Full);
        drop((a, b));
    }
}
