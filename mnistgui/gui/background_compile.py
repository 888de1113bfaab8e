"""Compile the chosen configuration in the background, so that Start finds it ready.

A cold compile of the convnet takes 14-32 s, paid once per configuration and machine: PyTensor keeps
the compiled C modules on disk. Once the configuration panel has been still for a moment (or a model
file has been opened), its configuration is compiled in a worker over a few blank images
(`workspace.precompile`) and thrown away; Start then compiles warm. Settings that change no graph
(epochs, seed, sizes) trigger nothing. MNISTGUI_PRECOMPILE=0 turns it off (the test suite does).
"""

from __future__ import annotations

import math
import os

from PyQt5 import QtCore

from ..core.config import MODEL_TITLES
from ..core.workspace import precompile

DELAY_MS = 1500  # the panel still this long: compile its configuration


def graph_key(config) -> str:
    return repr(config.replace(epochs=1, seed=0, train_size=0, test_size=0, val_size=0, early_stop=0))


class BackgroundCompiler(QtCore.QObject):
    def __init__(self, window):
        super().__init__(window)
        self.window = window
        self.compiled: dict[str, float] = {}  # graph key -> seconds its compile took (NaN: it failed)
        self._compiling: str | None = None
        self._timer = QtCore.QTimer(self, singleShot=True, interval=DELAY_MS, timeout=self._compile)
        if os.environ.get("MNISTGUI_PRECOMPILE", "1") != "0":
            window.config_panel.changed.connect(self._timer.start)
            window.predictions_ready.connect(lambda run: self._timer.start())
            self._timer.start()

    def _compile(self) -> None:
        window = self.window
        if window._closing or window.busy or self._compiling or not window.config_panel.is_valid():
            return
        config = window.config_panel.config()
        key = graph_key(config)
        if not config.is_trainable or key in self.compiled:
            return
        title = MODEL_TITLES[config.model]
        self._compiling = key
        status = window.statusBar()
        announcement = f"compiling the {title.lower()} in the background, so that Start finds it ready…"
        status.showMessage(announcement)

        def done(seconds: float):
            self._compiling = None
            self.compiled[key] = seconds
            status.showMessage(f"{title} compiled in the background in {seconds:.1f} s: Start will be quick", 6000)
            self._timer.start()  # the panel may have changed meanwhile

        def failed(exc: Exception):  # Start compiles again and reports the problem properly
            self._compiling = None
            self.compiled[key] = math.nan  # not again
            if status.currentMessage() == announcement:  # never another message, such as a stop note
                status.clearMessage()

        window._in_background(lambda: precompile(config), done, failed)
