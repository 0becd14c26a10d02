# cpool -- a thin wrapper over CMake. Run `make` for the list of targets.

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
CMAKE ?= cmake
JOBS ?= 2
BENCH_TARGET ?= cpool_bench

# The official CMAP conformance tests (JSON). Not part of this repository.
CPOOL_CMAP_SPEC_DIR ?= $(ROOT)/../shared/cmap-spec/cmap-format
SPEC_DIR := $(abspath $(CPOOL_CMAP_SPEC_DIR))

# Per-test default timeout (tests may set their own), and a limit for a
# whole ctest run (seconds), so a hung test cannot eat the CI budget.
CTEST_ARGS ?= --output-on-failure --no-tests=error -j$(JOBS) --timeout 300
export CPOOL_CTEST_TIMEOUT ?= 1200

# Every port the tests use is an offset from this one (100 ports from it):
# two checkouts on one machine run `make test` at once with different bases.
CPOOL_TEST_PORT_BASE ?= 25400

COMMON := -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCPOOL_CMAP_SPEC_DIR="$(SPEC_DIR)"
# What the test stages build: everything, and a missing optional library is
# an error there rather than a quietly smaller suite.
TESTCFG := $(COMMON) -DCPOOL_TEST_PORT_BASE=$(CPOOL_TEST_PORT_BASE) \
           -DCPOOL_BUILD_TESTS=ON -DCPOOL_BUILD_EXAMPLES=ON -DCPOOL_BUILD_TOOLS=ON \
           -DCPOOL_WITH_SQLITE=ON -DCPOOL_WITH_PG=ON -DCPOOL_WITH_REDIS=ON \
           -DCPOOL_WITH_MICROHTTPD=ON -DCPOOL_WITH_LOOPS=ON
# Sanitizer builds: -O1 keeps them quick to build and run, with asserts on.
SAN := -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g" -DCPOOL_BUILD_BENCH=OFF -DCPOOL_WERROR=ON

ENV_default :=
ENV_asan := ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
            UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ENV_tsan := TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1

DIR_default := build
DIR_asan := build-asan
DIR_tsan := build-tsan

CFG_default := $(TESTCFG) -DCPOOL_BUILD_BENCH=ON -DCPOOL_WERROR=ON
CFG_asan := $(TESTCFG) $(SAN) -DCPOOL_SANITIZE=address
CFG_tsan := $(TESTCFG) $(SAN) -DCPOOL_SANITIZE=thread

.PHONY: help demo test test-default test-asan test-tsan bench fuzz deps demo-deps clean

help:
	@echo "cpool -- a CMAP-conformant connection pool library in C"
	@echo
	@echo "  make demo    install what the demo needs (a C toolchain, CMake, SQLite),"
	@echo "               build the cpool command and run 'cpool bench' for 10 s on an"
	@echo "               embedded SQLite database: live progress, then the report"
	@echo "               (and build-demo/demo.svg, a plot of the run)"
	@echo "  make test    install missing Debian packages (as root), then build and"
	@echo "               run every test three times: plain (build/), ASan+UBSan"
	@echo "               (build-asan/) and TSan (build-tsan/). A skipped test fails."
	@echo "  make bench   build and run the benchmark (quick default set)"
	@echo "  make fuzz    run each libFuzzer harness for FUZZ_SECONDS (now: $(FUZZ_SECONDS))"
	@echo "  make clean   remove the build directories"
	@echo
	@echo "  One stage only: make test-default | test-asan | test-tsan"
	@echo "  Variables: CPOOL_CMAP_SPEC_DIR (now: $(SPEC_DIR)), JOBS (now: $(JOBS)),"
	@echo "             CPOOL_TEST_PORT_BASE (now: $(CPOOL_TEST_PORT_BASE); the tests use 100 ports from it)"

deps:
	@$(ROOT)/scripts/install-deps.sh
demo-deps:
	@$(ROOT)/scripts/install-deps.sh demo

# The main job: `cpool bench` on the embedded default (a SQLite database in
# a temporary file), with live progress and the report at the end. It needs
# only what the demo needs: its own build directory, the library and the
# command, and whatever other connectors happen to be installed.
DEMO_ARGS ?= --duration 10 --threads 8 --plot $(ROOT)/build-demo/demo.svg
DEMO_CFG := $(COMMON) -DCPOOL_BUILD_TESTS=OFF -DCPOOL_BUILD_BENCH=OFF \
            -DCPOOL_BUILD_EXAMPLES=OFF -DCPOOL_BUILD_TOOLS=ON -DCPOOL_WITH_SQLITE=ON \
            -DCPOOL_WITH_PG=AUTO -DCPOOL_WITH_REDIS=AUTO -DCPOOL_WITH_MICROHTTPD=AUTO
