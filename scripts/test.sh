#!/usr/bin/env bash
# Install mnistgui with its test extra into .venv and run the whole test suite.
# Usage: ./scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup-env.sh
export QT_QPA_PLATFORM=offscreen
export MNISTGUI_DATA="${MNISTGUI_DATA:-$(cd .. && pwd)/shared/data/mnist}"
python -m pytest -q -p no:cacheprovider "$@"
