"""Crash safety and a window under abuse."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from mnistgui.core.config import Config
from mnistgui.core.modelfile import load_model, save_model
from mnistgui.core.training import create_model


SAVER = """
import sys
from mnistgui.core.config import Config
from mnistgui.core.modelfile import save_model
from mnistgui.core.training import create_model
model = create_model(Config.for_model("convnet", seed=int(sys.argv[2])))
print("ready", flush=True)
while True:
    save_model(model, sys.argv[1])
"""


def test_kill_9_during_saves_leaves_a_whole_file(tmp_path):
    target = tmp_path / "model.h5"
    save_model(create_model(Config.for_model("convnet", seed=1)), target)
    original = load_model(target)[0].weights()
    replacement = create_model(Config.for_model("convnet", seed=2)).weights()
    rng = np.random.default_rng(0)
    for _ in range(8):
        process = subprocess.Popen([sys.executable, "-c", SAVER, str(target), "2"], stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.6))  # somewhere inside one of its saves (each takes ~30 ms)
        process.send_signal(signal.SIGKILL)
        process.wait()
        weights = load_model(target)[0].weights()  # never half a file: the old one or the new one
        assert any(all(np.array_equal(weights[k], whole[k]) for k in whole) for whole in (original, replacement))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "model.h5"]
    # A killed save can leave its temporary file behind (nothing runs to delete it); never the target.
    assert all(name.startswith(".model.h5.") and name.endswith(".tmp") for name in leftovers)


def test_full_disk_gives_a_clear_message_and_keeps_the_model(tmp_path):
    from mnistgui.core.errors import ModelFileError

    if not os.path.exists("/dev/full"):
        pytest.skip("needs Linux's /dev/full device to simulate a full disk; absent on this system")
    model = create_model(Config.for_model("logreg"))
    before = model.weights()["w"].copy()
    # A folder whose files all live on /dev/full is hard to make without root mounts, so fill the
    # write path itself: h5py writes to the temporary file, which we point at /dev/full.
    import mnistgui.core.modelfile as modelfile

    original_mkstemp = modelfile.tempfile.mkstemp

    def full_disk_mkstemp(**kwargs):
        fd, name = original_mkstemp(**kwargs)
        os.close(fd)
        os.unlink(name)
        os.symlink("/dev/full", name)
        return os.open(name, os.O_WRONLY), name

    modelfile.tempfile.mkstemp = full_disk_mkstemp
    try:
        with pytest.raises(ModelFileError, match="cannot save .*model.h5"):
            save_model(model, tmp_path / "model.h5")
    finally:
        modelfile.tempfile.mkstemp = original_mkstemp
    assert not (tmp_path / "model.h5").exists()
    assert np.array_equal(model.weights()["w"], before)


# --- the window under abuse ---------------------------------------------------------------------------


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _assert_no_leak(qtbot, action, warm_up: int, repeats: int, what: str) -> None:
    """Run `action` `repeats` times after a warm-up; threads must not grow, memory barely."""
    for _ in range(warm_up):  # caches and Qt's own allocations settle first
        action()
    gc.collect()
    threads_before, rss_before = threading.active_count(), _rss_mb()
    for _ in range(repeats):
        action()
    gc.collect()
    qtbot.wait(100)
    threads_after, rss_after = threading.active_count(), _rss_mb()
    print(f"{repeats} {what}: threads {threads_before} -> {threads_after}, RSS {rss_before:.0f} -> {rss_after:.0f} MB")
    assert threads_after <= threads_before
    assert rss_after - rss_before < 60


def test_fifty_start_stop_cycles_leak_no_threads_or_memory(qtbot, window):
    config = Config.for_model("logreg", train_size=20000, test_size=500, batch_size=4, epochs=3)
    window.config_panel.set_config(config)

    def cycle():
        with qtbot.waitSignal(window.state_changed, timeout=60_000, check_params_cb=lambda s: s == "training"):
            window.start_training()
        with qtbot.waitSignal(window.state_changed, timeout=60_000, check_params_cb=lambda s: s == "stopped"):
            window.stop_training()
        # A long session keeps its runs and their curves; here we measure the machinery itself.
        for run in window.runs:
            window.plot.remove_run(run.key)
        window.runs.clear()
        window.runs_list.clear()

    _assert_no_leak(qtbot, cycle, warm_up=5, repeats=50, what="start/stop cycles")


def test_twenty_opens_of_model_files_leak_nothing(qtbot, window, tmp_path):
    path = tmp_path / "m.h5"
    model = create_model(Config.for_model("mlp", hidden_sizes=(64,), train_size=1000, test_size=1000))
    save_model(model, path)

    def open_once():
        with qtbot.waitSignal(window.predictions_ready, timeout=60_000):
            window.open_model(str(path))
        window.runs.clear()
        window.runs_list.clear()

    _assert_no_leak(qtbot, open_once, warm_up=3, repeats=20, what="model opens")


def test_closing_during_compilation_is_clean(qtbot, window):
    # A configuration never compiled in this process: the worker is compiling when we close.
    config = Config.for_model("convnet", conv_filters=(5, 7), hidden_sizes=(11,), train_size=500, test_size=100,
                              seed=int(time.time()) % 1000)
    window.config_panel.set_config(config)
    with qtbot.waitSignal(window.state_changed, timeout=30_000, check_params_cb=lambda s: s == "compiling"):
        window.start_training()
    worker = window.worker
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        window.close()  # never waits: hidden at once, closed when the worker has stopped
        assert not window.isVisible()
    qtbot.waitUntil(lambda: not window.workspace.snapshot_folder.exists(), timeout=10_000)
    assert not window.tasks and not window.busy and window.current.epochs_done == 0


def test_closed_windows_are_collected_and_automatic_collection_comes_back(qtbot, tmp_path):
    """A window, once closed and deleted, leaves nothing behind (its data sets, runs and Qt objects), and
    while any window lives no collection runs automatically (in whichever thread allocates): the GUI
    thread's collector runs them."""
    import weakref

    from PyQt5 import QtCore, QtWidgets

    from mnistgui.gui.app import make_application
    from mnistgui.gui.collector import gui_collector
    from mnistgui.gui.main_window import MainWindow

    from .conftest import MNIST_DIR

    make_application()
    assert gc.isenabled()
    windows = []
    for k in range(3):
        settings = QtCore.QSettings(str(tmp_path / f"settings{k}.ini"), QtCore.QSettings.IniFormat)
        win = MainWindow(settings=settings, data_dir=str(MNIST_DIR))
        win.ask = lambda title, text: True
        win.show()
        assert not gc.isenabled() and gui_collector().active
        with qtbot.waitSignal(win.state_changed, timeout=60_000, check_params_cb=lambda s: s == "finished"):
            win.config_panel.set_config(Config.for_model("logreg", train_size=1000, test_size=200, epochs=1))
            win.start_training()
        windows.append(weakref.ref(win))
        win.close()
        win.deleteLater()
        del win
        QtWidgets.QApplication.sendPostedEvents(None, QtCore.QEvent.DeferredDelete)
        qtbot.wait(50)
    assert gc.isenabled() and not gui_collector().active
    gc.collect()
    assert [w() for w in windows] == [None, None, None]


