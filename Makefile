# tonio_loop - build, test and benchmark.
#
#   make bench        the quick benchmark: tonio_loop against asyncio and uvloop
#   make test         build, then run the whole test suite (also with threads=4)
#   make test-threads the pytest suite on loops with 4 worker threads
#   make conformance  CPython's own test_asyncio suites on tonio_loop
#   make dist         the sdist and a manylinux wheel in dist/, both checked
#   make tsan         the suite under ThreadSanitizer on a free-threaded CPython
#   make PY=python3.12 test   the same on another interpreter
#
# Each target installs what is missing by itself: the Python side into a
# virtualenv (.venv, or .venv-<PY>); a C compiler and the interpreter's
# headers through apt-get where they are missing (libev is compiled in from
# vendor/libev; TONIO_SYSTEM_LIBEV=1 builds against the system's instead).

PY ?= python3
PYTHON := $(shell tools/find-python $(PY))
VENV ?= $(if $(filter python3,$(PY)),.venv,.venv-$(PY))
VPY := $(VENV)/bin/python
SOURCES := $(wildcard loop/*.c include/*.h vendor/libev/*.[ch]) setup.py
# the servers tests/integration talks to (its fixtures skip, saying why, when
# one cannot be installed or started); openssl makes the TLS tests'
# certificates; libssl-dev builds the bench's TLS load generator (the bench
# smoke test runs it)
TEST_DEPS := postgresql redis-server openssl libssl-dev
# the benchmark's HTTP load (it falls back to its own C client without it)
# and the TLS load generator's headers
BENCH_DEPS := wrk libssl-dev
PYTEST_ARGS ?=

.PHONY: all build deps test-deps bench-deps test test-threads conformance bench bench-full refcheck valgrind tsan clean check-python dist

all: build

check-python:
	@test -n "$(PYTHON)" || { echo "no interpreter called $(PY) on this machine"; exit 1; }

deps: check-python
	@tools/check-build-deps $(PYTHON)

$(VENV)/.installed: pyproject.toml setup.py | check-python deps
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip setuptools wheel
	$(VPY) -m pip install -q -e '.[test,bench]'
	@touch $@

$(VENV)/.built: $(VENV)/.installed $(SOURCES)
	$(VPY) setup.py -q build_ext --inplace
	@touch $@

build: deps $(VENV)/.built

test: build test-deps
	$(VPY) -m pytest -rsx $(PYTEST_ARGS)
	$(VPY) -m tests.conformance --quiet
	$(MAKE) --no-print-directory test-threads

# the whole pytest suite again with worker threads: tonio's loops are then
# Loop(threads=4), and only they run (asyncio's ran in the first pass;
# tests/conftest.py). The benchmark's smoke test makes its own loops: once is
# enough.
test-threads: build
	TONIO_THREADS=4 $(VPY) -m pytest -q --timeout-method=thread \
	    --ignore=tests/test_bench.py $(PYTEST_ARGS)

conformance: build
	$(VPY) -m tests.conformance

# the sdist and a manylinux wheel in dist/, each checked as a user gets it
# (tools/make-dist says how)
dist: deps test-deps
	tools/make-dist $(PYTHON)

test-deps:
	-@tools/install-system-deps $(TEST_DEPS) || echo "could not install $(TEST_DEPS): their integration tests will skip"

bench-deps:
	-@tools/install-system-deps $(BENCH_DEPS) || echo "could not install $(BENCH_DEPS): HTTP load comes from bench/loadgen.c"

bench: build bench-deps
	$(VPY) -m bench --quick

bench-full: build bench-deps
	$(VPY) -m bench --full

# Leak checks. refcheck: a debug CPython (Debian's python3.11-dbg) counts
# references around repeated scenarios (tests/refleaks.py) and runs the suite
# with CPython's assertions on. valgrind: the core tests under memcheck.
DBG_VENV := .venv-dbg
$(DBG_VENV)/.installed:
	@tools/install-system-deps python3.11-dbg python3.11-dev python3.11-venv
	/usr/bin/python3.11d -m venv $(DBG_VENV)
	$(DBG_VENV)/bin/python -m pip install -q --upgrade pip setuptools wheel
	$(DBG_VENV)/bin/python -m pip install -q pytest pytest-asyncio pytest-timeout anyio
	@touch $@

# The debug build has the same file name as .venv's: .venv rebuilds after it.
refcheck: $(DBG_VENV)/.installed
	rm -f .venv/.built
	TONIO_DEBUG=1 $(DBG_VENV)/bin/python setup.py -q build_ext --inplace
	$(DBG_VENV)/bin/python -m tests.refleaks
	$(DBG_VENV)/bin/python -m pytest -q -p no:cacheprovider \
	    --ignore=tests/test_bench.py --ignore=tests/integration \
	    --ignore=tests/test_typing.py  # the stubs, which no build changes (make test runs it)

# --fair-sched=yes: valgrind runs one thread at a time, and with its default
# lock a worker running tasks that keep rescheduling themselves can hold it
# while the loop thread waits (test_threads' writers then never see their
# timer fire)
valgrind: build
	PYTHONMALLOC=malloc valgrind --leak-check=full --show-leak-kinds=definite \
	    --errors-for-leak-kinds=definite --fair-sched=yes -q \
	    $(VPY) -m pytest -q -p no:cacheprovider -o timeout=600 \
	    tests/test_call_soon.py tests/test_timers.py tests/test_readers.py \
	    tests/test_threads.py tests/test_sync.py

# ThreadSanitizer (issue 8): the suite on a free-threaded CPython configured
# with --disable-gil --with-thread-sanitizer (TSAN_PY; not part of make test,
# no machine has one by default). test_threads and test_sync, then the rest
# with worker threads (TONIO_THREADS=4). Reports go to $(TSAN_LOGS)/log.<pid>
# and tools/tsan-summary groups them; the target fails when there is one (a
# failing test is shown, but it is make test's business).
# tools/tsan.supp lists what is suppressed, and why. test_fork runs without
# worker threads only: TSan cannot follow threads started in a child forked
# from a threaded process ("dup thread with used id"; the child dies). The extension is built
# with its own object files and removed afterwards: its file name is the one
# a plain free-threaded build (3.13t) uses, and it only loads into TSAN_PY.
TSAN_PY ?= /opt/py313t-tsan/bin/python3.13t
TSAN_VENV := .venv-tsan
TSAN_LOGS ?= build/tsan-logs
# TSan's slow-down (5-15x) needs a longer per-test limit; a hung test fails
# alone (SIGALRM) rather than ending the run (the thread method's exit)
TSAN_PYTEST := $(TSAN_VENV)/bin/python -m pytest -q -p no:cacheprovider -o timeout=300 \
    --timeout-method=signal --ignore=tests/test_bench.py --ignore=tests/integration
# exitcode=0: a forked child inherits the count of its parent's reports and
# would exit with TSan's status 66 from os._exit(0) (test_fork's children);
# the reports themselves are in the logs
TSAN_RUN := TSAN_OPTIONS="halt_on_error=0 second_deadlock_stack=1 exitcode=0 \
    suppressions=$(CURDIR)/tools/tsan.supp log_path=$(CURDIR)/$(TSAN_LOGS)/log"
# pip and setup.py themselves, under TSan: CPython's known races, unreported
TSAN_QUIET := TSAN_OPTIONS="report_bugs=0"

$(TSAN_VENV)/.installed:
	@test -x "$(TSAN_PY)" || { echo "TSAN_PY=$(TSAN_PY): no such interpreter"; exit 1; }
	$(TSAN_QUIET) $(TSAN_PY) -m venv $(TSAN_VENV)
	$(TSAN_QUIET) $(TSAN_VENV)/bin/python -m pip install -q pytest pytest-asyncio pytest-timeout \
	    setuptools
	@touch $@

tsan: deps $(TSAN_VENV)/.installed
	$(TSAN_QUIET) TONIO_SANITIZE=thread $(TSAN_VENV)/bin/python setup.py -q build_ext \
	    --inplace --force --build-temp build/tsan
	rm -rf $(TSAN_LOGS) && mkdir -p $(TSAN_LOGS)
	-$(TSAN_RUN) $(TSAN_PYTEST) $(PYTEST_ARGS) tests/test_threads.py tests/test_sync.py \
	    tests/test_fork.py
	-$(TSAN_RUN) TONIO_THREADS=4 $(TSAN_PYTEST) $(PYTEST_ARGS) --ignore=tests/test_threads.py \
	    --ignore=tests/test_fork.py tests
	rm -f tonio_loop/_core.cpython-313t-*.so
	tools/tsan-summary $(TSAN_LOGS)/log.*

clean:
	rm -rf build dist tonio_loop/*.so .venv .venv-* *.egg-info
