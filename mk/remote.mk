# Remote agents: `BridgeManager.connect(url, credentials)` in Python and Node
# (the Rust client in client/, tested with the workspace in test-rust).
#
# The Python and Node suites spawn the real `dreamos-bridge` server binary
# (bindings-python/tests/test_remote.py, bindings-node/__test__/remote.test.mjs),
# so it is built before them.

.PHONY: server-bin
server-bin:
	cargo build -p dreamos-bridge-server

test-python: server-bin
test-node: server-bin
