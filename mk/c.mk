# C: libdreamos_bridge (.so/.a), its committed header, the C test programs,
# the example agent and the C benchmark.
#
#   make test-c       build the library (debug), check the header is fresh,
#                     build and run the C tests under AddressSanitizer (leak
#                     checking on), build the example both ways and run it
#   make c-header     regenerate bindings-c/include/dreamos_bridge.h (cbindgen)
#   make c-pkgconfig  write target/<profile>/dreamos_bridge.pc
#   make bench-c      release build; route/route_async throughput vs a direct call

TEST_TARGETS += test-c
BENCH_TARGETS += bench-c

C_DIR      := bindings-c
C_INCLUDE  := $(C_DIR)/include
C_TESTS    := $(basename $(notdir $(wildcard $(C_DIR)/tests/test_*.c)))
C_VERSION  := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
C_CFLAGS   := -std=c11 -Wall -Wextra -Werror -pedantic -g
C_ASAN     := -fsanitize=address -fno-omit-frame-pointer
# Leak checking on; errors fail the run.
C_ASAN_ENV := ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=0 LSAN_OPTIONS=report_objects=1

.PHONY: c-tools c-lib c-lib-release c-header c-header-check c-pkgconfig test-c bench-c c-example

# gcc, g++ (the header is checked as C++ too) and pkg-config: present on
# most machines; install them if not.
c-tools:
	@command -v gcc >/dev/null && command -v g++ >/dev/null && command -v pkg-config >/dev/null || \
	  { apt-get update && apt-get install -y --no-install-recommends gcc g++ libc6-dev pkg-config; }

c-lib:
	cargo build -p dreamos-bridge-c

c-lib-release:
	cargo build --release -p dreamos-bridge-c

# cbindgen runs as a library inside a Rust test (a dev-dependency): no tool to install.
c-header:
	DREAMOS_WRITE_HEADER=1 cargo test -q -p dreamos-bridge-c --test header

c-header-check:
	cargo test -q -p dreamos-bridge-c --test header

# $(1): profile directory (debug or release)
define c_render_pc
	@mkdir -p $(CARGO_TARGET_DIR)/$(1)
	sed -e 's|@LIBDIR@|$(CARGO_TARGET_DIR)/$(1)|' -e 's|@INCLUDEDIR@|$(CURDIR)/$(C_INCLUDE)|' \
	    -e 's|@VERSION@|$(C_VERSION)|' $(C_DIR)/dreamos_bridge.pc.in > $(CARGO_TARGET_DIR)/$(1)/dreamos_bridge.pc
endef

c-pkgconfig:
	$(call c_render_pc,debug)

test-c: c-tools c-lib c-header-check c-pkgconfig
	@mkdir -p $(CARGO_TARGET_DIR)/c-tests
	@failed=""; for t in $(C_TESTS); do \
	  echo "== $$t (AddressSanitizer, leak checking on)"; \
	  gcc $(C_CFLAGS) $(C_ASAN) -I$(C_INCLUDE) -I$(C_DIR)/tests $(C_DIR)/tests/$$t.c \
	      -L$(CARGO_TARGET_DIR)/debug -ldreamos_bridge -Wl,-rpath,$(CARGO_TARGET_DIR)/debug -pthread \
	      -o $(CARGO_TARGET_DIR)/c-tests/$$t || exit 1; \
	  $(C_ASAN_ENV) $(CARGO_TARGET_DIR)/c-tests/$$t || failed="$$failed $$t"; \
	done; \
	if [ -n "$$failed" ]; then echo "C test programs failed:$$failed"; exit 1; fi
	@echo "== header.cpp (the header as C++, before the standard headers)"
	g++ -std=c++17 -Wall -Wextra -Werror -pedantic -I$(C_INCLUDE) $(C_DIR)/tests/header.cpp \
	    -L$(CARGO_TARGET_DIR)/debug -ldreamos_bridge -Wl,-rpath,$(CARGO_TARGET_DIR)/debug \
	    -o $(CARGO_TARGET_DIR)/c-tests/header-cpp
	$(CARGO_TARGET_DIR)/c-tests/header-cpp
	@$(MAKE) --no-print-directory c-example

# The example, built exactly as docs/c.md shows: the one-line gcc command, then pkg-config.
c-example: c-lib c-pkgconfig
	gcc -std=c11 examples/agent.c -I$(C_INCLUDE) -L$(CARGO_TARGET_DIR)/debug -ldreamos_bridge \
	    -Wl,-rpath,$(CARGO_TARGET_DIR)/debug -o $(CARGO_TARGET_DIR)/agent
	$(CARGO_TARGET_DIR)/agent
	gcc -std=c11 -Wall -Wextra -Werror -pedantic examples/agent.c \
	    $$(PKG_CONFIG_PATH=$(CARGO_TARGET_DIR)/debug pkg-config --cflags --libs dreamos_bridge) \
	    -o $(CARGO_TARGET_DIR)/agent-pkgconfig
	$(CARGO_TARGET_DIR)/agent-pkgconfig > /dev/null
	gcc -std=c11 -Wall -Wextra -Werror -pedantic -static-libgcc examples/agent.c -I$(C_INCLUDE) \
	    $(CARGO_TARGET_DIR)/debug/libdreamos_bridge.a \
	    $$(PKG_CONFIG_PATH=$(CARGO_TARGET_DIR)/debug pkg-config --static --libs-only-other --libs-only-l dreamos_bridge | sed 's/-ldreamos_bridge//') \
	    -o $(CARGO_TARGET_DIR)/agent-static
	$(CARGO_TARGET_DIR)/agent-static > /dev/null
	@echo "examples/agent.c: built and ran (shared, pkg-config, static)"

bench-c: c-tools c-lib-release
	$(call c_render_pc,release)
	gcc -std=c11 -O2 -Wall -Wextra -Werror -pedantic -I$(C_INCLUDE) $(C_DIR)/bench/route_bench.c \
	    -L$(CARGO_TARGET_DIR)/release -ldreamos_bridge -Wl,-rpath,$(CARGO_TARGET_DIR)/release -pthread \
	    -o $(CARGO_TARGET_DIR)/route_bench
	$(CARGO_TARGET_DIR)/route_bench
