#!/usr/bin/env bash
# Build the one-folder PyInstaller app (dist/mnistgui/) from mnistgui.spec, then check it:
# --version, the window opens (offscreen), and it trains with a backend that needs no C compiler.
# Usage: ./scripts/build-app.sh [--check-only]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup-env.sh
if [ "${1:-}" != "--check-only" ]; then
    python -m pip install --quiet "pyinstaller>=6.10"
    QT_QPA_PLATFORM=offscreen pyinstaller --noconfirm --clean --log-level WARN mnistgui.spec
fi
app=dist/mnistgui/mnistgui
data="${MNISTGUI_DATA:-$(cd .. && pwd)/shared/data/mnist}"
echo "== $app --version"
"$app" --version
echo "== the window opens and closes by itself"
QT_QPA_PLATFORM=offscreen MNISTGUI_EXIT_AFTER_MS=1500 MNISTGUI_DATA="$data" "$app"
echo "== it trains with no C compiler on the PATH"
work=$(mktemp -d)
log="$work/train.log"
env PATH=/nonexistent MNISTGUI_DATA="$data" "$app" train --model convnet --init he --train-size 2000 \
    --test-size 500 --epochs 1 --save "$work/convnet.h5" | tee "$log"
grep -q "backend numba" "$log"
grep -q "^epoch   1" "$log"
echo "== it classifies an image file (Pillow inside the app)"
python - "$data" "$work/digit.png" <<'PY'
import sys
from mnistgui.core.data import load_dataset
from PIL import Image
digit = load_dataset("mnist", sys.argv[1]).test_images[0].reshape(28, 28)
Image.fromarray(255 - digit).resize((140, 140)).save(sys.argv[2])  # dark ink on white paper, 5x larger
PY
env PATH=/nonexistent "$app" predict "$work/convnet.h5" "$work/digit.png" | tee "$work/predict.log"
grep -q "digit.png: 7" "$work/predict.log"
rm -rf "$work"
echo "frozen app OK"
