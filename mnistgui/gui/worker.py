"""Background threads: training (a workspace TrainingJob) and one-off tasks (load, open, save, download).

Only arrays, dataclasses and exceptions cross the thread boundary: a training job builds its model
(graph, gradient, compilation) in the worker's thread and hands back `EpochOutcome`s.

Threads here have no Qt parent: `start_detached` keeps each one referenced until it has finished,
so that closing a window or a dialog never destroys a thread that is still running.
"""

from __future__ import annotations

import time
import traceback

from PyQt5 import QtCore

from ..core.errors import MnistguiError
from ..core.training import BatchProgress, TrainingControl
from ..core.workspace import EpochOutcome, TrainingJob

BATCH_SIGNAL_INTERVAL = 0.1  # at most 10 progress signals a second

_RUNNING: set[QtCore.QThread] = set()


def start_detached(thread: QtCore.QThread) -> QtCore.QThread:
    """Start `thread`, keeping it alive until it has finished; then it is deleted."""
    _RUNNING.add(thread)

    def finished(t=thread):
        t.wait()  # it is past run(): returns at once
        _RUNNING.discard(t)
        t.deleteLater()

    thread.finished.connect(finished)
    thread.start()
    return thread


def running_threads() -> int:
    return sum(1 for t in _RUNNING if t.isRunning())


def describe(exc: BaseException) -> str:
    if isinstance(exc, MnistguiError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "out of memory: try a smaller batch size, model or training subset"
    return f"{type(exc).__name__}: {exc}"


class TrainingWorker(QtCore.QThread):
    compiling = QtCore.pyqtSignal()
    compiled = QtCore.pyqtSignal(float)  # seconds
    batch_progress = QtCore.pyqtSignal(object)  # BatchProgress
    epoch_finished = QtCore.pyqtSignal(object)  # EpochOutcome
    finished_run = QtCore.pyqtSignal(str)  # "finished" or "stopped"
    stopped_early = QtCore.pyqtSignal(str)  # why (early stopping, catastrophic overfitting), before finished_run
    failed = QtCore.pyqtSignal(str)  # a message for the user

    def __init__(self, job: TrainingJob, parent=None):
        super().__init__(parent)
        self.job = job
        self.control = TrainingControl()

    # Controls, called from the GUI thread.
    def pause(self):
        self.control.pause()

    def resume(self):
        self.control.resume()

    def stop(self):
        self.control.stop()

    def stop_after_epoch(self, enabled: bool = True):
        self.control.stop_after_epoch = enabled

    def run(self):
        try:
            self._train()
        except Exception as exc:  # anything at all must reach the user as a message, not a crash
            traceback.print_exc()
            self.failed.emit(describe(exc))
        finally:
            self.job = None  # the model goes with it

    def _train(self):
        if self.job.config.is_trainable:
            self.compiling.emit()
            self.compiled.emit(self.job.compile())
        last_signal = 0.0
        for item in self.job.train(self.control):
            if isinstance(item, BatchProgress):
                now = time.perf_counter()
                if now - last_signal >= BATCH_SIGNAL_INTERVAL or item.batch == item.n_batches:
                    last_signal = now
                    self.batch_progress.emit(item)
            elif isinstance(item, EpochOutcome):
                self.epoch_finished.emit(item)
        note = self.job.trainer.stop_note if self.job.trainer is not None else ""
        if note:
            self.stopped_early.emit(note)
        self.finished_run.emit("stopped" if self.control.stop_requested else "finished")


class Task(QtCore.QThread):
    """Runs `function()` off the GUI thread: `done(result)` or `failed(exception)`."""

    done = QtCore.pyqtSignal(object)
    failed = QtCore.pyqtSignal(object)

    def __init__(self, function, parent=None):
        super().__init__(parent)
        self.function = function

    def run(self):
        try:
            result = self.function()
        except Exception as exc:
            if not isinstance(exc, MnistguiError):
                traceback.print_exc()
            self.failed.emit(exc)
        else:
            self.done.emit(result)
        finally:
            self.function = None


class FunctionWorker(QtCore.QThread):
    """Runs `function(report)` off the GUI thread; `report(*args)` emits progress, False cancels."""

    progress = QtCore.pyqtSignal(object)
    done = QtCore.pyqtSignal(object)
    failed = QtCore.pyqtSignal(str)

    def __init__(self, function, parent=None):
        super().__init__(parent)
        self.function = function
        self.cancelled = False

    def cancel(self):
        self.cancelled = True

    def _report(self, *args):
        self.progress.emit(args)
        return not self.cancelled

    def run(self):
        try:
            self.done.emit(self.function(self._report))
        except Exception as exc:
            if not self.cancelled:
                traceback.print_exc()
            self.failed.emit("cancelled" if self.cancelled else describe(exc))
