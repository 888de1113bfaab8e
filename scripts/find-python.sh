#!/usr/bin/env bash
# Print the path of a working Python X.Y interpreter: pythonX.Y on the PATH if it runs (a pyenv
# shim for a version that is not active does not), else the newest pyenv install of X.Y.
# Usage: scripts/find-python.sh 3.13
set -euo pipefail
version="$1"
runs() { "$1" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$version'.split('.'))))" >/dev/null 2>&1; }
if candidate=$(command -v "python$version" 2>/dev/null) && runs "$candidate"; then
    echo "$candidate"
    exit 0
fi
root="${PYENV_ROOT:-$HOME/.pyenv}"
for candidate in $(ls -d "$root"/versions/"$version".*/bin/"python$version" 2>/dev/null | sort -V -r); do
    if runs "$candidate"; then
        echo "$candidate"
        exit 0
    fi
done
echo "find-python: no working Python $version (looked for python$version on the PATH and in $root/versions)" >&2
exit 1
