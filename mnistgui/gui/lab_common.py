"""What the lab's views share: a model service off the GUI thread, and digit and heat-map images.

`ModelService` keeps, for the selected run, a model with its Attacker and Saliency, all built and
compiled in the service's own thread (a model never leaves the thread that built it). Views send it
requests, functions of that `LabModel`, on named channels: only the latest request of a channel
matters (a stroke or a slider step supersedes the one before), and its result comes back as a call in
the GUI thread. Only arrays and small results cross threads.
"""

from __future__ import annotations

import itertools
import queue
import threading
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtCore, QtWidgets, sip

from ..core.errors import MnistguiError
from ..core.saliency import normalised
from .worker import describe

CLASS_COLOURS = ("#1f77b4", "#2ca02c", "#d62728")  # other classes, the true class, the predicted class


@dataclass(frozen=True)
class RunSpec:
    """What the service needs of a run to build its model: arrays and settings, no model."""

    key: int
    epochs: int
    config: object
    history: list
    state: dict | None

    @classmethod
    def of(cls, run) -> RunSpec:
        return cls(run.key, run.epochs_done, run.config, list(run.history), run.state)

    @property
    def identity(self) -> tuple[int, int, str]:
        return self.key, self.epochs, self.config.to_json()  # resuming may change the configuration


class LabModel:
    """A run's model with its attack and saliency functions; lives in the service's thread."""

    def __init__(self, spec: RunSpec):
        from ..core.attacks import Attacker
        from ..core.saliency import Saliency
        from ..core.workspace import build_model

        self.spec = spec
        self.model = build_model(spec.config, spec.history, spec.state)
        self.trainable = spec.config.is_trainable
        self.attacker = Attacker(self.model) if self.trainable else None
        self.saliency = Saliency(self.model) if self.trainable else None
        if not self.trainable:
            self.model.predict_proba(np.zeros((1, 784), np.uint8))  # fail now if kNN has no training set

    def probs(self, image: np.ndarray) -> np.ndarray:
        """(10,) class probabilities of one image, uint8 or float in [0, 1]."""
        array = np.asarray(image)
        if self.attacker is not None:
            return self.attacker.probs(array.reshape(1, -1))[0]
        if array.dtype != np.uint8:
            array = np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)
        return self.model.predict_proba(array.reshape(1, -1))[0]


class NoModel(Exception):
    """No run is selected, or it has not finished an epoch."""


