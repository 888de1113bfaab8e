"""One training job at a time, in a TrainingWorker: its controls, its state, and the status bar's progress."""

from __future__ import annotations

import math

from PyQt5 import QtCore, QtWidgets

from ..core.workspace import Run, TrainingJob, Workspace
from .worker import TrainingWorker

RUNNING = ("compiling", "training", "paused", "stopping")


class TrainingController(QtCore.QObject):
    state_changed = QtCore.pyqtSignal(str, str)  # state, detail
    status_message = QtCore.pyqtSignal(str, int)  # text, milliseconds
    failed = QtCore.pyqtSignal(str)  # a message for the user
    compiled_in = QtCore.pyqtSignal(float)  # seconds the run's compilation took

    def __init__(self, workspace: Workspace, parent=None):
        super().__init__(parent)
        self.workspace = workspace
        self.worker: TrainingWorker | None = None
        self.run: Run | None = None
        self.state = "idle"
        self._epochs_target = 0
        self._shown_epoch = None
        self._compile_started = QtCore.QElapsedTimer()
        self._compile_timer = QtCore.QTimer(self, interval=200, timeout=self._show_compile_time)
        self.progress = QtWidgets.QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setMaximumWidth(260)
        self.progress.setTextVisible(True)
        self.rate_label = QtWidgets.QLabel()
        self.rate_label.setMinimumWidth(360)  # text changes then never resize, so never relayout, the window

    @property
    def busy(self) -> bool:
        return self.worker is not None and self.worker.isRunning()

    def _set_state(self, state: str, detail: str = "") -> None:
        self.state = state
        self.state_changed.emit(state, detail)

    def launch(self, run: Run, job: TrainingJob, start) -> TrainingWorker:
        """Train `job` in a new worker; `start(worker)` starts the thread (the window tracks it)."""
        self.progress.setValue(0)
        self.rate_label.clear()
        self.run = run
        self._epochs_target = run.epochs_done + job.epochs
        self._shown_epoch = None
        worker = TrainingWorker(job)
        worker.run = run  # whose epochs these are, even if they arrive after a newer launch
        # Bound methods only: PyQt disconnects them when this controller goes, and the detached worker
        # may outlive it (a lambda here would then run on a deleted object).
        worker.compiling.connect(self._on_compiling)
        worker.compiled.connect(self._on_compiled)
        worker.batch_progress.connect(self._on_batch)
        worker.epoch_finished.connect(self._on_epoch)
        worker.stopped_early.connect(self._on_stopped_early)
        worker.finished_run.connect(self._on_finished)
        worker.failed.connect(self._on_failed)
        self.worker = worker
        trainable = run.config.is_trainable
        self._set_state("compiling" if trainable else "training", "" if trainable else "nearest neighbours over the test set")
        start(worker)
        return worker

    # --- controls -----------------------------------------------------------------------------------

    def toggle_pause(self) -> None:
        if not self.busy:
            return
        if self.worker.control.paused:
            self.worker.resume()
            self._set_state("training", f"epoch {self.run.epochs_done + 1} of {self._epochs_target}")
        else:
            self.worker.pause()
            self._set_state("paused", "between batches")

    def stop(self) -> None:
        if self.busy:
            self.worker.stop()  # also ends a pause
            self._set_state("stopping", "after this batch")

    def stop_after_epoch(self, enabled: bool) -> None:
        if self.busy:
            self.worker.stop_after_epoch(enabled)

    # --- the worker's signals -------------------------------------------------------------------------

    def _show_compile_time(self):
        self._set_state("compiling", f"the graph… {self._compile_started.elapsed() / 1000:.0f} s")

    def _on_compiling(self):
        self._compile_started.start()
        self._compile_timer.start()
        self._show_compile_time()

    def _on_compiled(self, seconds: float):
        self._compile_timer.stop()
        self.compiled_in.emit(seconds)
        self.status_message.emit(f"compiled in {seconds:.1f} s", 4000)
        if self.state == "compiling":
            self._set_state("training", f"epoch {self.run.epochs_done + 1} of {self._epochs_target}")

    def _on_batch(self, progress):
        # Touch only the two status widgets: a relayout or a repaint of the plots here holds the GIL
        # the training thread needs, and at 10 updates a second slowed training by 40%.
        self.progress.setValue(int(progress.fraction * 1000))
        eta = "" if math.isnan(progress.eta_seconds) else f"ETA {progress.eta_seconds:.0f} s · "
        cost = "" if math.isnan(progress.cost) else f" · cost {progress.cost:.4f}"
        self.rate_label.setText(f"{eta}{progress.images_per_second:,.0f} images/s{cost}")
        if progress.epoch != self._shown_epoch and self.state == "training" and self.run.config.is_trainable:
            self._shown_epoch = progress.epoch
            self._set_state("training", f"epoch {progress.epoch} of {self._epochs_target}")

    def _on_epoch(self, outcome):
        self.workspace.record_epoch(self.sender().run, outcome)
        result = outcome.result
        self.status_message.emit(f"epoch {result.epoch}: test error {result.test_error:.2%}, {result.seconds:.1f} s", 5000)

    def _on_stopped_early(self, note: str):
        self.status_message.emit(note, 0)

    def _on_finished(self, how: str):
        self._compile_timer.stop()
        run = self.run
        if how == "stopped":
            detail = f"at the end of epoch {run.epochs_done}"
        else:
            detail = f"{run.epochs_done} epochs" if run.config.is_trainable else ""
        self.worker = None
        self._set_state(how, detail)

    def _on_failed(self, message: str):
        self._compile_timer.stop()
        self.worker = None
        self._set_state("failed", f"the model is kept at epoch {self.run.epochs_done}")
        self.failed.emit(message)
