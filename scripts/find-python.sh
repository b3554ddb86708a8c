#!/bin/sh
# Print the path of the first interpreter found for the given versions (default: 3.11 3.12 3.13).
#   scripts/find-python.sh 3.12   ->  /usr/bin/python3.12, or pyenv's, or nothing (exit 1)
# Looks on PATH first (running each candidate: a pyenv shim for a version that is not selected
# exists but fails), then in pyenv's versions and the usual system folders. Nothing is downloaded.
[ $# -gt 0 ] || set -- 3.11 3.12 3.13
for version in "$@"; do
  for candidate in "python$version" \
    "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version"*/bin/python"$version" \
    /usr/local/bin/python"$version" /usr/bin/python"$version"; do
    path=$(command -v "$candidate" 2>/dev/null) || continue
    if "$path" -c 'import sys; print(sys.executable)' 2>/dev/null; then exit 0; fi
  done
done
exit 1
