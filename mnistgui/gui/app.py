"""Qt application start-up."""

from __future__ import annotations

import os
import sys
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent


def resource_path(name: str) -> Path:
    """A file of resources/: installed as mnistgui/resources, or beside the package in a checkout."""
    for folder in (_PACKAGE / "resources", _PACKAGE.parent / "resources"):
        if (folder / name).exists():
            return folder / name
    return _PACKAGE / "resources" / name


def make_application():
    from PyQt5 import QtCore, QtGui, QtWidgets

    # Workers compile and train in Python threads; the GUI thread waits for the interpreter lock up to
    # the switch interval each time it needs it, and a repaint needs it many times. Measured beside a
    # compiling worker (tests/test_responsiveness.py, switching data sets): worst event-loop gap about
    # 200 ms at CPython's 5 ms, 94-97 ms at 1 ms, 46-47 ms at 0.1 ms; training speed unchanged.
    sys.setswitchinterval(0.0001)

    # High-DPI attributes must be set before the QApplication exists.
    QtWidgets.QApplication.setAttribute(QtCore.Qt.AA_EnableHighDpiScaling, True)
    QtWidgets.QApplication.setAttribute(QtCore.Qt.AA_UseHighDpiPixmaps, True)
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    app.setApplicationName("mnistgui")
    app.setOrganizationName("mnistgui")
    icon = resource_path("mnistgui.png")
    if icon.exists():
        app.setWindowIcon(QtGui.QIcon(str(icon)))
    import pyqtgraph as pg

    pg.setConfigOptions(imageAxisOrder="row-major", antialias=True)  # else digits appear transposed
    from .collector import warm_up_once

    warm_up_once()
    return app


def run_gui(model_path: str | None = None) -> int:
    from PyQt5 import QtCore

    app = make_application()
    from .main_window import MainWindow

    window = MainWindow()
    window.show()
    # For smoke tests of installed and frozen builds: open the window, then quit on our own.
    exit_after = os.environ.get("MNISTGUI_EXIT_AFTER_MS")
    if exit_after:
        QtCore.QTimer.singleShot(int(exit_after), window.close)
    if model_path:
        QtCore.QTimer.singleShot(0, lambda: window.open_model(model_path))
    else:
        # Offer the ways to get the data at once, not at the first Start.
        QtCore.QTimer.singleShot(0, lambda: window.dataset(window.config_panel.config().dataset))
    return app.exec_()