demo: demo-deps
	$(CMAKE) -S $(ROOT) -B $(ROOT)/build-demo $(DEMO_CFG)
	$(CMAKE) --build $(ROOT)/build-demo --target cpool_cli -j$(JOBS)
	$(ROOT)/build-demo/tools/cpool bench $(DEMO_ARGS)

bench: deps
	$(CMAKE) -S $(ROOT) -B $(ROOT)/build $(CFG_default)
	$(CMAKE) --build $(ROOT)/build --target $(BENCH_TARGET) -j$(JOBS)
	$(ROOT)/build/bench/$(BENCH_TARGET)

# Longer fuzzing than make test's 30 s a harness; findings stay in
# build/tests/fuzz/, never in the repository.
FUZZ_SECONDS ?= 600
fuzz: deps
	$(ROOT)/tests/fuzz/fuzz.sh build $(ROOT) $(ROOT)/build/tests/fuzz
	for h in redact json options targets; do \
	  CPOOL_FUZZ_SEED=0 $(ROOT)/tests/fuzz/fuzz.sh run $(ROOT) $(ROOT)/build/tests/fuzz $$h \
	    $(FUZZ_SECONDS) || exit 1; \
	done

define spec_check
@if [ ! -d "$(SPEC_DIR)" ]; then \
  echo "########################################################################"; \
  echo "# CMAP spec directory NOT FOUND: $(SPEC_DIR)"; \
  echo "# The CMAP conformance tests will FAIL (they are never skipped)."; \
  echo "# Set CPOOL_CMAP_SPEC_DIR=/path/to/cmap-format and run again."; \
  echo "########################################################################"; \
fi
endef

# One stage: configure, build, run every test. $(1) = default|asan|tsan.
define stage
	$(spec_check)
	@rm -f $(ROOT)/$(DIR_$(1))/ctest-last.log
	@echo "==> [$(1)] configure $(DIR_$(1))/"
	$(CMAKE) -S $(ROOT) -B $(ROOT)/$(DIR_$(1)) $(CFG_$(1))
	@echo "==> [$(1)] build"
	$(CMAKE) --build $(ROOT)/$(DIR_$(1)) -j$(JOBS)
	@echo "==> [$(1)] test"
	$(ENV_$(1)) $(ROOT)/scripts/ctest-run.sh $(ROOT)/$(DIR_$(1)) $(CTEST_ARGS)
endef

test-default:
	$(call stage,default)
test-asan:
	$(call stage,asan)
test-tsan:
	$(call stage,tsan)

# Runs all three stages even when one fails, then prints one line per stage
# and fails if any stage did.
test: deps
	@failed=""; summary=""; \
	for s in default asan tsan; do \
	  case $$s in default) d=$(DIR_default);; asan) d=$(DIR_asan);; tsan) d=$(DIR_tsan);; esac; \
	  t0=$$(date +%s); \
	  if $(MAKE) --no-print-directory test-$$s; then st=PASS; else st=FAIL; failed="$$failed $$s"; fi; \
	  t1=$$(date +%s); \
	  log="$(ROOT)/$$d/ctest-last.log"; \
	  res=$$(grep -E 'tests passed' "$$log" 2>/dev/null | tail -n 1 || true); \
	  skips=$$(grep -cE '^ *[0-9]+/[0-9]+ +Test +#[0-9]+: .*\*\*\*(Skipped|Not Run)' "$$log" 2>/dev/null || true); \
	  if [ -n "$$res" ] && [ "$${skips:-0}" != 0 ]; then res="$$res; $$skips did not run"; fi; \
	  summary="$$summary$$(printf '  %-8s %-4s %5ss  %s' "$$s" "$$st" "$$((t1 - t0))" "$${res:-no tests ran}")"$$'\n'; \
	done; \
	echo; echo "==> make test summary (stage, result, configure+build+test time, ctest):"; \
	printf '%s' "$$summary"; \
	if [ -n "$$failed" ]; then echo "==> FAILED:$$failed"; exit 1; fi; \
	echo "==> all stages passed"

clean:
	rm -rf $(ROOT)/build $(ROOT)/build-asan $(ROOT)/build-tsan $(ROOT)/build-demo
