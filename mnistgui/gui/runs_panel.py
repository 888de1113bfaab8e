"""The session's runs as a list, kept up to date from the workspace's events."""

from __future__ import annotations

from PyQt5 import QtCore, QtGui, QtWidgets

from ..core.workspace import Run, RunAdded, RunChanged, Workspace
from .plots import PALETTE


def run_color(run: Run) -> str:
    return PALETTE[run.color_index % len(PALETTE)]


class RunsPanel(QtWidgets.QListWidget):
    """Tick to show a run's curves; select it to inspect it."""

    visibility_changed = QtCore.pyqtSignal(int, bool)  # run key, shown
    run_chosen = QtCore.pyqtSignal(object)  # the Run the user selected

    def __init__(self, workspace: Workspace, parent=None):
        super().__init__(parent)
        self.workspace = workspace
        self.setToolTip("Tick to show a run's curves; select to inspect it")
        self.itemChanged.connect(lambda item: self.visibility_changed.emit(
            item.data(QtCore.Qt.UserRole), item.checkState() == QtCore.Qt.Checked))
        self.currentRowChanged.connect(self._row_changed)
        workspace.subscribe(self._on_event)

    def _on_event(self, event) -> None:
        if isinstance(event, RunAdded):
            run = event.run
            item = QtWidgets.QListWidgetItem(run.name)
            item.setFlags(item.flags() | QtCore.Qt.ItemIsUserCheckable)
            item.setCheckState(QtCore.Qt.Checked)
            item.setForeground(QtGui.QColor(run_color(run)))
            item.setData(QtCore.Qt.UserRole, run.key)
            self.blockSignals(True)
            self.addItem(item)
            self.setCurrentItem(item)
            self.blockSignals(False)
        elif isinstance(event, RunChanged):
            item = self.item(self.workspace.runs.index(event.run))
            if item is not None:
                item.setText(event.run.name)

    def _row_changed(self, row: int) -> None:
        if 0 <= row < len(self.workspace.runs):
            self.run_chosen.emit(self.workspace.runs[row])
