//! The `dreamos-bridge` binary: a thin caller of [`dreamos_bridge_server::run`]
//! (the Python package's console script calls the same function).

fn main() {
    std::process::exit(dreamos_bridge_server::run(
        std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect(),
    ));
}
