"""The Draw tab: draw a digit, see what the model sees, what it decides, and why, live.

Strokes are painted on a 280x280 canvas (bright ink on black inside, shown dark on light); a tablet's
pressure widens the pen. After each change the canvas is made into an MNIST digit (`prepare_digit`:
cropped, scaled to 20 pixels, centred by its centre of mass) in the GUI thread, a few milliseconds,
and the model service classifies and explains it in its thread; a newer stroke supersedes a pending
request, so drawing never waits for the model.
"""

from __future__ import annotations

import numpy as np
from PyQt5 import QtCore, QtGui, QtWidgets

from ..core.preprocess import NoInkError, prepare_digit
from .lab_common import ImagePane, ModelService, ProbabilityBars, SaliencyPanel

PAD_SIDE = 280  # ten canvas pixels per MNIST pixel
PEN_WIDTH = 22.0  # canvas pixels at full pressure: MNIST's strokes, 2 to 3 pixels wide after scaling
UPDATE_DELAY_MS = 30  # strokes within this delay make one update


class DrawingPad(QtWidgets.QWidget):
    """A square canvas for mouse or tablet strokes, with undo and clear."""

    changed = QtCore.pyqtSignal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setFixedSize(PAD_SIDE, PAD_SIDE)
        self.setAttribute(QtCore.Qt.WA_OpaquePaintEvent)
        self.setCursor(QtCore.Qt.CrossCursor)
        self.setToolTip("Draw a digit with the mouse or a pen; Ctrl+Z undoes a stroke")
        self.strokes: list[list[tuple[float, float, float]]] = []  # (x, y, pressure)
        self.canvas = QtGui.QImage(PAD_SIDE, PAD_SIDE, QtGui.QImage.Format_Grayscale8)
        self.canvas.fill(0)
        self._drawing = False

    # --- strokes --------------------------------------------------------------------------------

    def _begin(self, point: QtCore.QPointF, pressure: float) -> None:
        self._drawing = True
        self.strokes.append([(point.x(), point.y(), pressure)])
        self._paint_segment(self.strokes[-1], len(self.strokes[-1]) - 1)
        self.changed.emit()

    def _extend(self, point: QtCore.QPointF, pressure: float) -> None:
        if not self._drawing:
            return
        stroke = self.strokes[-1]
        stroke.append((point.x(), point.y(), pressure))
        self._paint_segment(stroke, len(stroke) - 1)
        self.changed.emit()

    def _end(self) -> None:
        self._drawing = False

    def _paint_segment(self, stroke, i: int) -> None:
        painter = QtGui.QPainter(self.canvas)
        painter.setRenderHint(QtGui.QPainter.Antialiasing)
        x, y, pressure = stroke[i]
        pen = QtGui.QPen(QtGui.QColor(255, 255, 255), PEN_WIDTH * (0.35 + 0.65 * pressure), QtCore.Qt.SolidLine,
                         QtCore.Qt.RoundCap, QtCore.Qt.RoundJoin)
        painter.setPen(pen)
        if i == 0:
            painter.drawPoint(QtCore.QPointF(x, y))
        else:
            painter.drawLine(QtCore.QPointF(*stroke[i - 1][:2]), QtCore.QPointF(x, y))
        painter.end()
        self.update()

    def undo(self) -> None:
        if not self.strokes:
            return
        self.strokes.pop()
        self._drawing = False
        self.canvas.fill(0)
        for stroke in self.strokes:
            for i in range(len(stroke)):
                self._paint_segment(stroke, i)
        self.update()
        self.changed.emit()

    def clear(self) -> None:
        if not self.strokes:
            return
        self.strokes.clear()
        self._drawing = False
        self.canvas.fill(0)
        self.update()
        self.changed.emit()

    def ink(self) -> np.ndarray:
        """The canvas as float32 (280, 280) in [0, 1], bright ink on black."""
        image = self.canvas
        bits = image.constBits()
        bits.setsize(image.bytesPerLine() * image.height())
        rows = np.frombuffer(bits, dtype=np.uint8).reshape(image.height(), image.bytesPerLine())
        return rows[:, : image.width()].astype(np.float32) / np.float32(255.0)

    # --- events ---------------------------------------------------------------------------------

    def mousePressEvent(self, event):
        if event.button() == QtCore.Qt.LeftButton:
            self._begin(QtCore.QPointF(event.pos()), 1.0)

    def mouseMoveEvent(self, event):
        self._extend(QtCore.QPointF(event.pos()), 1.0)  # between a press and its release only

    def mouseReleaseEvent(self, event):
        if event.button() == QtCore.Qt.LeftButton:
            self._end()

    def tabletEvent(self, event):
        """A pen: its pressure sets the stroke's width. Accepted, so no mouse event follows it."""
        kind = event.type()
        pressure = float(np.clip(event.pressure(), 0.0, 1.0))
        if kind == QtCore.QEvent.TabletPress:
            self._begin(event.posF(), pressure)
        elif kind == QtCore.QEvent.TabletMove and pressure > 0:
            self._extend(event.posF(), pressure)
        elif kind == QtCore.QEvent.TabletRelease:
            self._end()
        event.accept()

    def paintEvent(self, event):
        painter = QtGui.QPainter(self)
        shown = self.canvas.copy()
        shown.invertPixels()  # dark ink on light paper, as one writes
        painter.drawImage(0, 0, shown)
        painter.setPen(QtGui.QPen(QtGui.QColor("#b0b8c8"), 1, QtCore.Qt.DashLine))
        margin = PAD_SIDE // 7  # MNIST's 4-pixel margin around its 20-pixel box, at this scale
        painter.drawRect(margin, margin, PAD_SIDE - 2 * margin, PAD_SIDE - 2 * margin)
        painter.setPen(QtGui.QPen(QtGui.QColor("#7a869a"), 1))
        painter.drawRect(0, 0, PAD_SIDE - 1, PAD_SIDE - 1)
        if not self.strokes:
            painter.setPen(QtGui.QColor("#8a94a6"))
            painter.drawText(self.rect(), QtCore.Qt.AlignCenter, "draw a digit here")
        painter.end()


