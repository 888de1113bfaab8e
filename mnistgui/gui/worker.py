"""Background threads: training (compile, then the core's training generator) and evaluation.

Only NumPy arrays and plain dataclasses cross the thread boundary. The model object itself is
handed to the worker for the length of a run and used by the GUI thread only when no worker runs.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field

import numpy as np
from PyQt5 import QtCore

from ..core.errors import MnistguiError
from ..core.training import BatchProgress, EpochResult, NeuralModel, Trainer, TrainingControl

BATCH_SIGNAL_INTERVAL = 0.1  # at most 10 progress signals a second


@dataclass
class EpochSnapshot:
    """What the viewers need after an epoch, computed in the worker."""

    result: EpochResult
    test_probs: np.ndarray  # (n_test, 10)
    weights: dict[str, np.ndarray] = field(default_factory=dict)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, MnistguiError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "out of memory: try a smaller batch size, model or training subset"
    return f"{type(exc).__name__}: {exc}"


class TrainingWorker(QtCore.QThread):
    compiling = QtCore.pyqtSignal()
    compiled = QtCore.pyqtSignal(float)  # seconds
    batch_progress = QtCore.pyqtSignal(object)  # BatchProgress
    epoch_finished = QtCore.pyqtSignal(object)  # EpochSnapshot
    finished_run = QtCore.pyqtSignal(str)  # "finished" or "stopped"
    failed = QtCore.pyqtSignal(str)  # a message for the user

    def __init__(self, trainer: Trainer, epochs: int, parent=None):
        super().__init__(parent)
        self.trainer = trainer
        self.epochs = epochs
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
            model = self.trainer.model
            if isinstance(model, NeuralModel):
                self.compiling.emit()
                self.compiled.emit(self.trainer.compile())
            last_signal = 0.0
            for item in self.trainer.train(self.epochs, self.control):
                if isinstance(item, BatchProgress):
                    now = time.perf_counter()
                    if now - last_signal >= BATCH_SIGNAL_INTERVAL or item.batch == item.n_batches:
                        last_signal = now
                        self.batch_progress.emit(item)
                elif isinstance(item, EpochResult):
                    weights = model.weights() if isinstance(model, NeuralModel) else {}
                    probs = self.trainer.last_test_evaluation.probs.copy()
                    self.epoch_finished.emit(EpochSnapshot(item, probs, weights))
            self.finished_run.emit("stopped" if self.control.stop_requested else "finished")
        except Exception as exc:  # anything at all must reach the user as a message, not a crash
            traceback.print_exc()
            self.failed.emit(_describe(exc))


class EvaluationWorker(QtCore.QThread):
    """Compiles a loaded model's prediction function and predicts the test set."""

    done = QtCore.pyqtSignal(object)  # (n_test, 10) probabilities
    failed = QtCore.pyqtSignal(str)

    def __init__(self, model, images: np.ndarray, parent=None):
        super().__init__(parent)
        self.model = model
        self.images = images

    def run(self):
        try:
            self.done.emit(self.model.predict_proba(self.images))
        except Exception as exc:
            traceback.print_exc()
            self.failed.emit(_describe(exc))


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
            self.failed.emit("cancelled" if self.cancelled else _describe(exc))
