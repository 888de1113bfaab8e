"""Shown when the dataset is not found: download it, choose a folder, or switch to the other dataset."""

from __future__ import annotations

from PyQt5 import QtCore, QtWidgets

from ..core import data
from .worker import FunctionWorker, start_detached


class DataDialog(QtWidgets.QDialog):
    folder_chosen = QtCore.pyqtSignal(str)
    dataset_chosen = QtCore.pyqtSignal(str)

    def __init__(self, name: str, reason: str, parent=None):
        super().__init__(parent)
        self.name = name
        self.worker: FunctionWorker | None = None
        title = data.DATASET_TITLES[name]
        self.setWindowTitle(f"{title} not found")
        layout = QtWidgets.QVBoxLayout(self)
        text = QtWidgets.QLabel(reason)
        text.setWordWrap(True)
        text.setMinimumWidth(520)
        layout.addWidget(text)
        self.progress = QtWidgets.QProgressBar()
        self.progress.hide()
        layout.addWidget(self.progress)
        self.status = QtWidgets.QLabel()
        layout.addWidget(self.status)
        buttons = QtWidgets.QHBoxLayout()
        self.download_button = QtWidgets.QPushButton(f"Download {title}")
        self.download_button.setToolTip(f"About 11 MB from the public mirrors into {data.default_download_dir(name)}")
        self.folder_button = QtWidgets.QPushButton("Choose folder…")
        other = "fashion" if name == "mnist" else "mnist"
        self.other = other
        self.other_button = QtWidgets.QPushButton(f"Use {data.DATASET_TITLES[other]}")
        found = data.find_dataset(other) is not None
        self.other_button.setEnabled(found)
        self.other_button.setToolTip("" if found else f"{data.DATASET_TITLES[other]} was not found either")
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        for button in (self.download_button, self.folder_button, self.other_button, self.cancel_button):
            buttons.addWidget(button)
        layout.addLayout(buttons)
        self.download_button.clicked.connect(self.download)
        self.folder_button.clicked.connect(self.choose_folder)
        self.other_button.clicked.connect(self.use_other)
        self.cancel_button.clicked.connect(self.cancel)

    def download(self, mirrors=None):
        target = data.default_download_dir(self.name)

        def fetch(report):
            return str(data.fetch_dataset(self.name, target, progress=report, mirrors=mirrors))

        self.worker = FunctionWorker(fetch)  # no parent: a cancelled download may outlive the dialog
        self.worker.progress.connect(self._progress)
        self.worker.done.connect(self._downloaded)
        self.worker.failed.connect(self._failed)
        self.download_button.setEnabled(False)
        self.folder_button.setEnabled(False)
        self.progress.show()
        start_detached(self.worker)

    def _progress(self, args):
        filename, done, total = args
        self.progress.setMaximum(total or 0)
        self.progress.setValue(done)
        self.status.setText(f"{filename}: {done / 1e6:.1f} MB")

    def _downloaded(self, folder: str):
        self.folder_chosen.emit(folder)
        self.accept()

    def _failed(self, message: str):
        self.status.setText(message)
        self.progress.hide()
        self.download_button.setEnabled(True)
        self.folder_button.setEnabled(True)

    def choose_folder(self):
        folder = QtWidgets.QFileDialog.getExistingDirectory(self, "Folder with the four IDX files")
        if folder:
            self.folder_chosen.emit(folder)
            self.accept()

    def use_other(self):
        self.dataset_chosen.emit(self.other)
        self.accept()

    def cancel(self):
        self.reject()

    def reject(self):
        """Close at once (also on Esc); a running download stops at its next chunk, leaving nothing partial."""
        worker, self.worker = self.worker, None
        if worker is not None and worker.isRunning():
            worker.cancel()
            for signal in (worker.progress, worker.done, worker.failed):
                signal.disconnect()
        super().reject()
