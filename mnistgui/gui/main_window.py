"""The main window."""

from __future__ import annotations

from PyQt5 import QtWidgets

from .. import __version__


class MainWindow(QtWidgets.QMainWindow):
    def __init__(self):
        super().__init__()
        self.setWindowTitle(f"mnistgui {__version__}")
        self.resize(1100, 750)
        label = QtWidgets.QLabel("mnistgui: use `mnistgui train --help` for headless training.")
        self.setCentralWidget(label)

    def open_model(self, path: str) -> None:
        self.statusBar().showMessage(f"opened {path}")