def test_a_worker_end_collects_apart_and_never_after_the_last_window(qtbot):
    """A worker's end asks for a full pass as a timer event of its own. Asked for just before the last
    window went, it must not run: the heap is unfrozen then, and one pass over a long session's heap
    stalled the event loop 160-350 ms (closing during a compilation, one-process suite)."""
    from PyQt5 import QtCore

    from mnistgui.gui.app import make_application
    from mnistgui.gui.collector import SOON_MS, gui_collector

    make_application()
    full_passes = []

    def record(phase, info):
        if phase == "start" and info["generation"] == 2:
            full_passes.append(info)

    collector = gui_collector()
    gc.callbacks.append(record)
    try:
        release = collector.acquire()
        full_passes.clear()  # acquiring collects what came before
        collector.collect_soon()
        collector.collect_soon()
        assert full_passes == []  # not inside the caller
        QtCore.QCoreApplication.processEvents()
        assert full_passes == []  # not in the same turn of the event loop either
        qtbot.waitUntil(lambda: len(full_passes) > 0, timeout=5_000)
        qtbot.wait(2 * SOON_MS)
        assert len(full_passes) == 1  # two requests, one pass
        collector.collect_soon()
        release()  # the last window goes before the timer fires
        qtbot.wait(2 * SOON_MS)
        assert len(full_passes) == 1 and not collector.active and gc.isenabled()
    finally:
        gc.callbacks.remove(record)
