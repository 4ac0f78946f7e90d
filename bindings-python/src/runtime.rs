//! One tokio runtime per process, rebuilt after `fork()`, shut down at exit.
//!
//! A multi-thread runtime's worker threads do not survive `fork()`: in the
//! child its handle still looks alive but nothing ever runs, so any await
//! would hang (lancedb's `python/src/runtime.rs` explains the failure). The
//! runtime is therefore stored with the pid that built it; a different pid
//! means we are in a forked child, and the old runtime is leaked (dropping it
//! would try to join threads that do not exist) and a new one built.
//! `os.register_at_fork` also bumps [`fork_generation`], which bridges and
//! per-loop completers use to refuse work they carried over from the parent.
//! At interpreter exit (`atexit`) the runtime is shut down with the GIL
//! released, so tasks that need the GIL to finish can, and exit never hangs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dreamos_bridge::{BridgeError, ErrorCode};
use parking_lot::Mutex;
use pyo3::prelude::*;
use tokio::runtime::Runtime;

static RUNTIME: Mutex<Option<(u32, Arc<Runtime>)>> = Mutex::new(None);
static GENERATION: AtomicU64 = AtomicU64::new(0);
static EXITING: AtomicBool = AtomicBool::new(false);

/// Bumped in every forked child (through `os.register_at_fork`).
pub fn fork_generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// `SHUTDOWN` with `advice` for an object made in fork generation `born`
/// and used in a forked child: its connections and background tasks
/// belong to the parent, so a call would only wait for them until it timed out.
pub fn check_not_forked(born: u64, advice: &str) -> Result<(), BridgeError> {
    if born != fork_generation() {
        return Err(BridgeError::new(ErrorCode::Shutdown, advice));
    }
    Ok(())
}

/// Is the interpreter shutting down?
pub fn exiting() -> bool {
    EXITING.load(Ordering::Acquire)
}

thread_local! {
    /// This thread's view of the runtime, valid for one fork generation.
    static CACHED: std::cell::RefCell<Option<(u64, Arc<Runtime>)>> = const { std::cell::RefCell::new(None) };
}

/// The process's runtime, built on first use (and again after a fork).
pub fn runtime() -> Result<Arc<Runtime>, BridgeError> {
    if exiting() {
        return Err(BridgeError::shutdown().context("the interpreter is exiting"));
    }
    let generation = fork_generation();
    if let Some(rt) = CACHED.with_borrow(|c| c.as_ref().filter(|(g, _)| *g == generation).map(|(_, rt)| rt.clone())) {
        return Ok(rt);
    }
    let rt = shared_runtime()?;
    CACHED.with_borrow_mut(|c| *c = Some((generation, rt.clone())));
    Ok(rt)
}

fn shared_runtime() -> Result<Arc<Runtime>, BridgeError> {
    let pid = std::process::id();
    // A lock held by a parent thread at fork time stays "held" in the child:
    // bound the wait instead of hanging.
    let mut slot = RUNTIME.try_lock_for(Duration::from_secs(2)).ok_or_else(|| {
        BridgeError::internal("the tokio runtime lock is stuck (held across fork()?); restart the process")
    })?;
    match slot.as_ref() {
        Some((p, rt)) if *p == pid => return Ok(rt.clone()),
        Some(_) => {
            if let Some((_, old)) = slot.take() {
                std::mem::forget(old);
            }
        }
        None => {}
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("dreamos-bridge")
        .enable_all()
        .build()
        .map(Arc::new)
        .map_err(|e| BridgeError::internal(format!("could not start the tokio runtime: {e}")))?;
    *slot = Some((pid, rt.clone()));
    Ok(rt)
}

/// `os.register_at_fork(after_in_child=...)`.
#[pyfunction]
pub fn _after_fork_in_child() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// `atexit`: stop the runtime without holding the GIL.
#[pyfunction]
pub fn _shutdown_runtime(py: Python<'_>) {
    EXITING.store(true, Ordering::Release);
    CACHED.with_borrow_mut(|c| c.take());
    let taken = RUNTIME.try_lock_for(Duration::from_secs(1)).and_then(|mut s| s.take());
    if let Some((pid, rt)) = taken {
        if pid != std::process::id() {
            std::mem::forget(rt);
            return;
        }
        match Arc::try_unwrap(rt) {
            Ok(rt) => py.detach(|| rt.shutdown_timeout(Duration::from_millis(500))),
            // Another thread still holds it (an event loop thread's cache,
            // a pending call): leave it to the OS.
            Err(rt) => std::mem::forget(rt),
        }
    }
}
