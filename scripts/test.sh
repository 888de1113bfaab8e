#!/usr/bin/env bash
# Install mnistgui with its test extra into a virtual environment and run the whole test suite.
# Usage: ./scripts/test.sh [pytest arguments]
# PYTHON=python3.13 VENV=.venv313 ./scripts/test.sh -m "not frozen" runs it on another Python.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup-env.sh
export QT_QPA_PLATFORM=offscreen
export MNISTGUI_DATA="${MNISTGUI_DATA:-$(cd .. && pwd)/shared/data/mnist}"
echo "== $(python --version) in $VENV: pytest $*"
python -m pytest -q -p no:cacheprovider "$@"