class _Inbox:
    """The requests waiting for the service's thread: plain Python, shared by the two threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.pending: dict[str, tuple[int, RunSpec | str, Callable]] = {}  # a str: why there is no model
        self.wake = queue.Queue()
        self.closed = False

    def close(self, *_destroyed) -> None:
        """Drop what is pending and end the thread after the request at hand."""
        with self.lock:
            self.closed = True
            self.pending.clear()
        self.wake.put(None)


_CALL = QtCore.QEvent.Type(QtCore.QEvent.registerEventType())


class _Call(QtCore.QEvent):
    def __init__(self, function: Callable[[], None]):
        super().__init__(_CALL)
        self.function = function


class _GuiCalls(QtCore.QObject):
    """Runs, in the GUI thread, the functions the service's thread posts to it.

    The service's thread owns no Qt object and connects no signal: it only posts events to this one,
    made once in the GUI thread and kept for the process. It had its own relay object, connected to the
    service; when a window went, the GUI thread, destroying the service, held the connections' locks and
    waited for the GIL (PyQt's disconnectNotify), while the service's thread, ending, held the GIL and
    waited for those locks to destroy its relay: a deadlock (seen in CI). Posting an event takes only
    the GUI thread's event-queue lock, which Qt holds while it calls into Python only as the application
    itself is destroyed (deleting the events left in the queue); by then every window has closed its
    service, and a closed service's thread posts nothing.
    """

    def event(self, event) -> bool:
        if event.type() == _CALL:
            event.function()
            return True
        return super().event(event)


_gui_calls: _GuiCalls | None = None


def _gui_calls_target() -> _GuiCalls:
    """The process's `_GuiCalls` (made on first use, in the GUI thread)."""
    global _gui_calls
    if _gui_calls is None:
        _gui_calls = _GuiCalls()
    return _gui_calls


class ModelService(QtCore.QObject):
    """Answers requests for the selected run's model in one background thread, latest first.

    `request(channel, function, on_result, on_failure)`: `function(lab_model)` runs in the service's
    thread; `on_result(value)` or `on_failure(message)` is then called in the GUI thread, unless a
    newer request on the same channel was made meanwhile. `model_changed(text)` says what the service
    is doing ("" when ready). `close()` drops what is pending; the thread ends after the request at
    hand, holding no reference to this object meanwhile.
    """

    model_changed = QtCore.pyqtSignal(str)
    run_changed = QtCore.pyqtSignal(object)  # the Run now served, or None

    def __init__(self, parent=None):
        super().__init__(parent)
        self.spec: RunSpec | None = None
        self.run = None
        self._numbers = itertools.count(1)
        self._latest: dict[str, tuple[int, Callable, Callable | None]] = {}
        self._inbox = _Inbox()
        self.destroyed.connect(self._inbox.close)  # also when the window goes without closing first
        # The thread reaches this object through a weak reference alone: it must not keep it alive.
        self._thread = threading.Thread(target=_serve, args=(self._inbox, weakref.ref(self), _gui_calls_target()),
                                        name="lab-model-service", daemon=True)
        self._thread.start()

    def _say(self, text: str) -> None:
        self.model_changed.emit(text)

    # --- GUI thread -----------------------------------------------------------------------------

    def set_run(self, run) -> None:
        """Serve `run` (at its latest epoch) from now on; the model is rebuilt lazily, at the next request."""
        self.spec = None if run is None or run.state is None else RunSpec.of(run)
        self.run = run
        self.run_changed.emit(run)

    @property
    def run_key(self) -> int | None:
        return None if self.spec is None else self.spec.key

    def request(self, channel: str, function: Callable, on_result: Callable, on_failure: Callable | None = None) -> int:
        number = next(self._numbers)
        self._latest[channel] = (number, on_result, on_failure)
        spec = self.spec
        if spec is None:  # answered with the reason, in turn, like any other request
            reason = "train or open a model first" if self.run is None else "the run has not finished an epoch yet"
            spec = reason
        with self._inbox.lock:
            self._inbox.pending[channel] = (number, spec, function)
        self._inbox.wake.put(True)
        return number

    def forget(self, channel: str) -> None:
        """Drop the channel's pending request and ignore its answer."""
        self._latest.pop(channel, None)
        with self._inbox.lock:
            self._inbox.pending.pop(channel, None)

    def close(self) -> None:
        self._latest.clear()
        self._inbox.close()

    def _deliver(self, channel: str, number: int, succeeded: bool, value) -> None:
        latest = self._latest.get(channel)
        if latest is None or latest[0] != number:
            return  # superseded
        del self._latest[channel]
        _, on_result, on_failure = latest
        try:
            if succeeded:
                on_result(value)
            elif on_failure is not None:
                on_failure(value)
        except RuntimeError as exc:  # the view that asked was closed meanwhile
            if "deleted" not in str(exc):
                raise


# --- the service's thread ----------------------------------------------------------------------------


def _serve(inbox: _Inbox, service: weakref.ref, gui_calls: _GuiCalls) -> None:
    def tell(method: str, *args) -> None:
        """`service.method(*args)` in the GUI thread, if the service is still there then."""
        if inbox.closed:  # nobody waits for it
            return

        def call():
            target = service()
            if target is not None and not sip.isdeleted(target):
                getattr(target, method)(*args)

        QtCore.QCoreApplication.postEvent(gui_calls, _Call(call))

    lab: LabModel | None = None
    while inbox.wake.get() is not None:
        while True:
            with inbox.lock:
                if inbox.closed or not inbox.pending:
                    break
                channel = next(iter(inbox.pending))
                number, spec, function = inbox.pending.pop(channel)
            try:
                if isinstance(spec, str):
                    raise NoModel(spec)
                if lab is None or lab.spec.identity != spec.identity:
                    lab = None  # the old model goes before the new one is built
                    tell("_say", f"Preparing run {spec.key} (epoch {spec.epochs})…")
                    try:
                        lab = LabModel(spec)
                    finally:
                        tell("_say", "")
                value = function(lab)
            except Exception as exc:  # every failure reaches the view as a message
                if not isinstance(exc, (NoModel, MnistguiError)):  # a bug, not a user's situation
                    traceback.print_exc()
                tell("_deliver", channel, number, False, str(exc) if isinstance(exc, NoModel) else describe(exc))
            else:
                tell("_deliver", channel, number, True, value)
            del function  # a view's closure: not kept past its answer


# --- images -----------------------------------------------------------------------------------------


def diverging_lut(size: int = 256) -> np.ndarray:
    """Blue, white, red: negative, zero, positive."""
    t = np.linspace(-1.0, 1.0, size)
    lut = np.empty((size, 3), dtype=np.float64)
    blue, red = np.array([33, 102, 172]), np.array([178, 24, 43])
    white = np.array([255, 255, 255])
    for i, v in enumerate(t):
        lut[i] = white + (red - white) * v if v >= 0 else white + (blue - white) * (-v)
    return lut.astype(np.uint8)


DIVERGING = diverging_lut()


class ImagePane(QtWidgets.QWidget):
    """A titled 28x28 image: a digit in grey (ink bright on black, as the model sees it) or a signed map
    in blue-white-red with zero white."""

    def __init__(self, title: str, diverging: bool = False, side: int = 168, parent=None):
        super().__init__(parent)
        self.diverging = diverging
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        self.title = QtWidgets.QLabel(title)
        self.title.setAlignment(QtCore.Qt.AlignCenter)
        self.title.setWordWrap(True)
        layout.addWidget(self.title)
        self.canvas = pg.GraphicsLayoutWidget()
        self.canvas.setBackground("w")
        self.canvas.setMinimumSize(side, side)
        self.view = self.canvas.addViewBox(lockAspect=True, invertY=True, enableMouse=False)
        self.view.setMenuEnabled(False)
        self.image = pg.ImageItem()
        if diverging:
            self.image.setLookupTable(DIVERGING)
        self.view.addItem(self.image)
        self.view.setRange(xRange=(0, 28), yRange=(0, 28), padding=0.02)
        layout.addWidget(self.canvas, 1)
        self.caption = QtWidgets.QLabel()
        self.caption.setAlignment(QtCore.Qt.AlignCenter)
        self.caption.setWordWrap(True)
        layout.addWidget(self.caption)
        self.values: np.ndarray | None = None

    def show_digit(self, image: np.ndarray | None, caption: str = "") -> None:
        """A uint8 or [0, 1] float image, 784 pixels."""
        if image is None:
            self.clear(caption)
            return
        array = np.asarray(image).reshape(28, 28)
        values = array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
        self.values = values
        self.image.setImage(values, levels=(0.0, 1.0))
        self.caption.setText(caption)

    def show_signed(self, values: np.ndarray | None, caption: str = "") -> None:
        """A map already in [-1, 1] (zero white)."""
        if values is None:
            self.clear(caption)
            return
        self.values = np.asarray(values, dtype=np.float32).reshape(28, 28)
        self.image.setImage(self.values, levels=(-1.0, 1.0))
        self.caption.setText(caption)

    def clear(self, caption: str = "") -> None:
        self.values = None
        self.image.clear()
        self.caption.setText(caption)


class ProbabilityBars(pg.PlotWidget):
    """The ten class probabilities as bars: the true class green, the predicted one red when it is wrong."""

    def __init__(self, class_names=None, parent=None):
        super().__init__(parent, background="w")
        self.setMinimumSize(240, 150)
        self.setMouseEnabled(False, False)
        self.setMenuEnabled(False)
        self.hideButtons()
        self.setYRange(0, 1, padding=0.02)
        self.setXRange(-0.6, 9.6, padding=0)
        self.setLabel("left", "probability")
        self.bars: list[pg.BarGraphItem] = []
        self.probs: np.ndarray | None = None
        self.set_class_names(class_names or tuple(str(c) for c in range(10)))

    def set_class_names(self, names) -> None:
        self.class_names = tuple(names)
        self.getAxis("bottom").setTicks([[(c, self.class_names[c][:8]) for c in range(10)]])

    def set_probs(self, probs: np.ndarray | None, label: int | None = None, ghost: np.ndarray | None = None) -> None:
        """`ghost`: other probabilities drawn as grey outlines behind (the clean image's, under attack)."""
        for item in self.bars:
            self.removeItem(item)
        self.bars = []
        self.probs = None if probs is None else np.asarray(probs, dtype=np.float32)
        if ghost is not None:
            item = pg.BarGraphItem(x=np.arange(10), height=np.asarray(ghost), width=0.85, brush=(0, 0, 0, 0),
                                   pen=pg.mkPen("#888888", width=1, style=QtCore.Qt.DashLine))
            self.addItem(item)
            self.bars.append(item)
        if probs is None:
            return
        predicted = int(np.argmax(probs))
        colours = [CLASS_COLOURS[1] if c == label else (CLASS_COLOURS[2] if c == predicted and label is not None
                                                           else CLASS_COLOURS[0]) for c in range(10)]
        item = pg.BarGraphItem(x=np.arange(10), height=self.probs, width=0.6, brushes=colours, pen=None)
        self.addItem(item)
        self.bars.append(item)


SALIENCY_METHODS = {"gradient": "gradient", "integrated": "integrated gradients"}


def explain(lab: LabModel, image: np.ndarray, target: int | None) -> dict:
    """Probabilities and both saliency maps of one image (the service's thread)."""
    if lab.saliency is None:
        return {"probs": lab.probs(image), "explanation": None}
    explanation = lab.saliency.explain(np.asarray(image), target)
    return {"probs": lab.probs(image), "explanation": explanation}


class SaliencyPanel(QtWidgets.QWidget):
    """The saliency of one digit for a chosen class, as a heat map over the digit, computed by the service."""

    explained = QtCore.pyqtSignal(object)  # the Explanation shown

    def __init__(self, service: ModelService, channel: str, class_names=None, side: int = 168, parent=None):
        super().__init__(parent)
        self.service = service
        self.channel = channel
        self.image: np.ndarray | None = None
        self.explanation = None
        self._stale = False
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        controls = QtWidgets.QGridLayout()
        self.method_box = QtWidgets.QComboBox()
        for key, title in SALIENCY_METHODS.items():
            self.method_box.addItem(title, key)
        self.method_box.setToolTip("Gradient: how each pixel would move the class's score. Integrated gradients: "
                                   "each pixel's share of the score, from a black image to this one.")
        self.class_box = QtWidgets.QComboBox()
        self.class_box.setToolTip("The class whose score is explained")
        self.set_class_names(class_names or tuple(str(c) for c in range(10)))
        controls.addWidget(QtWidgets.QLabel("Saliency"), 0, 0)
        controls.addWidget(self.method_box, 0, 1)
        controls.addWidget(QtWidgets.QLabel("of class"), 1, 0)
        controls.addWidget(self.class_box, 1, 1)
        controls.setColumnStretch(1, 1)
        layout.addLayout(controls)
        self.pane = ImagePane("red raises the class's score, blue lowers it", diverging=True, side=side)
        layout.addWidget(self.pane, 1)
        self.method_box.currentIndexChanged.connect(self._show)
        self.class_box.currentIndexChanged.connect(self.refresh)

    def set_class_names(self, names) -> None:
        self.class_box.blockSignals(True)
        current = max(0, self.class_box.currentIndex())
        self.class_box.clear()
        self.class_box.addItem("predicted", None)
        for c, name in enumerate(names):
            self.class_box.addItem(name if name == str(c) else f"{c}: {name}", c)
        self.class_box.setCurrentIndex(current)
        self.class_box.blockSignals(False)

    def set_image(self, image: np.ndarray | None) -> None:
        self.image = None if image is None else np.array(image, copy=True)
        self.explanation = None
        self.refresh()

    def showEvent(self, event):
        super().showEvent(event)
        if self._stale:
            self.refresh()

    def refresh(self) -> None:
        """Ask for the map of the image now set; while hidden, only once shown (no model is built for nobody)."""
        self._stale = not self.isVisible()
        if self._stale:
            self.service.forget(self.channel)
            return
        if self.image is None:
            self.service.forget(self.channel)
            self.explanation = None
            self.pane.clear("no digit")
            self._clear_outline()
            return
        image, target = self.image, self.class_box.currentData()
        self.pane.caption.setText("computing…" if self.explanation is None else self.pane.caption.text())
        self.service.request(self.channel, lambda lab: explain(lab, image, target)["explanation"],
                             self._explained, self._failed)

    def _explained(self, explanation) -> None:
        self.explanation = explanation
        if explanation is None:
            self.pane.clear("kNN has no gradient: no saliency map")
            self._clear_outline()
        self._show()
        self.explained.emit(explanation)

    def _failed(self, message: str) -> None:
        self.explanation = None
        self.pane.clear(message)
        self._clear_outline()

    def _clear_outline(self) -> None:
        if hasattr(self.pane, "outline"):
            self.pane.outline.setData(None)

    def heat_map(self) -> np.ndarray | None:
        """The shown map, in [-1, 1]."""
        if self.explanation is None:
            return None
        raw = self.explanation.gradient if self.method_box.currentData() == "gradient" else self.explanation.integrated
        return normalised(raw)

    def _show(self) -> None:
        heat = self.heat_map()
        if heat is None or self.image is None:
            return
        # Over the digit: the ink shows through as a faint grey where the map is near zero.
        ink = np.asarray(self.image).reshape(28, 28).astype(np.float32)
        ink = ink / 255.0 if np.asarray(self.image).dtype == np.uint8 else ink
        self.pane.show_signed(heat)
        self._overlay(ink)
        e = self.explanation
        self.pane.caption.setText(f"class {e.target}: score {e.score:.2f} (predicted {e.predicted})")

    def _overlay(self, ink: np.ndarray) -> None:
        """The digit's outline over the heat map, so one sees which strokes the map points at."""
        view = self.pane.view
        if not hasattr(self.pane, "outline"):
            self.pane.outline = pg.IsocurveItem(level=0.5, pen=pg.mkPen((40, 40, 40, 220), width=1.5))
            self.pane.outline.setPos(0.5, 0.5)  # the curve runs through pixel centres
            view.addItem(self.pane.outline)
        self.pane.outline.setData(ink)
