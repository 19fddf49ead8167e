# tonio_loop - build, test and benchmark.
#
#   make bench        the quick benchmark: tonio_loop against asyncio and uvloop
#   make test         build, then run the whole test suite
#   make conformance  CPython's own test_asyncio suites on tonio_loop
#   make PY=python3.12 test   the same on another interpreter
#
# Each target installs what is missing by itself: libev through the system
# package manager, the Python side into a virtualenv (.venv, or .venv-<PY>).

PY ?= python3
PYTHON := $(shell tools/find-python $(PY))
VENV ?= $(if $(filter python3,$(PY)),.venv,.venv-$(PY))
VPY := $(VENV)/bin/python
SOURCES := $(wildcard loop/*.c include/*.h) setup.py
SYSTEM_DEPS := libev-dev
# the benchmark's HTTP load (it falls back to its own C client without it)
BENCH_DEPS := wrk
PYTEST_ARGS ?=

.PHONY: all build deps bench-deps test conformance bench bench-full refcheck valgrind clean check-python

all: build

check-python:
	@test -n "$(PYTHON)" || { echo "no interpreter called $(PY) on this machine"; exit 1; }

deps:
	@tools/install-system-deps $(SYSTEM_DEPS)

$(VENV)/.installed: pyproject.toml setup.py | check-python deps
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip setuptools wheel
	$(VPY) -m pip install -q -e '.[test,bench]'
	@touch $@

$(VENV)/.built: $(VENV)/.installed $(SOURCES)
	$(VPY) setup.py -q build_ext --inplace
	@touch $@

build: deps $(VENV)/.built

test: build
	$(VPY) -m pytest $(PYTEST_ARGS)
	$(VPY) -m tests.conformance --quiet

conformance: build
	$(VPY) -m tests.conformance

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
	@tools/install-system-deps python3.11-dbg python3.11-dev python3.11-venv $(SYSTEM_DEPS)
	/usr/bin/python3.11d -m venv $(DBG_VENV)
	$(DBG_VENV)/bin/python -m pip install -q --upgrade pip setuptools wheel
	$(DBG_VENV)/bin/python -m pip install -q pytest pytest-asyncio pytest-timeout
	@touch $@

refcheck: $(DBG_VENV)/.installed
	TONIO_DEBUG=1 $(DBG_VENV)/bin/python setup.py -q build_ext --inplace
	$(DBG_VENV)/bin/python -m tests.refleaks
	$(DBG_VENV)/bin/python -m pytest -q -p no:cacheprovider \
	    --ignore=tests/test_bench.py --ignore=tests/integration

valgrind: build
	PYTHONMALLOC=malloc valgrind --leak-check=full --show-leak-kinds=definite \
	    --errors-for-leak-kinds=definite -q \
	    $(VPY) -m pytest -q -p no:cacheprovider -o timeout=600 \
	    tests/test_call_soon.py tests/test_timers.py tests/test_readers.py

clean:
	rm -rf build tonio_loop/*.so .venv .venv-* *.egg-info
