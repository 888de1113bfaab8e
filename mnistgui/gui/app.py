"""Qt application start-up."""

from __future__ import annotations

import sys


def run_gui(model_path: str | None = None) -> int:
    from PyQt5 import QtCore, QtWidgets

    QtWidgets.QApplication.setAttribute(QtCore.Qt.AA_EnableHighDpiScaling, True)
    QtWidgets.QApplication.setAttribute(QtCore.Qt.AA_UseHighDpiPixmaps, True)
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    app.setApplicationName("mnistgui")
    app.setOrganizationName("mnistgui")
    from .main_window import MainWindow

    window = MainWindow()
    window.show()
    if model_path:
        window.open_model(model_path)
    return app.exec_()
