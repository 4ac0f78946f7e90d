//! `dreamos_bridge._native`: the pyo3 binding of the dreamos-bridge engine.
//!
//! The binding is thin: it converts Python values, calls the core, and maps
//! errors to the exception classes of `dreamos_bridge`. What it adds is the
//! plumbing that makes an `await bridge.route(...)` cheap. On this 2-core
//! machine a cross-thread wake-up costs 20-60 us and pyo3-async-runtimes'
//! `future_into_py` 80-170 us per await, while an asyncio round trip costs
//! about 7 us. So the design avoids thread hops wherever the work allows:
//!
//! 1. **Stages that never wait run on the caller's thread.** `route` calls the
//!    core's staged API: `BridgeManager::begin` (validate, authenticate,
//!    authorize, resolve) and `Call::try_admit` are synchronous.
//! 2. **Python handlers on the caller's loop are called right here.** When
//!    the resolved handler is a `PyHandler` registered on the loop the caller
//!    runs in and admission succeeded at once, `route` calls the function
//!    and steps a coroutine once (`capi::send_none`); if it returned, the
//!    outcome goes to `Call::finish` (metrics and limits work as for any
//!    other call). Only a handler that suspends is handed to Python as a
//!    `Direct`, which runs the rest in a task under the call's deadline.
//! 3. **Rust handlers answer inline.** A synchronous one (`sync_handler_fn`)
//!    through `Call::deliver_now`, with no future at all; anything else
//!    (`admit` + `deliver`, or `publish`, `initialize`, ...) is polled once
//!    on the caller's thread with the GIL released and the runtime entered,
//!    and usually finishes there.
//! 4. **`route` returns a future**: when the answer came inline (errors
//!    too), a native finished one (`done::Done`), so `await` returns at once
//!    with no `StopIteration` and `asyncio.gather` uses it as it is instead
//!    of wrapping a coroutine in a task; otherwise the package's `_Reply`
//!    (an `asyncio.Future`). Both are also `Coroutine`s for `create_task`.
//!    A payload bound for a Python handler on this loop is validated in place
//!    (`BridgeManager::begin_with`) and never converted.
//! 5. **What must wait goes to tokio and comes back in batches.** A pending
//!    future is spawned on the process's runtime; its result is pushed to the
//!    caller loop's `Completer` (a queue plus a socket pair registered with
//!    `loop.add_reader`): one wake-up drains every result that finished
//!    meanwhile, instead of one `call_soon_threadsafe` per future.
//! 6. **`bridge.route(...)` is a native method call.** `BridgeManager`
//!    inherits `route` from the native `router::BridgeBase` (no Python frame;
//!    the caller loop's completer comes from a per-thread cache).
//! 7. **Python handlers reached from tokio** (publish's background delivery,
//!    callers on another loop) are scheduled on their own loop with
//!    `call_soon_threadsafe`; the engine dropping the call cancels the task.
//!
//! Safety: one tokio runtime per process, rebuilt after `fork()` (bridges
//! from the parent then refuse work with a clear `ShutdownError`), shut down
//! at interpreter exit; no Rust panic crosses into Python (`errors::guard`
//! and `catch_unwind` on every spawned future turn it into `INTERNAL`).

mod args;
mod bridge;
mod capi;
mod cli;
mod completer;
mod convert;
mod done;
mod errors;
mod handler;
mod message;
mod remote;
mod router;
mod runtime;

use pyo3::prelude::*;

/// The private native module of `dreamos_bridge`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<bridge::PyBridge>()?;
    m.add_class::<bridge::Direct>()?;
    m.add_class::<router::BridgeBase>()?;
    m.add_class::<completer::Completer>()?;
    m.add_class::<done::Done>()?;
    done::install_am_send(m.py())?;
    m.add_class::<completer::Abort>()?;
    m.add_class::<handler::Resolver>()?;
    m.add_class::<message::PyMessage>()?;
    m.add_class::<message::PyToken>()?;
    m.add_class::<remote::PyRemote>()?;
    m.add_function(wrap_pyfunction!(cli::cli_main, m)?)?;
    m.add_function(wrap_pyfunction!(errors::_register_errors, m)?)?;
    m.add_function(wrap_pyfunction!(handler::_register_dispatch, m)?)?;
    m.add_function(wrap_pyfunction!(completer::_register_future_types, m)?)?;
    m.add_function(wrap_pyfunction!(router::_register_route_helpers, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::_after_fork_in_child, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::_shutdown_runtime, m)?)?;
    m.add("ERROR_CODES", dreamos_bridge::ErrorCode::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>())?;
    Ok(())
}
