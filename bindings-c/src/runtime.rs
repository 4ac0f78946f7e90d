//! The tokio runtime the C library runs the engine on, and how a C thread
//! waits for it.
//!
//! C programs have no async runtime, so the library owns one: a small
//! multi-threaded runtime shared by every bridge of the process, built on
//! first use and never torn down (its threads end with the process). The
//! engine's futures run on its workers; C handlers run on its blocking pool;
//! completion callbacks run on its workers.
//!
//! A blocking call waits in one of two ways. From an ordinary C thread it
//! drives the future itself (`Runtime::block_on`: no thread hop). From a
//! thread that is already inside a runtime (a C handler or completion
//! callback calling back into the library, or a host program that embeds its
//! own tokio) `block_on` would panic, so the future runs on the workers and
//! the thread waits for its result; on one of our worker threads the wait is
//! wrapped in `block_in_place` so that the worker's other tasks move
//! elsewhere instead of deadlocking behind it.

use std::cell::Cell;
use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Handle, Runtime};

use crate::status::{FfiError, FfiResult, dreamos_status};

/// Worker threads: small, since a bridge's own work is light and C handlers
/// run on the blocking pool instead.
const MAX_WORKERS: usize = 4;

/// The runtime, and the process that built it.
static RUNTIME: OnceLock<Result<(Runtime, u32), String>> = OnceLock::new();

thread_local! {
    /// Set on every thread of our runtime (workers and blocking pool).
    static ON_BRIDGE_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// The process's runtime, built on first use.
///
/// After `fork()` the child has the runtime's memory but none of its
/// threads: anything waiting on it would hang forever, so a child gets a
/// clear error instead.
pub(crate) fn runtime() -> FfiResult<&'static Runtime> {
    let (rt, pid) = RUNTIME
        .get_or_init(|| {
            let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, MAX_WORKERS);
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .thread_name("dreamos-bridge")
                .on_thread_start(|| ON_BRIDGE_THREAD.with(|f| f.set(true)))
                .enable_all()
                .build()
                .map(|rt| (rt, std::process::id()))
                .map_err(|e| format!("cannot start the bridge's runtime threads: {e}"))
        })
        .as_ref()
        .map_err(|e| FfiError::new(dreamos_status::DREAMOS_INTERNAL, e.clone()))?;
    if *pid != std::process::id() {
        return Err(FfiError::new(
            dreamos_status::DREAMOS_INTERNAL,
            "this process was forked after the bridge library started its threads, which a child does not \
             inherit: use bridges only in the process that created them (create them after fork(), or exec)",
        ));
    }
    Ok(rt)
}

/// Is this a child forked after the runtime started? Its runtime threads
/// and the calls they were running did not come along.
pub(crate) fn forked_child() -> bool {
    matches!(RUNTIME.get(), Some(Ok((_, pid))) if *pid != std::process::id())
}

/// Is the calling thread one of the library's own (a C handler or a
/// completion callback is running on it)?
pub(crate) fn on_bridge_thread() -> bool {
    ON_BRIDGE_THREAD.try_with(Cell::get).unwrap_or(false)
}

/// Run `f` inside the runtime's context (constructors that start tasks or
/// timers need it), on the calling thread, or on one of the runtime's when
/// this thread's thread-locals are already gone (an `atexit` handler, a C++
/// static destructor), where entering the context would panic.
pub(crate) fn in_context<T, F>(f: F) -> FfiResult<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let rt = runtime()?;
    match Handle::try_current() {
        Err(e) if e.is_thread_local_destroyed() => {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            rt.spawn_blocking(move || {
                let _ = tx.send(f());
            });
            rx.recv().map_err(|_| FfiError::new(dreamos_status::DREAMOS_PANIC, "creating the bridge panicked"))
        }
        _ => {
            let _context = rt.enter();
            Ok(f())
        }
    }
}

/// Run `fut` to completion and return its output, from any thread.
pub(crate) fn block_on<F>(fut: F) -> FfiResult<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let rt = runtime()?;
    match Handle::try_current() {
        // A plain thread of the caller's: drive the future here.
        Err(e) if !e.is_thread_local_destroyed() => return Ok(rt.block_on(fut)),
        // Inside the runtime (a callback on one of its threads), or on a
        // thread whose thread-locals are already gone (an `atexit` handler,
        // a C++ static destructor, a thread-exit destructor), where
        // `block_on` would panic: the runtime's workers run it, this thread
        // waits.
        _ => {}
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    let wait = move || rx.recv();
    let received = if on_bridge_thread() { tokio::task::block_in_place(wait) } else { wait() };
    received.map_err(|_| FfiError::new(dreamos_status::DREAMOS_PANIC, "the bridge task panicked before it answered"))
}
