# Two commands on a fresh machine: `make demo` and `make test`. Both set themselves up.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& echo $$p && break; done)
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup test demo check lint typecheck unasync bench-stores bench-functions bench-http clean

$(VENV)/.installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "retrysafe needs Python 3.11 or newer on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

setup: $(VENV)/.installed

## test: every test, against real PostgreSQL, Redis and RabbitMQ when reachable (or started here)
test: setup
	$(PY) scripts/services.py -- $(PY) -m pytest $(PYTEST_ARGS)

## demo: the main job, on the embedded SQLite default
demo: setup
	$(VENV)/bin/retrysafe demo

## check: lint, types, and the generated sync stores up to date
check: setup lint typecheck unasync

lint:
	$(VENV)/bin/ruff check src tests scripts benchmarks
	$(VENV)/bin/ruff format --check src tests scripts benchmarks

typecheck:
	$(VENV)/bin/mypy

unasync:
	$(PY) scripts/unasync.py --check

## bench-*: measured against the bare alternative in the same run (docs/benchmarks.md)
bench-stores: setup
	$(PY) scripts/services.py -- $(PY) benchmarks/stores.py

bench-functions: setup
	$(PY) scripts/services.py -- $(PY) benchmarks/functions.py

bench-http: setup
	$(PY) scripts/services.py -- $(PY) benchmarks/http_middleware.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
