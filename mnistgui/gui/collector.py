"""Garbage collection on the GUI thread only, while a window lives.

CPython runs a collection in whichever thread happens to allocate past the threshold. With training,
loading and lab threads at work, that is often not the GUI thread, and a collection there that finds
cyclic garbage holding Qt objects (a closed dialog, a finished QThread, an earlier window) destroys
them from the wrong thread; Qt then crashes later, far from the cause (seen: segmentation faults in
pyqtgraph's WidgetGroup while a later window built its plots). So while a window lives, automatic
collection is off and a timer on the GUI thread collects instead (pyqtgraph's GarbageCollector does
the same): young generations whenever their thresholds are passed, the full heap when a worker has
finished (`collect_soon`) and otherwise, while no worker runs, at most every FULL_PASS_INTERVAL
seconds. Each pass holds the GIL, so workers wait for it, never the other way round.

A worker's end asks for its pass with `collect_soon`, which runs it a moment later, alone: run
inside the slot that saw the worker end, it came on top of that slot's repaints and of whatever the user
did next in the same turn of the event loop (measured: 6-15 ms of a 77-80 ms stall).

A full pass walks every object of the heap, and a long session's heap (compiled functions, data sets)
makes that 200-500 ms on the GUI thread (measured late in the one-process test suite). So a window,
once built, freezes what is alive (`freeze_session`): full passes then walk only what came after it.
The frozen objects include the window itself, so when the last window is gone they are unfrozen, and a
closed window is collected whole.
"""

from __future__ import annotations

import atexit
import gc
import time
import traceback
from typing import Callable

from PyQt5 import QtCore

from ..core.memory import release_free_memory

CHECK_INTERVAL_MS = 200
# After a worker's end: past the state changes and repaints it brings (a 0 ms timer still fired in the
# same turn of the event loop as the repaint, and the two made one 75 ms stall on Python 3.13).
SOON_MS = 100
FULL_PASS_INTERVAL = 30.0


def _once(action: Callable[[], None]) -> Callable[..., None]:
    """`action`, callable any number of times (with any arguments, as a slot) but carried out once."""
    done = False

    def call(*_signal_arguments) -> None:
        nonlocal done
        if not done:
            done = True
            action()

    return call


class GuiThreadCollector(QtCore.QObject):
    def __init__(self):
        super().__init__()
        self._leases = 0
        self._holds = 0  # threads at work: full passes wait for them (each stalls the event loop)
        self._enabled_before = True
        self._threshold = gc.get_threshold()
        self._last_full = time.monotonic()
        self._timer = QtCore.QTimer(self, interval=CHECK_INTERVAL_MS, timeout=self._check)
        self._soon = QtCore.QTimer(self, interval=SOON_MS, singleShot=True, timeout=self._pass_and_trim)

    def acquire(self) -> Callable[[], None]:
        """A window opens: collect what earlier ones left (here, on the GUI thread), then take over.

        Returns the release, to be called once the window is gone (calling it again does nothing).
        """
        if self._leases == 0:
            gc.collect()
            self._enabled_before = gc.isenabled()
            self._threshold = gc.get_threshold()
            gc.disable()
            self._last_full = time.monotonic()
            self._timer.start()
        self._leases += 1
        return _once(self._release)

    def _release(self) -> None:
        self._leases -= 1
        if self._leases == 0:
            self._timer.stop()
            self._soon.stop()
            gc.unfreeze()  # collectable again, closed windows included
            if self._enabled_before:
                gc.enable()

    def freeze_session(self) -> None:
        """A window is built: what is alive now stays out of the full passes until the last window goes."""
        gc.collect()
        gc.freeze()
        self._last_full = time.monotonic()

    def hold_full_passes(self) -> Callable[[], None]:
        """A worker starts: no timed full pass until it ends (its end brings one, `collect_soon`).

        Returns the release (calling it again does nothing)."""
        self._holds += 1
        return _once(self._end_hold)

    def _end_hold(self) -> None:
        self._holds -= 1

    @property
    def active(self) -> bool:
        return self._leases > 0

    def collect_all(self) -> None:
        gc.collect()
        self._last_full = time.monotonic()

    def collect_soon(self) -> None:
        """A full pass, then the freed pages back to the OS, SOON_MS from the first request (requests
        before it runs make one pass)."""
        if not self._soon.isActive():
            self._soon.start()

    def _pass_and_trim(self) -> None:
        # Only while a window holds the heap frozen: after the last one, a full pass would walk the whole
        # unfrozen heap (352 ms late in the one-process test suite), and automatic collection is back.
        # The trim goes with it: with no window left, freed pages stay with the process.
        if self.active:
            self.collect_all()
            release_free_memory()

    def _check(self) -> None:
        if gc.get_count()[0] > self._threshold[0]:
            gc.collect(0)
            if gc.get_count()[1] > self._threshold[1]:
                gc.collect(1)
        if (not self._holds and gc.get_count()[2] > self._threshold[2]
                and time.monotonic() - self._last_full > FULL_PASS_INTERVAL):
            self.collect_all()


_collector: GuiThreadCollector | None = None


def gui_collector() -> GuiThreadCollector:
    """The process's collector (made on first use, on the GUI thread)."""
    global _collector
    if _collector is None:
        _collector = GuiThreadCollector()
    return _collector


_warmed_up = False


def warm_up_once() -> None:
    """Before the first window (make_application calls it): compile a small function, so that what a
    compiler's first use imports and caches is alive, and frozen, when the window freezes its session."""
    global _warmed_up
    if _warmed_up:
        return
    from ..core.workspace import warm_up

    try:
        warm_up()
    except Exception:  # only a head start: a real compilation reports any problem properly
        traceback.print_exc()
    # Frozen objects are skipped by the collection at exit too, and PyQt's widgets then die in
    # an order that crashes the interpreter (measured: a segfault on quitting mid-training).
    atexit.register(gc.unfreeze)
    _warmed_up = True
