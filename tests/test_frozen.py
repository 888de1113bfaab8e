"""The frozen (PyInstaller) app: built from mnistgui.spec with its default graphs compiled inside
(mnistgui/shipped_cache.py), then run as a user runs it, from an empty cache.

Takes about three minutes of both cores. Leave it out of a quick local run with MNISTGUI_SKIP_FROZEN=1
or `-m "not frozen"`; CI (.ci/run) unsets the variable, so it always runs there on Python 3.11.
"""

import os
import subprocess
from pathlib import Path

import pytest

from mnistgui import __version__, shipped_cache

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.frozen
@pytest.mark.timeout(1800)  # above the build's own 1500 s limit, so that one reports first
@pytest.mark.skipif(os.environ.get("MNISTGUI_SKIP_FROZEN") == "1", reason="MNISTGUI_SKIP_FROZEN=1 asked to skip it")
def test_frozen_app_builds_opens_and_trains_without_a_compiler():
    result = subprocess.run(["bash", str(ROOT / "scripts" / "build-app.sh")], cwd=ROOT, capture_output=True,
                            text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"mnistgui {__version__}" in result.stdout
    assert "backend numba" in result.stdout and "frozen app OK" in result.stdout
    if shipped_cache.cpu_levels():  # it shipped its graphs compiled, and the convnet found all it ran there
        for level in shipped_cache.cpu_levels():
            assert f"compiling the default graphs for {level} into the app" in result.stdout
            assert f"every model ran from the app's {level} graphs" in result.stdout
        assert "the convnet ran from the app's compiled graphs" in result.stdout
