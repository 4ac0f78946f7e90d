//! Bounded, prioritized admission to a route.
//!
//! A route may limit how many of its messages are delivered at once
//! (`max_concurrency`). Messages beyond that wait in a bounded queue
//! (`queue_size`), highest priority first, FIFO within a priority. When the
//! queue itself is full the caller waits for room, within its deadline, and
//! then gets `QUEUE_FULL`: backpressure instead of unbounded memory.
//!
//! Unlimited routes (the default) take no lock at all.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};

use crate::error::{BridgeError, ErrorCode, Result};

/// The admission gate of one route.
#[derive(Debug)]
pub struct AdmissionQueue {
    max_concurrency: usize,
    capacity: usize,
    state: Mutex<State>,
    /// Wakes callers waiting for room in a full queue.
    room: Notify,
    /// Messages waiting (the queue-depth gauge).
    depth: AtomicUsize,
}

#[derive(Debug, Default)]
struct State {
    in_flight: usize,
    waiting: BinaryHeap<Waiter>,
    seq: u64,
}

#[derive(Debug)]
struct Waiter {
    priority: i32,
    seq: u64,
    tx: oneshot::Sender<()>,
}

impl PartialEq for Waiter {
    fn eq(&self, o: &Self) -> bool {
        self.priority == o.priority && self.seq == o.seq
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, o: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(o))
    }
}
impl Ord for Waiter {
    fn cmp(&self, o: &Self) -> CmpOrdering {
        // Max-heap: higher priority first, then lower sequence (FIFO).
        self.priority.cmp(&o.priority).then_with(|| o.seq.cmp(&self.seq))
    }
}

/// Outcome of the synchronous admission attempt.
#[derive(Debug)]
pub enum Admission {
    /// Go ahead; hold the permit while delivering.
    Admitted(Permit),
    /// Must wait: call [`AdmissionQueue::wait`].
    MustWait,
}

/// A delivery slot; dropping it hands the slot to the next waiter.
#[derive(Debug)]
pub struct Permit {
    queue: Option<Arc<AdmissionQueue>>,
}

impl AdmissionQueue {
    /// `max_concurrency` 0 means unlimited (then `capacity` is unused).
    pub fn new(max_concurrency: usize, capacity: usize) -> Arc<Self> {
        Arc::new(AdmissionQueue {
            max_concurrency,
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
            room: Notify::new(),
            depth: AtomicUsize::new(0),
        })
    }

    /// Messages waiting for a slot right now.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Try to admit without waiting.
    pub fn try_admit(self: &Arc<Self>) -> Admission {
        if self.max_concurrency == 0 {
            return Admission::Admitted(Permit { queue: None });
        }
        let mut st = self.state.lock();
        if st.in_flight < self.max_concurrency && st.waiting.is_empty() {
            st.in_flight += 1;
            Admission::Admitted(Permit { queue: Some(self.clone()) })
        } else {
            Admission::MustWait
        }
    }

