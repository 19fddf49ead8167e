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

.PHONY: all build deps bench-deps test conformance bench bench-full clean check-python

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

clean:
	rm -rf build tonio_loop/*.so .venv .venv-* *.egg-info
