# HTTP service delivery: the bridge's `route` to a loopback echo service
# beside raw reqwest (the tests run in test-rust with the rest of the core).

BENCH_TARGETS += bench-http

.PHONY: bench-http
bench-http:
	cargo bench -p dreamos-bridge --bench http