    /// Wait for a slot, in priority order, until `deadline`. A full queue
    /// waits for room until the deadline, then fails with `QUEUE_FULL`; a
    /// queued message whose deadline passes fails with `TIMEOUT`.
    pub async fn wait(self: &Arc<Self>, priority: i32, deadline: Instant) -> Result<Permit> {
        loop {
            let room = self.room.notified();
            let enqueued = {
                let mut st = self.state.lock();
                if st.in_flight < self.max_concurrency && st.waiting.is_empty() {
                    st.in_flight += 1;
                    return Ok(Permit { queue: Some(self.clone()) });
                }
                if st.waiting.len() < self.capacity {
                    let (tx, rx) = oneshot::channel();
                    st.seq += 1;
                    let seq = st.seq;
                    st.waiting.push(Waiter { priority, seq, tx });
                    self.depth.store(st.waiting.len(), Ordering::Relaxed);
                    Some((seq, rx))
                } else {
                    None
                }
            };
            match enqueued {
                Some((seq, rx)) => {
                    let mut guard = QueuedGuard { queue: self, seq, done: false };
                    return match tokio::time::timeout_at(deadline.into(), rx).await {
                        Ok(Ok(())) => {
                            guard.done = true;
                            Ok(Permit { queue: Some(self.clone()) })
                        }
                        Ok(Err(_)) => Err(BridgeError::internal("admission queue dropped a waiter")),
                        Err(_) => Err(BridgeError::timeout(
                            "the deadline passed while waiting in the route's queue; raise the timeout or the route's max_concurrency",
                        )),
                    };
                }
                None => {
                    if tokio::time::timeout_at(deadline.into(), room).await.is_err() {
                        return Err(BridgeError::new(
                            ErrorCode::QueueFull,
                            format!(
                                "the route's queue is full ({} waiting) and no room came within the deadline; retry later or raise queue_size",
                                self.capacity
                            ),
                        ));
                    }
                }
            }
        }
    }

    fn release(&self) {
        let mut st = self.state.lock();
        // Hand the slot straight to the best live waiter; in_flight stays.
        while let Some(w) = st.waiting.pop() {
            self.depth.store(st.waiting.len(), Ordering::Relaxed);
            if w.tx.send(()).is_ok() {
                drop(st);
                self.room.notify_one();
                return;
            }
        }
        st.in_flight -= 1;
        drop(st);
        self.room.notify_one();
    }
}

/// Removes a waiter that gave up (timeout or cancellation), and gives back a
/// slot that was handed to it too late.
struct QueuedGuard<'a> {
    queue: &'a Arc<AdmissionQueue>,
    seq: u64,
    done: bool,
}

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut st = self.queue.state.lock();
        let before = st.waiting.len();
        st.waiting.retain(|w| w.seq != self.seq);
        let removed = st.waiting.len() != before;
        self.queue.depth.store(st.waiting.len(), Ordering::Relaxed);
        drop(st);
        if removed {
            self.queue.room.notify_one();
        } else {
            // Popped and handed a slot between the timeout and this drop.
            self.queue.release();
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(q) = self.queue.take() {
            q.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn soon(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[test]
    fn unlimited_always_admits() {
        let q = AdmissionQueue::new(0, 1);
        for _ in 0..100 {
            assert!(matches!(q.try_admit(), Admission::Admitted(_)));
        }
    }

    #[tokio::test]
    async fn priority_order_then_fifo() {
        let q = AdmissionQueue::new(1, 10);
        let Admission::Admitted(first) = q.try_admit() else { panic!() };
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, prio) in [("low1", 0), ("high", 5), ("low2", 0)] {
            let (q, order) = (q.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _p = q.wait(prio, soon(5000)).await.unwrap();
                order.lock().push(name);
            }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(q.depth(), 3);
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock(), vec!["high", "low1", "low2"]);
    }

    #[tokio::test]
    async fn full_queue_waits_then_fails_queue_full() {
        let q = AdmissionQueue::new(1, 1);
        let Admission::Admitted(_held) = q.try_admit() else { panic!() };
        let q2 = q.clone();
        let queued = tokio::spawn(async move { q2.wait(0, soon(300)).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let e = q.wait(0, soon(50)).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::QueueFull);
        let e = queued.await.unwrap().unwrap_err();
        assert_eq!(e.code(), ErrorCode::Timeout);
        assert_eq!(q.depth(), 0);
    }

    #[tokio::test]
    async fn cancelled_waiter_does_not_leak_a_slot() {
        let q = AdmissionQueue::new(1, 4);
        let Admission::Admitted(held) = q.try_admit() else { panic!() };
        let q2 = q.clone();
        let t = tokio::spawn(async move { q2.wait(0, soon(10_000)).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        t.abort();
        let _ = t.await;
        drop(held);
        assert!(matches!(q.try_admit(), Admission::Admitted(_)));
    }
}
