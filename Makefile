# dreamos-bridge: every command a developer or CI needs.
#
#   make demo   build what is needed and run the main example on embedded defaults
#   make test   install what is needed, build every part, run every suite
#   make bench  run the benchmarks (numbers beside a peer, printed as ratios)
#
# Each part (Rust core, Python, Node, C, server) adds its own targets in
# mk/<part>.mk and appends them to TEST_TARGETS / BENCH_TARGETS.

SHELL := /bin/bash
.DEFAULT_GOAL := help
export CARGO_TERM_COLOR ?= never
# One Cargo target directory shared by every crate and binding.
export CARGO_TARGET_DIR := $(CURDIR)/target

TEST_TARGETS :=
BENCH_TARGETS :=
DEMO_TARGET := demo-rust

include $(sort $(wildcard mk/*.mk))

.PHONY: help demo test bench lint
help:
	@echo "make demo   - run the example agent on the embedded default config"
	@echo "make test   - install prerequisites, build everything, run every suite"
	@echo "make bench  - run the benchmarks and print ratios against peers"

demo: $(DEMO_TARGET)

test: lint $(TEST_TARGETS)
	@echo "make test: all suites passed"

bench: $(BENCH_TARGETS)
