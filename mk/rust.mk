# Rust: the core engine (and every crate of the workspace).

TEST_TARGETS += test-rust
BENCH_TARGETS += bench-rust

.PHONY: lint test-rust bench-rust demo-rust
lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

test-rust:
	cargo test --workspace

bench-rust:
	cargo bench -p dreamos-bridge --bench route

demo-rust:
	cargo run -q -p dreamos-bridge --example demo
