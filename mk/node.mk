# Node: the napi-rs addon (bindings-node/) and its node --test suites.
#
# `npm install` at the root installs @napi-rs/cli and links the
# `dreamos-bridge` workspace package; --ignore-scripts skips the release
# build of the root postinstall, since tests use a debug build and the
# benchmark builds release itself. It also installs the pinned lint tools
# (eslint, @eslint/js, globals, typescript: root devDependencies).

TEST_TARGETS += test-node
BENCH_TARGETS += bench-node

NODE_MODULES_STAMP := node_modules/.package-lock.json

.PHONY: node-deps build-node build-node-release lint-node test-node bench-node demo-node

$(NODE_MODULES_STAMP): package.json bindings-node/package.json
	npm install --ignore-scripts --no-audit --no-fund
	@touch $@

node-deps: $(NODE_MODULES_STAMP)

# `npm run lint` (root package.json): eslint (eslint.config.mjs) on the
# hand-written JS of the tests, bench/ and examples/, then tsc --strict on
# bindings-node/__test__/types.test-d.mts, which uses index.d.ts as an agent
# would. Both read the committed sources: no addon build needed.
lint-node: node-deps
	npm run --silent lint

lint: lint-node

build-node: node-deps
	npm run build:debug

build-node-release: node-deps
	npm run build

test-node: build-node
	cd bindings-node && node --test __test__/

bench-node: build-node-release
	node bench/node_route.mjs

demo-node: build-node
	node examples/agent.mjs