class DrawView(QtWidgets.QWidget):
    """The pad, the 28x28 digit the model sees, its ten probabilities and a saliency map."""

    show_features = QtCore.pyqtSignal(object)  # the uint8 (28, 28) digit
    attack_digit = QtCore.pyqtSignal(object)  # the uint8 (28, 28) digit

    def __init__(self, service: ModelService, parent=None):
        super().__init__(parent)
        self.service = service
        self.digit: np.ndarray | None = None  # uint8 (28, 28): what the model sees
        self.probs: np.ndarray | None = None
        self.class_names = tuple(str(c) for c in range(10))
        layout = QtWidgets.QHBoxLayout(self)

        left = QtWidgets.QVBoxLayout()
        left.addWidget(QtWidgets.QLabel("<b>Draw a digit</b> (mouse or pen)"))
        self.pad = DrawingPad()
        left.addWidget(self.pad, 0, QtCore.Qt.AlignHCenter)
        buttons = QtWidgets.QHBoxLayout()
        self.undo_button = QtWidgets.QPushButton("Undo stroke")
        self.undo_button.setShortcut(QtGui.QKeySequence.Undo)
        self.undo_button.setToolTip("Remove the last stroke (Ctrl+Z)")
        self.clear_button = QtWidgets.QPushButton("Clear")
        buttons.addWidget(self.undo_button)
        buttons.addWidget(self.clear_button)
        left.addLayout(buttons)
        more = QtWidgets.QHBoxLayout()
        self.features_button = QtWidgets.QPushButton("Feature maps…")
        self.features_button.setToolTip("Open this digit in the feature-map viewer")
        self.attack_button = QtWidgets.QPushButton("Attack it…")
        self.attack_button.setToolTip("Open this digit in the Adversarial tab")
        more.addWidget(self.features_button)
        more.addWidget(self.attack_button)
        left.addLayout(more)
        left.addStretch(1)
        layout.addLayout(left)

        middle = QtWidgets.QVBoxLayout()
        self.input_pane = ImagePane("What the model sees (28x28)", side=200)
        middle.addWidget(self.input_pane, 1)
        self.verdict = QtWidgets.QLabel()
        font = self.verdict.font()
        font.setPointSizeF(font.pointSizeF() * 1.6)
        self.verdict.setFont(font)
        self.verdict.setAlignment(QtCore.Qt.AlignCenter)
        middle.addWidget(self.verdict)
        self.bars = ProbabilityBars()
        middle.addWidget(self.bars, 1)
        layout.addLayout(middle, 1)

        right = QtWidgets.QVBoxLayout()
        self.saliency = SaliencyPanel(service, "draw-saliency", side=200)
        right.addWidget(self.saliency, 1)
        self.status = QtWidgets.QLabel()
        self.status.setWordWrap(True)
        right.addWidget(self.status)
        layout.addLayout(right, 1)

        self._stale = True
        self._timer = QtCore.QTimer(self, singleShot=True, interval=UPDATE_DELAY_MS, timeout=self.update_prediction)
        self.pad.changed.connect(self._timer.start)
        self.undo_button.clicked.connect(self.pad.undo)
        self.clear_button.clicked.connect(self.pad.clear)
        self.features_button.clicked.connect(lambda: self.digit is not None and self.show_features.emit(self.digit))
        self.attack_button.clicked.connect(lambda: self.digit is not None and self.attack_digit.emit(self.digit))
        service.run_changed.connect(self._run_changed)
        service.model_changed.connect(self.status.setText)  # a method: disconnected when the label goes
        self.update_prediction()

    def _run_changed(self, run) -> None:
        if run is not None:
            self.class_names = run.dataset.class_names
            self.bars.set_class_names(self.class_names)
            self.saliency.set_class_names(self.class_names)
        self.update_prediction()

    def showEvent(self, event):
        super().showEvent(event)
        if self._stale:
            self.update_prediction()

    def update_prediction(self) -> None:
        """Prepare the drawn digit and ask the model about it (the answer comes later).

        While the tab is hidden nothing is asked (the model is built only for a view that shows it)."""
        self._timer.stop()
        self._stale = not self.isVisible()
        if self._stale:
            self.service.forget("draw-probs")
            return
        try:
            digit = prepare_digit(self.pad.ink()) if self.pad.strokes else None
        except NoInkError:
            digit = None
        self.digit = digit
        for button in (self.undo_button, self.clear_button):
            button.setEnabled(bool(self.pad.strokes))
        for button in (self.features_button, self.attack_button):
            button.setEnabled(digit is not None)
        if digit is None:
            self.service.forget("draw-probs")
            self.probs = None
            self.input_pane.clear("nothing drawn yet")
            self.bars.set_probs(None)
            self.verdict.setText("")
            self.saliency.set_image(None)
            return
        self.input_pane.show_digit(digit, "cropped, scaled to 20 px, centred by mass")
        self.service.request("draw-probs", lambda lab: lab.probs(digit), self._show_probs, self._failed)
        self.saliency.set_image(digit)

    def _show_probs(self, probs: np.ndarray) -> None:
        self.probs = np.asarray(probs)
        predicted = int(np.argmax(probs))
        self.bars.set_probs(probs)
        self.verdict.setText(f"<b>{self.class_names[predicted]}</b> ({probs[predicted]:.0%})")
        self.status.setText("")

    def _failed(self, message: str) -> None:
        self.probs = None
        self.bars.set_probs(None)
        self.verdict.setText("")
        self.status.setText(message)
