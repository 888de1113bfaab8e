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
shipped=dist/mnistgui/_internal/mnistgui/numba-cache
if [ "${1:-}" != "--check-only" ]; then
    # The app ships every model's default graphs compiled (mnistgui/shipped_cache.py), for each x86-64
    # level this CPU runs (v4 and v3 on an AVX-512 machine): the built app compiles them into an empty
    # PyTensor cache, whose Numba folder goes inside the app.
    levels=$(python -c "from mnistgui.shipped_cache import cpu_levels; print(' '.join(cpu_levels()))")
    graphs=$(mktemp -d)
    for level in $levels; do
        echo "== compiling the default graphs for $level into the app"
        env PATH=/nonexistent PYTENSOR_FLAGS="base_compiledir=$graphs" NUMBA_CPU_NAME="$level" NUMBA_CPU_FEATURES= \
            "$app" precompile --backend numba
    done
    rm -rf "$shipped"
    if [ -d "$graphs/numba" ]; then
        cp -r "$graphs/numba" "$shipped"
        printf '%s\n' $levels > "$shipped/levels.txt"  # the app picks the highest of these its CPU runs
        echo "shipped $(ls "$shipped" | grep -c '\.nbi$') compiled functions, $(du -sh "$shipped" | cut -f1)"
    fi
    rm -rf "$graphs"
fi
data="${MNISTGUI_DATA:-$(cd .. && pwd)/shared/data/mnist}"
echo "== $app --version"
"$app" --version
echo "== the window opens and closes by itself"
QT_QPA_PLATFORM=offscreen MNISTGUI_EXIT_AFTER_MS=1500 MNISTGUI_DATA="$data" "$app"
echo "== it trains with no C compiler on the PATH, from an empty cache, on 3 threads, compiling nothing"
work=$(mktemp -d)
log="$work/train.log"
env PATH=/nonexistent MNISTGUI_DATA="$data" PYTENSOR_FLAGS="base_compiledir=$work/cache" MNISTGUI_THREADS=3 \
    "$app" train --model convnet --init he --train-size 2000 --test-size 500 --epochs 1 --save "$work/convnet.h5" \
    | tee "$log"
grep -q "backend numba" "$log"
grep -q "^epoch   1" "$log"
ran_from_the_shipped_graphs() {  # the cache holds the shipped files and no others: nothing compiled
    if ! diff <(ls "$shipped" | grep -v '^levels.txt$') <(ls "$1/numba"); then
        echo "compiled graphs beyond the app's shipped ones (above: > lines)" >&2
        exit 1
    fi
}
if [ -s "$shipped/levels.txt" ]; then
    ran_from_the_shipped_graphs "$work/cache"
    echo "the convnet ran from the app's compiled graphs"
    for level in $(cat "$shipped/levels.txt"); do  # each level shipped, every model, shuffled epochs
        for model in logreg mlp dropout_mlp convnet; do
            env PATH=/nonexistent MNISTGUI_DATA="$data" PYTENSOR_FLAGS="base_compiledir=$work/$level-$model" \
                NUMBA_CPU_NAME="$level" NUMBA_CPU_FEATURES= MNISTGUI_THREADS=1 "$app" train --model "$model" \
                --train-size 300 --test-size 100 --epochs 2 --shuffle > "$work/$level-$model.log"
            grep -q "^epoch   2" "$work/$level-$model.log"
            ran_from_the_shipped_graphs "$work/$level-$model"
        done
        echo "every model ran from the app's $level graphs"
    done
fi
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
