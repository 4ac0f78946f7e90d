//! Bounded, prioritized admission to a route.
//!
//! A route may limit how many of its messages are delivered at once
//! (`max_concurrency`). Messages beyond that wait in a bounded queue
//! (`queue_size`), highest priority first, FIFO within a priority. When the
//! queue itself is full the caller waits for room, within its deadline, and
//! then gets `QUEUE_FULL`: backpressure instead of unbounded memory. Callers
//! waiting for room get it first come, first served: a spot that frees up
//! goes to the longest waiter, never to a caller that arrived after it.
//!
//! Unlimited routes (the default) take no lock at all.

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::error::{BridgeError, ErrorCode, Result};

/// The admission gate of one route.
#[derive(Debug)]
pub struct AdmissionQueue {
    max_concurrency: usize,
    capacity: usize,
    state: Mutex<State>,
    /// Messages waiting (the queue-depth gauge).
    depth: AtomicUsize,
}

#[derive(Debug, Default)]
struct State {
    in_flight: usize,
    /// The queue: at most `capacity`, best first.
    waiting: BinaryHeap<Waiter>,
    /// Callers waiting for room in the full queue, in arrival order.
    overflow: VecDeque<Waiter>,
    seq: u64,
}

impl State {
    /// Move the longest waiters for room into the queue while it has room.
    fn admit_overflow(&mut self, capacity: usize) {
        while self.waiting.len() < capacity {
            let Some(w) = self.overflow.pop_front() else { break };
            self.waiting.push(w);
        }
    }
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
        let (seq, rx) = {
            let mut st = self.state.lock();
            // (The overflow is empty whenever the queue has room.)
            if st.in_flight < self.max_concurrency && st.waiting.is_empty() {
                st.in_flight += 1;
                return Ok(Permit { queue: Some(self.clone()) });
            }
            let (tx, rx) = oneshot::channel();
            st.seq += 1;
            let seq = st.seq;
            let w = Waiter { priority, seq, tx };
            if st.overflow.is_empty() && st.waiting.len() < self.capacity {
                st.waiting.push(w);
                self.depth.store(st.waiting.len(), Ordering::Relaxed);
            } else {
                st.overflow.push_back(w);
            }
            (seq, rx)
        };
        // The guard owns the receiver, so that a slot handed over while the
        // caller is timing out or going away is still seen (and passed on).
        let mut guard = QueuedGuard { queue: self, seq, rx, done: false };
        match tokio::time::timeout_at(deadline.into(), &mut guard.rx).await {
            Ok(Ok(())) => {
                guard.done = true;
                Ok(Permit { queue: Some(self.clone()) })
            }
            Ok(Err(_)) => Err(BridgeError::internal("admission queue dropped a waiter")),
            Err(_) => match guard.leave() {
                Left::Overflow => Err(BridgeError::new(
                    ErrorCode::QueueFull,
                    format!(
                        "the route's queue is full ({} waiting) and no room came within the deadline; retry later or raise queue_size",
                        self.capacity
                    ),
                )),
                Left::Queue | Left::HandedASlot => Err(BridgeError::timeout(
                    "the deadline passed while waiting in the route's queue; raise the timeout or the route's max_concurrency",
                )),
            },
        }
    }

    fn release(&self) {
        let mut st = self.state.lock();
        // Hand the slot straight to the best live waiter; in_flight stays.
        while let Some(w) = st.waiting.pop() {
            st.admit_overflow(self.capacity);
            self.depth.store(st.waiting.len(), Ordering::Relaxed);
            if w.tx.send(()).is_ok() {
                return;
            }
        }
        st.in_flight -= 1;
    }
}

/// Where a waiter that gave up was.
enum Left {
    /// Waiting for room: the queue stayed full.
    Overflow,
    /// In the queue.
    Queue,
    /// Nowhere: it was handed a slot as it gave up (the slot is passed on).
    HandedASlot,
}

/// Removes a waiter that gave up (timeout or cancellation), and gives back a
/// slot that was handed to it too late.
struct QueuedGuard<'a> {
    queue: &'a Arc<AdmissionQueue>,
    seq: u64,
    /// Alive until the guard is gone: a `release` that pops this waiter
    /// always hands it the slot (its send cannot fail), and `leave` finds it
    /// here.
    rx: oneshot::Receiver<()>,
    done: bool,
}

