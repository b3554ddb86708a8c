# Two commands on a fresh machine: `make demo` and `make test`. Both set themselves up from uv.lock.
# The main suite runs on the first of Python 3.11, 3.12, 3.13 found; `make test-pythons` runs the
# tests that need no service on the other two.
PYTHON ?= $(shell scripts/find-python.sh 3.11 3.12 3.13)
OTHER_PYTHONS ?= 3.12 3.13
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# The suite mostly waits (servers, subprocesses, sockets), so it runs on several pytest-xdist
# workers, split by file: a file's tests run on one worker, in order (tests/conftest.py says why).
TEST_WORKERS ?= 3
UV_VERSION := 0.13.9
# Every environment is installed with its bytecode compiled, and the tests compile src/ and
# tests/ before they run: a machine with PYTHONDONTWRITEBYTECODE set (as CI's) otherwise compiles
# every module again in every process, and the suite starts thousands (`retrysafe --version`:
# 1.3 s without the bytecode, 0.4 s with it).
export UV_COMPILE_BYTECODE := 1
TOOLS := .tools
UV := $(TOOLS)/bin/uv
# Interpreters come from the machine, never from a download.
export UV_PYTHON_DOWNLOADS := never
export UV_NO_PROGRESS := 1
# tests/packaging and scripts/release_check.py (make release-check) build with the same uv.
export RETRYSAFE_UV := $(abspath $(UV))

.PHONY: setup browser test test-pythons test-lowest demo check lint typecheck unasync lock upgrade \
	bench-stores bench-functions bench-http bench-inprocess bench-scale docs release-check clean

$(UV):
	@test -n "$(PYTHON)" || { echo "retrysafe needs Python 3.11 or newer (python3.11, 3.12 or 3.13)"; exit 1; }
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet uv==$(UV_VERSION)

# The dev/test environment: exactly the versions in uv.lock, every extra, the dev and docs groups
# (pyproject's default-groups).
$(VENV)/.installed: uv.lock pyproject.toml $(UV)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --frozen --all-extras --python $(PYTHON)
	@touch $@

setup: $(VENV)/.installed

## browser: the headless Chromium the console's tests drive: found on PATH, or Debian's package
## installed when this is root on Debian (no browser download from elsewhere)
browser:
	@command -v chromium >/dev/null 2>&1 \
	|| { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	     && apt-get install -y -q chromium >/dev/null && echo "installed Debian's chromium"; } \
	|| echo "chromium not found: the console's browser tests skip (fail under CI=true)"

## test: every test, against real PostgreSQL, Redis, MariaDB, RabbitMQ and NATS when reachable
## (or started here from local binaries, RabbitMQ excepted)
test: setup browser
	$(PY) -m compileall -q src tests >/dev/null
	$(PY) scripts/services.py -- $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

## test-pythons: the tests that need no service, on each of OTHER_PYTHONS side by side (same lock)
test-pythons: $(UV)
	scripts/test-pythons.sh $(UV) $(VENV) $(OTHER_PYTHONS) -- $(PYTEST_ARGS)

## test-lowest: every test, with each dependency of retrysafe at the lowest version pyproject.toml
## allows, in .venv-lowest (slow: not in CI; run it when a dependency's range changes)
test-lowest: $(UV) browser
	$(PYTHON) scripts/test_lowest.py $(UV) $(PYTHON) -- -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

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

## docs: the documentation site in site/ (docs/, the README as home page, the API reference from
## the docstrings); --strict fails the build on any warning, a broken link or anchor included
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

## release-check: the sdist and wheel as an index would get them (the wheel built from the sdist),
## twine check --strict, the files each must hold, then the wheel with every extra installed into
## an empty venv from uv's cache and every face imported (scripts/release_check.py)
release-check: setup
	$(PY) scripts/release_check.py

## lock: re-resolve uv.lock after changing a dependency in pyproject.toml (keeps other pins)
lock: $(UV)
	$(UV) lock --python $(PYTHON)

## upgrade: move every locked dependency to its newest allowed version, on purpose
upgrade: $(UV)
	$(UV) lock --upgrade --python $(PYTHON)

## bench-*: measured against the bare alternative in the same run (docs/benchmarks.md)
bench-stores: setup
	$(PY) scripts/services.py -- $(PY) benchmarks/stores.py

bench-functions: setup
	$(PY) scripts/services.py -- $(PY) benchmarks/functions.py

bench-http: setup
	$(PY) scripts/services.py -- $(PY) benchmarks/http_middleware.py

bench-inprocess: setup
	$(PY) scripts/services.py -- $(PY) benchmarks/http_inprocess.py

bench-scale: setup
	$(PY) scripts/services.py -- $(PY) benchmarks/scaleout.py

clean:
	rm -rf $(VENV) $(VENV)-3.* $(TOOLS) .pytest_cache .mypy_cache .ruff_cache site
