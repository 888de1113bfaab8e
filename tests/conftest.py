"""Shared fixtures. Tests read the real MNIST from ../shared/data/mnist through MNISTGUI_DATA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
if "XDG_RUNTIME_DIR" not in os.environ:  # Qt warns without one
    import tempfile

    os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="mnistgui-runtime-")
os.environ.setdefault("MNISTGUI_DATA", str(SHARED_MNIST))
# The window compiles the panel's configuration in the background; tests that time a cold compile or
# count threads must not find one running, so it is on only where a test asks for it.
os.environ.setdefault("MNISTGUI_PRECOMPILE", "0")
MNIST_DIR = Path(os.environ["MNISTGUI_DATA"])


@pytest.fixture(autouse=True)
def _qt_garbage_collected_on_the_gui_thread(request):
    """A window collects garbage on the GUI thread only while it lives (gui/collector.py). What a window
    test leaves behind becomes garbage at teardown: collect it here, on this (the GUI) thread, before a
    later test's worker thread can trigger a collection that would destroy Qt objects from there."""
    yield
    if "qtbot" in request.fixturenames:
        import gc

        gc.collect()


@pytest.fixture(scope="session")
def mnist():
    from mnistgui.core.data import load_dataset

    return load_dataset("mnist", MNIST_DIR)


@pytest.fixture
def isolated_home(tmp_path, monkeypatch):
    """A home, data folder and working folder with nothing in them, and no MNISTGUI_DATA."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.delenv("MNISTGUI_DATA", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return home


@pytest.fixture
def window(qtbot, tmp_path):
    """The main window on the real MNIST, with its own settings file; quitting never asks."""
    from PyQt5 import QtCore

    from mnistgui.gui.app import make_application
    from mnistgui.gui.main_window import MainWindow

    make_application()
    settings = QtCore.QSettings(str(tmp_path / "settings.ini"), QtCore.QSettings.IniFormat)
    win = MainWindow(settings=settings, data_dir=str(MNIST_DIR))
    win.ask = lambda title, text: True
    qtbot.addWidget(win)
    win.show()
    yield win
    if win.busy:
        win.worker.stop()
        win.worker.resume()
        win.worker.wait()


def wait_for_forked_child(pid: int, what: str, seconds: float = 60) -> int:
    """The exit code of a forked child; a child still running after `seconds` is killed and fails the test
    (`what` it hung on): a blocking wait would hang the whole suite."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child hung {what}")


def blas_threads() -> list[int]:
    """The thread count of every BLAS library loaded in this process (NumPy's, SciPy's, ...)."""
    from threadpoolctl import threadpool_info

    return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]
