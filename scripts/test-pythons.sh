#!/usr/bin/env bash
# The tests that need no service and are not the documentation's, on each Python version given,
# side by side and each on PYTHONS_WORKERS (2) pytest-xdist workers (a run mostly waits on its
# own subprocesses and sockets), each from the same uv.lock in .venv-VERSION. A run's output is
# shown whole when it ends; any failure fails the whole.
#   usage: scripts/test-pythons.sh UV VENV VERSION... [-- PYTEST_ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
uv=$1 venv=$2
shift 2
versions=()
while (($#)) && [[ $1 != -- ]]; do versions+=("$1"); shift; done
(($#)) && shift
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
for version in "${versions[@]}"; do
    python=$(scripts/find-python.sh "$version") || { echo "Python $version not found"; exit 1; }
    echo "== Python $version: $python"
    UV_PROJECT_ENVIRONMENT="$venv-$version" "$uv" sync --quiet --frozen --all-extras --python "$python"
    "$venv-$version/bin/python" -m compileall -q src tests >/dev/null  # see the Makefile
done
# Job control: a background job of a script ignores Ctrl+C (SIGINT) otherwise, and so would
# every process its tests start, which the tests of Ctrl+C need to receive it.
set -m
pids=()
for version in "${versions[@]}"; do
    "$venv-$version/bin/python" -m pytest -q -m "not services and not docs" -p no:cacheprovider \
        -n "${PYTHONS_WORKERS:-2}" --dist loadfile "$@" \
        >"$logs/$version" 2>&1 &
    pids+=($!)
done
status=0
for i in "${!versions[@]}"; do
    code=0
    wait "${pids[$i]}" || code=$?
    echo "== Python ${versions[$i]}: pytest exited $code"
    cat "$logs/${versions[$i]}"
    ((code == 0)) || status=1
done
exit "$status"
