"""The main window's actions, menus and toolbar, and its About text."""

from __future__ import annotations

from PyQt5 import QtCore, QtGui, QtWidgets

from ..core.presets import PRESETS


def _action(window, text, slot, shortcut=None, tip=None, checkable=False) -> QtWidgets.QAction:
    action = QtWidgets.QAction(text, window)
    if shortcut:
        action.setShortcut(QtGui.QKeySequence(shortcut))
    if tip:
        action.setStatusTip(tip)
        action.setToolTip(f"{tip} ({QtGui.QKeySequence(shortcut).toString()})" if shortcut else tip)
    action.setCheckable(checkable)
    action.triggered.connect(slot)
    window.addAction(action)
    return action


def install_actions(window) -> None:
    """Create the window's actions as attributes (`start_action`, ...), its menus and its toolbar."""
    w = window
    w.start_action = _action(w, "&Start", w.start_training, "F5", "Train a new run with this configuration")
    w.pause_action = _action(w, "&Pause", w.toggle_pause, "F6", "Pause or resume training")
    w.stop_action = _action(w, "S&top", w.stop_training, "Esc", "Stop within one batch")
    w.stop_after_action = _action(w, "Stop after this &epoch", w.stop_after_epoch, None,
                                  "Finish the current epoch, then stop", checkable=True)
    w.continue_action = _action(w, "&Resume training", w.continue_training, "Shift+F5",
                                "Train the selected run for more epochs, exactly where it stopped")
    w.open_action = _action(w, "&Open model…", w.open_dialog, QtGui.QKeySequence.Open, "Open a model file")
    w.save_action = _action(w, "&Save model", w.save, QtGui.QKeySequence.Save, "Save the selected run")
    w.save_as_action = _action(w, "Save model &as…", w.save_as, QtGui.QKeySequence.SaveAs)
    w.export_csv_action = _action(w, "Export histories as &CSV…", w.export_csv)
    w.export_plot_action = _action(w, "Export plot as PNG or S&VG…", w.export_plot)
    w.data_action = _action(w, "Choose &data folder…", w.choose_data_folder)
    w.quit_action = _action(w, "&Quit", w.close, QtGui.QKeySequence.Quit)
    w.about_action = _action(w, "&About mnistgui", w.about)

    menu = w.menuBar().addMenu("&File")
    menu.addAction(w.open_action)
    w.recent_menu = menu.addMenu("Open &recent")
    for action in (w.save_action, w.save_as_action, None, w.export_csv_action, w.export_plot_action, None,
                   w.data_action, None, w.quit_action):
        if action is None:
            menu.addSeparator()
        else:
            menu.addAction(action)
    menu = w.menuBar().addMenu("&Train")
    for action in (w.start_action, w.pause_action, w.stop_action, w.stop_after_action, w.continue_action):
        menu.addAction(action)
    menu.addSeparator()
    w.presets_menu = menu.addMenu("&Presets")
    w.preset_actions = {}
    for preset in PRESETS.values():
        action = w.presets_menu.addAction(preset.title, lambda name=preset.name: w.apply_preset(name))
        action.setStatusTip(preset.description)
        action.setToolTip(preset.description)
        w.preset_actions[preset.name] = action
    w.presets_menu.setToolTipsVisible(True)
    w.menuBar().addMenu("&Help").addAction(w.about_action)

    toolbar = w.addToolBar("Training")
    toolbar.setObjectName("training-toolbar")
    toolbar.setToolButtonStyle(QtCore.Qt.ToolButtonTextBesideIcon)
    style = w.style()
    for action, icon in ((w.start_action, QtWidgets.QStyle.SP_MediaPlay),
                         (w.pause_action, QtWidgets.QStyle.SP_MediaPause),
                         (w.stop_action, QtWidgets.QStyle.SP_MediaStop),
                         (w.continue_action, QtWidgets.QStyle.SP_MediaSeekForward),
                         (w.open_action, QtWidgets.QStyle.SP_DialogOpenButton),
                         (w.save_action, QtWidgets.QStyle.SP_DialogSaveButton)):
        action.setIcon(style.standardIcon(icon))
        toolbar.addAction(action)
    toolbar.addAction(w.stop_after_action)


def about_text() -> str:
    import h5py
    import numpy as np
    import pyqtgraph
    import pytensor
    from PyQt5.QtCore import PYQT_VERSION_STR, QT_VERSION_STR

    from .. import __version__
    from ..core.backend import BACKEND_TITLES, resolve_backend

    return (f"<h3>mnistgui {__version__}</h3>"
            "<p>A desktop workbench for the models of the 2016 notebook “Introduction to Deep Learning” "
            "(after Alec Radford's Theano-Tutorials), compiled with PyTensor, Theano's successor.</p>"
            f"<p>PyTensor {pytensor.__version__} · NumPy {np.__version__} · h5py {h5py.__version__}<br>"
            f"PyQt {PYQT_VERSION_STR} · Qt {QT_VERSION_STR} · pyqtgraph {pyqtgraph.__version__}<br>"
            f"Default backend here: {BACKEND_TITLES[resolve_backend('auto')]}</p>")
