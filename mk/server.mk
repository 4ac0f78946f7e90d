# Server mode: the dreamos-bridge binary (HTTP API, WebSocket services, dashboard).
#
# Its Rust tests run with `cargo test --workspace` (test-rust); this part adds
# the dashboard test in headless Chromium, which needs Debian packages.

TEST_TARGETS += test-server
BENCH_TARGETS += bench-server

.PHONY: test-server bench-server server-browser-prereqs server-bench-prereqs

server-browser-prereqs:
	@if [ ! -x /usr/bin/chromium ] || ! command -v chromedriver >/dev/null; then \
		echo "installing chromium and chromium-driver (Debian)"; \
		apt-get update && apt-get install -y chromium chromium-driver; \
	fi

test-server: server-browser-prereqs
	cargo test -p dreamos-bridge-server --test dashboard -- --ignored
	@echo "dashboard screenshot: $(CARGO_TARGET_DIR)/dashboard.png"

# nginx (Debian) for the proxy comparison, valgrind for the instruction
# counts; python3 formats the tables.
server-bench-prereqs:
	@missing=""; command -v nginx >/dev/null || missing="$$missing nginx"; \
	command -v valgrind >/dev/null || missing="$$missing valgrind"; \
	command -v python3 >/dev/null || missing="$$missing python3"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing (Debian)"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	fi

# POST /v1/route to an in-process echo handler through `dreamos-bridge serve`,
# driven by `dreamos-bridge bench` (release build); then one HTTP echo service
# reached directly, through nginx, through a plain hyper + reqwest proxy and
# through the bridge (bench/server_vs_nginx.sh), and the three hops' instructions
# per request under callgrind (bench/hop_instructions.sh).
BENCH_SERVER_PORT ?= 18089
bench-server: server-bench-prereqs
	cargo build --release -p dreamos-bridge-server
	@set -e; dir=$$(mktemp -d); \
	printf 'bridge:\n  host: 127.0.0.1\n  port: $(BENCH_SERVER_PORT)\n  queue_size: 100000\nmonitoring:\n  log_level: WARN\n' > $$dir/bench.yaml; \
	$(CARGO_TARGET_DIR)/release/dreamos-bridge serve --config $$dir/bench.yaml --echo bench.echo > $$dir/out 2>&1 & pid=$$!; \
	trap 'kill $$pid 2>/dev/null; rm -rf $$dir' EXIT; \
	for i in $$(seq 1 100); do grep -q listening $$dir/out && break; sleep 0.1; done; \
	$(CARGO_TARGET_DIR)/release/dreamos-bridge bench --url http://127.0.0.1:$(BENCH_SERVER_PORT) --destination bench.echo --concurrency 1 --requests 5000 --label "bridge /v1/route, 1 in flight"; \
	$(CARGO_TARGET_DIR)/release/dreamos-bridge bench --url http://127.0.0.1:$(BENCH_SERVER_PORT) --destination bench.echo --concurrency 16 --requests 40000 --label "bridge /v1/route, 16 in flight"; \
	$(CARGO_TARGET_DIR)/release/dreamos-bridge bench --raw-url http://127.0.0.1:$(BENCH_SERVER_PORT)/health --get --concurrency 16 --requests 40000 --label "peer: same server, /health (HTTP floor)"
	bench/server_vs_nginx.sh $(CARGO_TARGET_DIR)/release/dreamos-bridge 1 5000
	bench/server_vs_nginx.sh $(CARGO_TARGET_DIR)/release/dreamos-bridge 16 20000
	bench/hop_instructions.sh $(CARGO_TARGET_DIR)/release/dreamos-bridge
