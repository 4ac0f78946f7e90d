//! The `dreamos-bridge` command of the Python package.
//!
//! `pip install dreamos-bridge` installs a console script
//! (`dreamos_bridge._cli:main`) that lands here, so Python users get the
//! same server and tools as the standalone binary without a second
//! download: this calls the server crate's CLI entry,
//! [`dreamos_bridge_server::run`], which owns its own tokio runtime.
//!
//! The GIL is released for the whole run, so a `serve` that lasts hours
//! does not hold up other Python threads. Signals: `_cli.py` gives SIGINT
//! back its default disposition before calling in, and `serve` installs
//! tokio handlers for SIGINT and SIGTERM, so both drain the server as with
//! the binary (Python's own SIGINT handler would only set a flag that
//! nobody checks while Rust runs, then raise `KeyboardInterrupt` after the
//! drain).

use pyo3::prelude::*;

/// Run the command line `argv` (`sys.argv`: the first item is the program
/// name) and return the exit code.
#[pyfunction]
pub fn cli_main(py: Python<'_>, argv: Vec<String>) -> i32 {
    let mut args = argv;
    // clap prints the program name in usage lines; the script path would be noise.
    match args.first_mut() {
        Some(first) => *first = "dreamos-bridge".to_string(),
        None => args.push("dreamos-bridge".to_string()),
    }
    py.detach(|| {
        // A panic must not unwind into the interpreter: report it like the binary would, with exit code 70 (EX_SOFTWARE).
        std::panic::catch_unwind(|| dreamos_bridge_server::run(args)).unwrap_or_else(|_| {
            eprintln!("error: internal error in dreamos-bridge (a bug): please report it");
            70
        })
    })
}
