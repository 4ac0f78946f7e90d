# Python: the pyo3 package `dreamos_bridge` (bindings-python/), its pytest
# suite, the Python benchmark and the Python agent demo.
#
# Everything runs in .venv, created here. maturin gets its own target dir so
# that it and `cargo build` do not rebuild each other's pyo3.

TEST_TARGETS += test-python
BENCH_TARGETS += bench-python
DEMO_TARGET := demo-python

PY_VENV := $(CURDIR)/.venv
PY := $(PY_VENV)/bin/python
PY_PINS := maturin==1.16.0 pytest==8.4.2 pytest-asyncio==1.5.0 mypy==1.20.2 aiohttp==3.14.5 ruff==0.17.5
# The stamp names a hash of the pins, so a changed pin reinstalls them.
PY_DEPS_STAMP := $(PY_VENV)/.dreamos-deps-$(shell echo '$(PY_PINS)' | cksum | cut -d' ' -f1)
# What ruff checks and formats (configured in pyproject.toml [tool.ruff]).
PY_LINT_PATHS := bindings-python/python bindings-python/tests bench/*.py examples/*.py
PY_SOURCES := $(shell find core/src client/src server/src server/assets bindings-python/src bindings-python/python -type f) \
	bindings-python/Cargo.toml core/Cargo.toml client/Cargo.toml server/Cargo.toml Cargo.toml pyproject.toml
MATURIN := $(PY_VENV)/bin/maturin develop --target-dir $(CURDIR)/target/maturin

.PHONY: python-venv python-dev python-release lint-python test-python bench-python demo-python

$(PY_DEPS_STAMP):
	@command -v python3 >/dev/null || { apt-get update && apt-get install -y python3 python3-venv; }
	python3 -m venv $(PY_VENV) || { apt-get update && apt-get install -y python3-venv && python3 -m venv $(PY_VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PY_PINS)
	rm -f $(PY_VENV)/.dreamos-deps*
	touch $@

python-venv: $(PY_DEPS_STAMP)

# Debug build for the tests; release build for bench and demo. Each stamp
# remembers which one is installed, so a repeated `make` does nothing.
$(PY_VENV)/.dreamos-dev: $(PY_DEPS_STAMP) $(PY_SOURCES)
	VIRTUAL_ENV=$(PY_VENV) $(MATURIN)
	rm -f $(PY_VENV)/.dreamos-release
	touch $@

$(PY_VENV)/.dreamos-release: $(PY_DEPS_STAMP) $(PY_SOURCES)
	VIRTUAL_ENV=$(PY_VENV) $(MATURIN) --release
	rm -f $(PY_VENV)/.dreamos-dev
	touch $@

python-dev: $(PY_VENV)/.dreamos-dev
python-release: $(PY_VENV)/.dreamos-release

# Lint only needs the venv, not the native build. mypy --strict on the package
# runs with the tests (bindings-python/tests/test_process.py), against the
# freshly built native module and its stubs.
lint-python: python-venv
	$(PY_VENV)/bin/ruff check $(PY_LINT_PATHS)
	$(PY_VENV)/bin/ruff format --check $(PY_LINT_PATHS)

lint: lint-python

test-python: python-dev
	$(PY) -m pytest -q bindings-python/tests

# The HTTP case targets `dreamos-bridge serve` (the release binary).
bench-python: python-release
	cargo build --release -p dreamos-bridge-server
	DREAMOS_BRIDGE_BIN=$(CARGO_TARGET_DIR)/release/dreamos-bridge $(PY) bench/python_route.py

demo-python: python-release
	$(PY) examples/agent.py
