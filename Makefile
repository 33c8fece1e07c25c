# geogate: `make run` starts the proxy, `make test` runs `make lint` (ruff, mypy), the whole suite and `make test-ops`, `make bench` the benchmarks,
# `make fuzz` the property-based tests with the long Hypothesis profile (docs/fuzzing.md).
SHELL := /bin/sh
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LISTEN_HOST ?= 127.0.0.1
LISTEN_PORT ?= 8080
PYTEST_ARGS ?=

.PHONY: run test test-ops lint fuzz bench install system-deps check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@PYBIN=$$(tools/find-python) || exit 1; \
	  if [ ! -x $(PY) ]; then echo "creating $(VENV) with $$PYBIN"; "$$PYBIN" -m venv $(VENV) || exit 1; fi
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

run: install
	$(VENV)/bin/geogate run --listen-host $(LISTEN_HOST) --listen-port $(LISTEN_PORT)

system-deps:
	@SKIP_SYSTEM_DEPS=$(SKIP_SYSTEM_DEPS) tools/install-system-deps

test: lint install system-deps
	$(PY) -m pytest -q -m "not ops" $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-ops

# operations tests (marker `ops`): the decision-log load test, about 80 s (docs/operations.md)
test-ops: install
	$(PY) -m pytest -q -m ops $(PYTEST_ARGS)

# ruff (pyproject [tool.ruff]) then mypy (pyproject [tool.mypy]: strict for geogate.core and
# geogate.policy, defaults for the shells)
lint: install
	$(PY) -m ruff check addons/ tests/ bench/ tools/*.py
	$(PY) -m mypy

fuzz: install
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q -p no:warnings --hypothesis-show-statistics tests/test_fuzz_*.py $(PYTEST_ARGS)

check: install
	$(VENV)/bin/geogate check policies/*.yaml

bench: install system-deps
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info addons/*.egg-info
