//! The `dreamos-bridge` binary: a thin caller of [`dreamos_bridge_server::run`]
//! (the Python package's console script calls the same function).

/// mimalloc instead of glibc's malloc. A request through the server to an
/// HTTP service allocates and frees dozens of small blocks, many freed on
/// another worker thread than the one that allocated them; glibc spent about
/// a fifth of the server's user CPU on that (malloc, free, consolidation),
/// and with mimalloc the hop costs about 10% less CPU per request
/// (docs/server.md, Benchmark).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(dreamos_bridge_server::run(
        std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect(),
    ));
}
