#!/usr/bin/env bash
# Install mnistgui into .venv (with the X libraries Qt needs, on Debian/Ubuntu) and open the window.
# Usage: ./scripts/run.sh [mnistgui arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup-env.sh
exec mnistgui "$@"
