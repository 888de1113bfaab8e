"""The Training tab: every run's curves (from the workspace's events) and the selected run's epochs."""

from __future__ import annotations

import math

from PyQt5 import QtCore, QtWidgets

from ..core.workspace import EpochAdded, Run, RunAdded, RunChanged, Workspace
from .plots import TrainingPlot
from .runs_panel import run_color


COLUMNS = [("epoch", "epoch", "i"), ("train error", "train_error", "pct"), ("val error", "val_error", "pct"),
           ("test error", "test_error", "pct"), ("cost", "cost", "f"), ("learning rate", "learning_rate", "g"),
           ("seconds", "seconds", "s"), ("images/s", "images_per_second", "n")]


def _fmt(value, kind: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "–"
    return {"pct": f"{value:.2%}", "f": f"{value:.4f}", "s": f"{value:.2f}", "n": f"{value:,.0f}",
            "g": f"{value:.3g}"}.get(kind, str(value))


class TrainingView(QtWidgets.QWidget):
    def __init__(self, workspace: Workspace, parent=None):
        super().__init__(parent)
        self.current: Run | None = None
        layout = QtWidgets.QVBoxLayout(self)
        row = QtWidgets.QHBoxLayout()
        self.log_scale = QtWidgets.QCheckBox("Log scale")
        self.log_scale.toggled.connect(lambda on: self.plot.set_log_scale(on))
        row.addWidget(self.log_scale)
        self.notebook_box = QtWidgets.QCheckBox("Notebook's curve")
        self.notebook_box.setToolTip("Overlay the test error the 2016 notebook published for the selected run's "
                                     "model (grey)")
        self.notebook_box.toggled.connect(self._show_notebook)
        row.addWidget(self.notebook_box)
        row.addStretch(1)
        layout.addLayout(row)
        self.plot = TrainingPlot()
        splitter = QtWidgets.QSplitter(QtCore.Qt.Vertical)
        splitter.addWidget(self.plot)
        self.epoch_table = QtWidgets.QTableWidget(0, len(COLUMNS))
        self.epoch_table.setHorizontalHeaderLabels([title for title, _, _ in COLUMNS])
        self.epoch_table.horizontalHeader().setSectionResizeMode(QtWidgets.QHeaderView.Stretch)
        self.epoch_table.verticalHeader().hide()
        self.epoch_table.setEditTriggers(QtWidgets.QAbstractItemView.NoEditTriggers)
        splitter.addWidget(self.epoch_table)
        splitter.setSizes([520, 160])
        layout.addWidget(splitter, 1)
        workspace.subscribe(self._on_event)

    def _on_event(self, event) -> None:
        if isinstance(event, (RunAdded, RunChanged, EpochAdded)):
            run = event.run
            self.plot.update_run(run.key, run.name, run_color(run), run.history)
        if isinstance(event, EpochAdded) and event.run is self.current:
            if not event.run.config.is_trainable:
                self.epoch_table.setRowCount(0)
            self._append_row(event.result)
            self.plot.show_class_errors(event.run.history)

    def show_run(self, run: Run) -> None:
        self.current = run
        self.epoch_table.setRowCount(0)
        for result in run.history:
            self._append_row(result)
        self.plot.show_class_errors(run.history)
        self._show_notebook()

    def _show_notebook(self, *args) -> None:
        shown = self.notebook_box.isChecked() and self.current is not None
        self.plot.show_notebook(self.current.config.model if shown else None)

    def _append_row(self, result) -> None:
        row = self.epoch_table.rowCount()
        self.epoch_table.insertRow(row)
        for column, (_, field, kind) in enumerate(COLUMNS):
            item = QtWidgets.QTableWidgetItem(_fmt(getattr(result, field), kind))
            item.setTextAlignment(QtCore.Qt.AlignRight | QtCore.Qt.AlignVCenter)
            self.epoch_table.setItem(row, column, item)
        self.epoch_table.scrollToBottom()
