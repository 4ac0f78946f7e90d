//! Lets `cargo test` and `cargo clippy` link the crate against libpython
//! (maturin links the wheel itself; the `extension-module` feature stays off).
fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
}
