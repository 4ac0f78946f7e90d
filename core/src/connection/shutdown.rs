//! ShutdownSignal: fail in-flight deliveries with `SHUTDOWN`, cheaply.
//!
//! Shutdown must answer every call still waiting on a service, so each
//! delivery watches for it. A `CancellationToken` watch costs two shared
//! cache lines on every request: each poll locks the token's node, and
//! every waiting call registers on one `Notify` behind one mutex, which
//! both worker threads then write to per request. Here the flag is a plain
//! atomic that is only ever read until shutdown, and waiters register in
//! one of several shards picked by thread, so a worker mostly writes a line
//! no other core wants. Shutdown itself (rare) walks every shard.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Poll, Waker};

use parking_lot::Mutex;

/// Shards of the waiter list (threads map onto them round-robin).
const SHARDS: usize = 8;

/// Set once, at shutdown; wakes every registered delivery.
#[derive(Debug)]
pub struct ShutdownSignal {
    fired: AtomicBool,
    shards: Box<[Shard]>,
}

/// One shard on its own cache lines (128 bytes: adjacent-line prefetch).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard(Mutex<Waiters>);

/// Wakers by slot; a slot is freed by the registration that owns it, so
/// shutdown only takes the wakers and never reuses a slot under a waiter.
#[derive(Debug, Default)]
struct Waiters {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Default for ShutdownSignal {
    fn default() -> Self {
        ShutdownSignal { fired: AtomicBool::new(false), shards: (0..SHARDS).map(|_| Shard::default()).collect() }
    }
}

impl ShutdownSignal {
    /// Has shutdown fired?
    pub fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Fire: every guarded future still running completes with `None`.
    pub fn fire(&self) {
        // SeqCst pairs with the registrant's check after registering: either
        // this walk finds its waker, or its check finds the flag.
        self.fired.store(true, Ordering::SeqCst);
        for shard in self.shards.iter() {
            let wakers: Vec<Waker> = shard.0.lock().slots.iter_mut().filter_map(Option::take).collect();
            wakers.into_iter().for_each(Waker::wake);
        }
    }

    /// Run `fut` until it completes (`Some`) or shutdown fires (`None`,
    /// and `fut` is dropped).
    pub async fn guard<F: Future>(&self, fut: F) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        let mut reg = Registration { signal: self, at: None };
        std::future::poll_fn(|cx| {
            if self.is_fired() {
                return Poll::Ready(None);
            }
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            reg.register(cx.waker());
            if self.fired.load(Ordering::SeqCst) {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }
}

/// A guarded future's place in a shard; leaving frees it.
struct Registration<'a> {
    signal: &'a ShutdownSignal,
    /// Shard, slot, and the waker stored there.
    at: Option<(usize, usize, Waker)>,
}

impl Registration<'_> {
    fn register(&mut self, waker: &Waker) {
        match &mut self.at {
            // A task's waker stays the same across polls: nothing to write.
            Some((_, _, stored)) if stored.will_wake(waker) => {}
            Some((shard, slot, stored)) => {
                stored.clone_from(waker);
                if let Some(s) = self.signal.shards[*shard].0.lock().slots.get_mut(*slot) {
                    *s = Some(waker.clone());
                }
            }
            None => {
                let shard = shard_of_this_thread();
                let mut w = self.signal.shards[shard].0.lock();
                let slot = match w.free.pop() {
                    Some(i) => {
                        w.slots[i] = Some(waker.clone());
                        i
                    }
                    None => {
                        w.slots.push(Some(waker.clone()));
                        w.slots.len() - 1
                    }
                };
                drop(w);
                self.at = Some((shard, slot, waker.clone()));
            }
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if let Some((shard, slot, _)) = self.at.take() {
            let mut w = self.signal.shards[shard].0.lock();
            if let Some(s) = w.slots.get_mut(slot) {
                *s = None;
                w.free.push(slot);
            }
        }
    }
}

/// This thread's shard: assigned round-robin on first use.
fn shard_of_this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fire_ends_every_waiting_future_and_frees_its_slot() {
        let signal = Arc::new(ShutdownSignal::default());
        let waiting: Vec<_> = (0..100)
            .map(|_| {
                let s = signal.clone();
                tokio::spawn(async move { s.guard(std::future::pending::<()>()).await })
            })
            .collect();
        // Let every task register.
        tokio::time::sleep(Duration::from_millis(50)).await;
        signal.fire();
        for w in waiting {
            assert_eq!(tokio::time::timeout(Duration::from_secs(5), w).await.unwrap().unwrap(), None);
        }
        for shard in signal.shards.iter() {
            let w = shard.0.lock();
            assert!(w.slots.iter().all(Option::is_none));
            assert_eq!(w.free.len(), w.slots.len(), "every registration freed its slot");
        }
        // After firing, nothing runs.
        assert_eq!(signal.guard(async { 1 }).await, None);
    }

    #[tokio::test]
    async fn a_finished_future_answers_and_leaves_no_waker() {
        let signal = ShutdownSignal::default();
        assert_eq!(signal.guard(async { 7 }).await, Some(7));
        let slept = signal
            .guard(async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                8
            })
            .await;
        assert_eq!(slept, Some(8));
        let live: usize = signal.shards.iter().map(|s| s.0.lock().slots.iter().filter(|w| w.is_some()).count()).sum();
        assert_eq!(live, 0);
    }
}