impl QueuedGuard<'_> {
    fn leave(&mut self) -> Left {
        self.done = true;
        let q = self.queue;
        let mut st = q.state.lock();
        if let Some(i) = st.overflow.iter().position(|w| w.seq == self.seq) {
            st.overflow.remove(i);
            return Left::Overflow;
        }
        let before = st.waiting.len();
        st.waiting.retain(|w| w.seq != self.seq);
        if st.waiting.len() != before {
            st.admit_overflow(q.capacity);
            q.depth.store(st.waiting.len(), Ordering::Relaxed);
            return Left::Queue;
        }
        drop(st);
        // Not waiting any more: a `release` popped it and handed it the
        // slot, which is passed on.
        if self.rx.try_recv().is_ok() {
            q.release();
        }
        Left::HandedASlot
    }
}

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.leave();
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
    async fn room_in_a_full_queue_goes_to_the_longest_waiter() {
        let q = AdmissionQueue::new(1, 1);
        let Admission::Admitted(held) = q.try_admit() else { panic!() };
        let spawn_wait = |ms: u64| {
            let q = q.clone();
            tokio::spawn(async move { q.wait(0, soon(ms)).await })
        };
        let queued = spawn_wait(5000);
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The queue is full: `early` waits for room.
        let early = spawn_wait(1000);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(q.depth(), 1);
        // The slot goes to `queued`, which leaves room in the queue. A caller
        // arriving now, before `early` has run again, must not take it.
        drop(held);
        let mut newcomer = Box::pin(q.wait(0, soon(5000)));
        tokio::select! {
            biased;
            _ = &mut newcomer => panic!("the newcomer was admitted ahead of the others"),
            _ = std::future::ready(()) => {}
        }
        drop(queued.await.unwrap().unwrap());
        drop(early.await.unwrap().expect("early got the room and then the slot"));
        drop(newcomer.await.unwrap());
        assert_eq!(q.depth(), 0);
        assert!(matches!(q.try_admit(), Admission::Admitted(_)));
    }

    #[tokio::test]
    async fn a_full_queue_still_fails_queue_full_for_the_late() {
        let q = AdmissionQueue::new(1, 1);
        let Admission::Admitted(_held) = q.try_admit() else { panic!() };
        let q2 = q.clone();
        let queued = tokio::spawn(async move { q2.wait(0, soon(5000)).await.map(drop) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Waiting for room, with a higher priority: no room comes.
        assert_eq!(q.wait(9, soon(50)).await.unwrap_err().code(), ErrorCode::QueueFull);
        assert!(q.state.lock().overflow.is_empty());
        queued.abort();
    }

    #[tokio::test]
    async fn a_waiter_for_room_that_gives_up_leaves_no_trace() {
        let q = AdmissionQueue::new(1, 1);
        let Admission::Admitted(held) = q.try_admit() else { panic!() };
        let q2 = q.clone();
        let queued = tokio::spawn(async move { q2.wait(0, soon(5000)).await.map(drop) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let q3 = q.clone();
        let gave_up = tokio::spawn(async move { q3.wait(0, soon(10_000)).await.map(drop) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        gave_up.abort();
        let _ = gave_up.await;
        drop(held);
        queued.await.unwrap().unwrap();
        assert_eq!(q.depth(), 0);
        assert!(q.state.lock().overflow.is_empty());
        assert!(matches!(q.try_admit(), Admission::Admitted(_)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiters_that_time_out_or_are_dropped_leak_nothing() {
        let q = AdmissionQueue::new(2, 3);
        let mut tasks = Vec::new();
        for i in 0..300u64 {
            let q = q.clone();
            let task = tokio::spawn(async move {
                let permit = q.wait((i % 3) as i32, soon(1 + i % 40)).await;
                if permit.is_ok() {
                    tokio::time::sleep(Duration::from_millis(i % 3)).await;
                }
            });
            if i % 7 == 0 {
                task.abort();
            }
            tasks.push(task);
        }
        for t in tasks {
            let _ = t.await;
        }
        let st = q.state.lock();
        assert_eq!((st.in_flight, st.waiting.len(), st.overflow.len(), q.depth()), (0, 0, 0, 0));
    }

    #[test]
    fn a_slot_handed_to_a_waiter_that_is_leaving_is_passed_on_once() {
        let q = AdmissionQueue::new(1, 1);
        let Admission::Admitted(held) = q.try_admit() else { panic!() };
        let (tx, rx) = oneshot::channel();
        q.state.lock().waiting.push(Waiter { priority: 0, seq: 1, tx });
        // The waiter's deadline has passed, but before it leaves, the slot
        // is released and handed to it.
        drop(held);
        assert_eq!(q.state.lock().in_flight, 1, "the slot went to the waiter");
        let mut guard = QueuedGuard { queue: &q, seq: 1, rx, done: false };
        assert!(matches!(guard.leave(), Left::HandedASlot));
        drop(guard);
        assert_eq!(q.state.lock().in_flight, 0, "passed on once, not twice");
        assert!(matches!(q.try_admit(), Admission::Admitted(_)));
    }

    /// Deadlines that fire as slots are handed over: a waiter popped by a
    /// release while it was timing out must pass its slot on exactly once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrency_never_exceeds_max_when_deadlines_race_releases() {
        use std::sync::atomic::AtomicUsize;
        let max = 2usize;
        let q = AdmissionQueue::new(max, 4);
        let holders = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..20_000u64 {
            let (q, holders, peak) = (q.clone(), holders.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_micros(200 + (i % 5) * 100);
                if let Ok(p) = q.wait(0, deadline).await {
                    let n = holders.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    holders.fetch_sub(1, Ordering::SeqCst);
                    drop(p);
                }
            }));
            if i % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
        for t in tasks {
            if let Err(e) = t.await
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        assert!(peak.load(Ordering::SeqCst) <= max);
        let st = q.state.lock();
        assert_eq!((st.in_flight, st.waiting.len(), st.overflow.len()), (0, 0, 0));
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
