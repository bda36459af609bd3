# Every target sets up what it needs: on a fresh machine `make test` alone installs the
# Debian packages, creates .venv, builds probe_core and runs everything CI runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NATIVE_SRC := $(wildcard native/*.cpp native/*.hpp native/*.pyi) CMakeLists.txt pyproject.toml
ASAN_DIR := build/asan

.DEFAULT_GOAL := help
.PHONY: help install test pytest lint asan-test bench demo image clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)

# --no-build-isolation keeps the CMake build dir warm between installs, so a change to one
# .cpp rebuilds one object; the build requirements come from pyproject.toml itself.
$(STAMP): $(NATIVE_SRC) pyproject.toml | $(PY)
	@scripts/ensure-system.sh build
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $$($(PY) -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires']))")
	$(PY) -m pip install -q --no-build-isolation -e '.[test,dev,gpu,postgres,s3,kube,workbench]'
	@scripts/ensure-bpf.sh $(VENV)
	@touch $@

install: $(STAMP) ## create .venv and build probe_core (editable install)

test: install ## what CI runs: lint, the test suite, and the tests again on the ASan+UBSan build
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory pytest
	$(MAKE) --no-print-directory asan-test

pytest: install ## the test suite alone (starts PostgreSQL when it is not running)
	@scripts/ensure-postgres.sh
	$(PY) -m pytest

lint: install ## ruff (lint and format check) and mypy --strict
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# Python itself is not instrumented: the runtimes are preloaded, leak checks stay off
# because the interpreter's own allocations at exit read as leaks, and PYTHONMALLOC=malloc
# puts small bytes objects in malloc'd blocks ASan can see the edges of (pymalloc arenas hide them).
asan-test: install ## build probe_core with AddressSanitizer and UBSan and run its tests against it
	cmake -S . -B $(ASAN_DIR) -G Ninja -DPROBE_CORE_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DPython_EXECUTABLE=$(abspath $(PY)) -DSKBUILD_PROJECT_VERSION=0.1.0 >/dev/null
	cmake --build $(ASAN_DIR)
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_string_checks=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 PYTHONMALLOC=malloc \
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	PROBE_CORE_PATH="$$(ls $(abspath $(ASAN_DIR))/probe_core*.so)" \
	  $(PY) -m pytest tests/native -q -p no:cacheprovider

bench: install ## run the benchmarks against their peers; JSON lands in bench/results/
	@scripts/ensure-system.sh bench
	status=0; \
	$(PY) -m bench.probe_core_bench || status=1; \
	$(PY) -m bench.collector_bench || status=1; \
	$(PY) -m bench.spool_bench || status=1; \
	$(PY) -m bench.ingest_bench || status=1; \
	$(PY) -m bench.fleet_bench || status=1; \
	$(PY) -m bench.scale_bench || status=1; \
	$(PY) -m bench.hostile_bench || status=1; \
	$(PY) -m bench.workflow_bench || status=1; \
	$(PY) -m bench.rca_bench || status=1; \
	$(PY) -m bench.workbench_bench || status=1; \
	$(PY) -m bench.report; exit $$status

demo: install ## start a controller and a collector, inject a fault, write the postmortem
	$(PY) -m pipelines.demo

image: install ## build the OCI image (buildah over a debootstrapped Debian; no Docker daemon)
	scripts/build-image.sh $(IMAGE)

clean: ## remove .venv and build output (keeps data/)
	rm -rf $(VENV) build .mypy_cache .ruff_cache .pytest_cache
