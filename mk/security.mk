# Security: the per-call verify/authorize cost beside its peers.

BENCH_TARGETS += bench-security

.PHONY: bench-security
bench-security:
	cargo bench -p dreamos-bridge --bench security
