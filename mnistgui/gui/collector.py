"""Garbage collection on the GUI thread only, while a window lives.

CPython runs a collection in whichever thread happens to allocate past the threshold. With training,
loading and lab threads at work, that is often not the GUI thread, and a collection there that finds
cyclic garbage holding Qt objects (a closed dialog, a finished QThread, an earlier window) destroys
them from the wrong thread; Qt then crashes later, far from the cause (seen: segmentation faults in
pyqtgraph's WidgetGroup while a later window built its plots). So while a window lives, automatic
collection is off and a timer on the GUI thread collects instead (pyqtgraph's GarbageCollector does
the same): young generations whenever their thresholds are passed, the full heap when a worker has
finished (`collect_all`) and otherwise at most every FULL_PASS_INTERVAL seconds. Each pass holds the
GIL, so workers wait for it, never the other way round.
"""

from __future__ import annotations

import gc
import time

from PyQt5 import QtCore

CHECK_INTERVAL_MS = 200
FULL_PASS_INTERVAL = 30.0


class GuiThreadCollector(QtCore.QObject):
    def __init__(self):
        super().__init__()
        self._users = 0
        self._threshold = gc.get_threshold()
        self._last_full = time.monotonic()
        self._timer = QtCore.QTimer(self, interval=CHECK_INTERVAL_MS, timeout=self._check)

    def acquire(self) -> None:
        """A window opens: collect what earlier ones left (here, on the GUI thread), then take over."""
        if self._users == 0:
            gc.collect()
            self._threshold = gc.get_threshold()
            gc.disable()
            self._last_full = time.monotonic()
            self._timer.start()
        self._users += 1

    def release(self) -> None:
        """A window has closed for good; with the last one, automatic collection comes back."""
        self._users = max(0, self._users - 1)
        if self._users == 0:
            self._timer.stop()
            gc.enable()

    def collect_all(self) -> None:
        gc.collect()
        self._last_full = time.monotonic()

    def _check(self) -> None:
        young, middle, old = gc.get_count()
        if young > self._threshold[0]:
            gc.collect(0)
            if middle > self._threshold[1]:
                gc.collect(1)
        if old > self._threshold[2] and time.monotonic() - self._last_full > FULL_PASS_INTERVAL:
            self.collect_all()


_collector: GuiThreadCollector | None = None


def gui_collector() -> GuiThreadCollector:
    """The process's collector (made on first use, on the GUI thread)."""
    global _collector
    if _collector is None:
        _collector = GuiThreadCollector()
    return _collector
