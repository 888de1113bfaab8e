# Sourced by the scripts: create a virtual environment with mnistgui and its extras, and the system
# libraries Qt's xcb plugin needs on a bare Debian/Ubuntu machine. Idempotent and quick when done before.
# PYTHON picks the interpreter (default python3), VENV the environment's folder (default .venv).
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
wanted=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ -x "$VENV/bin/python" ] && [ "$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "$wanted" ]; then
    echo "note: $VENV was made with another Python; remaking it with Python $wanted" >&2
    rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
stamp="$VENV/.mnistgui-installed"
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
    python -m pip install --quiet --upgrade pip
    python -m pip install --quiet -e ".[test]"
    touch "$stamp"
fi
# Qt5's xcb platform plugin needs these X libraries; a desktop has them, a bare server does not.
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && ! ldconfig -p | grep -q libxcb-icccm.so.4; then
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 \
        libxcb-xkb1 libxkbcommon-x11-0 libxcb-shape0 libxcb-xfixes0 libgl1 libegl1 libfontconfig1 libdbus-1-3 \
        >/dev/null 2>&1 || echo "note: could not install Qt's X libraries; the window needs them (see README)" >&2
fi
