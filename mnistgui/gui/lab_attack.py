"""The Adversarial tab: attack one digit live, and the whole test set, eps by eps.

Above, one digit (a test digit or a drawn one): the eps slider and the method (FGSM or PGD) ask the
model service for the adversarial image, and the view shows it with the perturbation (amplified,
blue-white-red), the probabilities before and after, and the adversarial image's saliency. Below,
the test accuracy against eps for the selected run, computed by a `CurveWorker` thread that builds
its own model and attack (with progress and cancel), the curves of earlier runs overlaid, and a
gallery of the adversarial examples that fooled the model.
"""

from __future__ import annotations

import csv
import math
import traceback

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtCore, QtGui, QtWidgets

from ..core.attacks import AttackCancelled, AttackReport, as_pixels
from ..core.errors import MnistguiError
from .gallery import DigitDetail
from .lab_common import ImagePane, ModelService, ProbabilityBars, RunSpec, SaliencyPanel
from .runs_panel import PALETTE
from .worker import describe, start_detached

EPS_STEPS = 100  # the slider's positions from 0 to MAX_EPS
MAX_EPS = 0.5
DEFAULT_EPS = (0.0, 0.02, 0.05, 0.08, 0.1, 0.15, 0.2, 0.25, 0.3)
DEFAULT_CURVE_IMAGES = 1000
FOOLED_KEPT = 64  # fooled examples kept per eps for the gallery
PGD_STEPS = 20
METHOD_TITLES = {"fgsm": "FGSM", "pgd": "PGD"}


def parse_eps(text: str) -> list[float]:
    """'0, 0.05 0.1' -> [0.0, 0.05, 0.1]; raises ValueError naming the bad value."""
    values = []
    for part in text.replace(",", " ").split():
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"{part!r} is not a number") from None
        if not math.isfinite(value) or not 0 <= value <= 1:
            raise ValueError(f"eps {part} is outside [0, 1] (pixels are in [0, 1])")
        values.append(value)
    if not values:
        raise ValueError("give at least one eps, e.g. 0, 0.1, 0.2")
    return sorted(set(values))


def attack_one(lab, image: np.ndarray, label: int | None, method: str, eps: float, steps: int) -> dict:
    """One digit attacked at `eps` (the service's thread). `label` None: away from the predicted class."""
    if lab.attacker is None:
        raise MnistguiError("nearest neighbours has no gradient to follow: attack a trained model")
    x = as_pixels(np.asarray(image).reshape(1, -1))
    clean = lab.attacker.probs(x)[0]
    aim = int(np.argmax(clean)) if label is None else int(label)
    adversarial = lab.attacker.attack(method, x, np.array([aim]), eps, steps=steps)
    return {"x": x[0], "adversarial": adversarial[0], "clean_probs": clean,
            "probs": lab.attacker.probs(adversarial)[0], "aim": aim, "eps": eps, "method": method}


class CurveWorker(QtCore.QThread):
    """Accuracy under attack at each eps, in its own thread with its own model and compiled attack."""

    stage = QtCore.pyqtSignal(str)
    progress = QtCore.pyqtSignal(int, int)
    done = QtCore.pyqtSignal(object)  # AttackReport
    cancelled = QtCore.pyqtSignal(object)  # the AttackReport of the budgets finished
    failed = QtCore.pyqtSignal(str)

    def __init__(self, spec: RunSpec, images: np.ndarray, labels: np.ndarray, eps_values, method: str,
                 steps: int = PGD_STEPS):
        super().__init__()
        self.spec, self.images, self.labels = spec, images, labels
        self.eps_values, self.method, self.steps = list(eps_values), method, steps
        self.stop_requested = False

    def cancel(self) -> None:
        self.stop_requested = True

    def run(self):
        from ..core.attacks import Attacker
        from ..core.workspace import build_model

        try:
            self.stage.emit("compiling the attack…")
            spec = self.spec
            attacker = Attacker(build_model(spec.config, spec.history, spec.state))
            if self.stop_requested:
                raise AttackCancelled(AttackReport(self.method, [], cancelled=True))
            self.stage.emit("attacking…")
            report = attacker.accuracy_under_attack(
                self.images, self.labels, self.eps_values, self.method, steps=self.steps,
                progress=lambda done, total: self.progress.emit(done, total),
                cancel=lambda: self.stop_requested, keep_fooled=FOOLED_KEPT)
        except AttackCancelled as exc:
            self.cancelled.emit(exc.report)
        except Exception as exc:  # a message for the user, never a crash
            if not isinstance(exc, MnistguiError):
                traceback.print_exc()
            self.failed.emit(describe(exc))
        else:
            self.done.emit(report)


class AttackView(QtWidgets.QWidget):
    """One digit attacked live, and the accuracy-vs-eps curves with the examples that fooled the model."""

    curve_finished = QtCore.pyqtSignal(object)  # the AttackReport, also when cancelled

    def __init__(self, service: ModelService, parent=None):
        super().__init__(parent)
        self.service = service
        self.run = None
        self.class_names = tuple(str(c) for c in range(10))
        self.drawn: np.ndarray | None = None  # uint8 (28, 28)
        self.live: dict | None = None  # the shown attack_one result
        self.curves: dict[tuple, dict] = {}  # (run key, epochs, method) -> eps, accuracy, name, colour
        self.curve_items: dict[tuple, pg.PlotDataItem] = {}
        self.report: AttackReport | None = None
        self.report_key: tuple | None = None
        self.worker: CurveWorker | None = None
        self.detail: DigitDetail | None = None
        self.launch = start_detached  # how the curve's thread is started (the window tracks it)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(self._build_controls())
        splitter = QtWidgets.QSplitter(QtCore.Qt.Vertical)
        for part in (self._build_live(), self._build_curve()):
            holder = QtWidgets.QWidget()
            part.setContentsMargins(0, 0, 0, 0)
            holder.setLayout(part)
            splitter.addWidget(holder)
        splitter.setSizes([400, 330])
        splitter.setChildrenCollapsible(False)
        layout.addWidget(splitter, 1)
        self._stale = True
        self._timer = QtCore.QTimer(self, singleShot=True, interval=15, timeout=self.update_attack)
        service.run_changed.connect(self.set_run)
        service.model_changed.connect(self._model_status)  # a method: disconnected when this view goes
        self.set_run(service.run)

    def _model_status(self, text: str) -> None:
        if text:
            self.live_status.setText(text)

    # --- construction -------------------------------------------------------------------------------

    def _build_controls(self):
        row = QtWidgets.QHBoxLayout()
        self.source_box = QtWidgets.QComboBox()
        self.source_box.addItem("test digit", "test")
        self.source_box.addItem("drawn digit", "drawn")
        self.index_spin = QtWidgets.QSpinBox()
        self.index_spin.setPrefix("#")
        self.method_box = QtWidgets.QComboBox()
        for key, title in METHOD_TITLES.items():
            self.method_box.addItem(title, key)
        self.method_box.setToolTip("FGSM: one signed gradient step of eps. PGD: 20 projected steps inside the eps-box.")
        self.steps_spin = QtWidgets.QSpinBox()
        self.steps_spin.setRange(1, 200)
        self.steps_spin.setValue(PGD_STEPS)
        self.steps_spin.setSuffix(" steps")
        self.eps_slider = QtWidgets.QSlider(QtCore.Qt.Horizontal)
        self.eps_slider.setRange(0, EPS_STEPS)
        self.eps_slider.setValue(20)
        self.eps_slider.setToolTip("The largest change of any pixel (pixels in [0, 1])")
        self.eps_label = QtWidgets.QLabel()
        self.eps_label.setFixedWidth(self.eps_label.fontMetrics().horizontalAdvance("0.500 (127.5 grey levels)") + 8)
        for widget in (QtWidgets.QLabel("Attack"), self.source_box, self.index_spin, QtWidgets.QLabel("with"),
                       self.method_box, self.steps_spin, QtWidgets.QLabel("eps")):
            row.addWidget(widget)
        row.addWidget(self.eps_slider, 1)
        row.addWidget(self.eps_label)
        self.source_box.currentIndexChanged.connect(self._source_changed)
        self.index_spin.valueChanged.connect(self._request)
        self.method_box.currentIndexChanged.connect(self._method_changed)
        self.steps_spin.valueChanged.connect(self._request)
        self.eps_slider.valueChanged.connect(self._request)
        self._method_changed()
        return row

    def _build_live(self):
        row = QtWidgets.QHBoxLayout()
        self.original_pane = ImagePane("Original", side=120)
        self.perturbation_pane = ImagePane("Perturbation ÷ eps", diverging=True, side=120)
        self.perturbation_pane.setToolTip("(adversarial − original) / eps: red brighter, blue darker, white unchanged")
        self.adversarial_pane = ImagePane("Adversarial", side=120)
        for pane in (self.original_pane, self.perturbation_pane, self.adversarial_pane):
            row.addWidget(pane, 1)
        middle = QtWidgets.QVBoxLayout()
        self.verdict = QtWidgets.QLabel()
        self.verdict.setAlignment(QtCore.Qt.AlignCenter)
        self.verdict.setWordWrap(True)  # a long verdict wraps rather than widening the window
        middle.addWidget(self.verdict)
        self.bars = ProbabilityBars()
        self.bars.setToolTip("Bars: on the adversarial image. Dashed outlines: on the original.")
        middle.addWidget(self.bars, 1)
        key = QtWidgets.QLabel("bars: adversarial · dashed: original")
        key.setStyleSheet("color: #555555")
        key.setAlignment(QtCore.Qt.AlignCenter)
        key.setWordWrap(True)
        middle.addWidget(key)
        self.live_status = QtWidgets.QLabel()
        self.live_status.setWordWrap(True)
        middle.addWidget(self.live_status)
        row.addLayout(middle, 2)
        self.saliency = SaliencyPanel(self.service, "attack-saliency", side=120)
        self.saliency.setToolTip("Saliency of the adversarial image")
        row.addWidget(self.saliency, 1)
        return row

    def _build_curve(self):
        column = QtWidgets.QVBoxLayout()
        controls = QtWidgets.QHBoxLayout()
        self.eps_edit = QtWidgets.QLineEdit(", ".join(f"{e:g}" for e in DEFAULT_EPS))
        self.eps_edit.setMinimumWidth(160)
        self.eps_edit.setCursorPosition(0)
        self.eps_edit.editingFinished.connect(lambda: self.eps_edit.setCursorPosition(0))
        self.eps_edit.setToolTip("The budgets to attack at, separated by commas or spaces, in [0, 1]")
        self.images_spin = QtWidgets.QSpinBox()
        self.images_spin.setRange(10, 10_000)
        self.images_spin.setSingleStep(500)
        self.images_spin.setValue(DEFAULT_CURVE_IMAGES)
        self.images_spin.setSuffix(" test images")
        self.compute_button = QtWidgets.QPushButton("Compute the curve")
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QtWidgets.QProgressBar()
        # Changes in the curve's controls must not re-lay out the tab: that repaints every plot.
        self.progress.setFixedWidth(160)
        policy = self.progress.sizePolicy()
        policy.setRetainSizeWhenHidden(True)
        self.progress.setSizePolicy(policy)
        self.progress.hide()
        self.curve_status = QtWidgets.QLabel()
        self.export_csv_button = QtWidgets.QPushButton("CSV…")
        self.export_png_button = QtWidgets.QPushButton("PNG…")
        self.export_csv_button.setToolTip("Export every curve as CSV")
        self.export_png_button.setToolTip("Export the plot as PNG")
        # Its text changes while the curve is computed: a fixed size keeps that from re-laying out the tab.
        self.curve_status.setSizePolicy(QtWidgets.QSizePolicy.Ignored, QtWidgets.QSizePolicy.Fixed)
        controls.addWidget(QtWidgets.QLabel("<b>Accuracy against eps</b> at"))
        controls.addWidget(self.eps_edit, 1)
        for widget in (QtWidgets.QLabel("on"), self.images_spin, self.compute_button, self.cancel_button):
            controls.addWidget(widget)
        column.addLayout(controls)
        status = QtWidgets.QHBoxLayout()
        status.addWidget(self.progress)
        status.addWidget(self.curve_status, 1)
        status.addWidget(QtWidgets.QLabel("Export"))
        status.addWidget(self.export_csv_button)
        status.addWidget(self.export_png_button)
        column.addLayout(status)
        row = QtWidgets.QHBoxLayout()
        self.plot = pg.PlotWidget(background="w")
        self.plot.setLabel("bottom", "eps (largest pixel change, pixels in [0, 1])")
        self.plot.setLabel("left", "test accuracy (%)")
        self.plot.getAxis("bottom").enableAutoSIPrefix(False)
        self.plot.showGrid(x=True, y=True, alpha=0.3)
        self.plot.setYRange(0, 100, padding=0.02)
        self.plot.addLegend(offset=(-10, 10), labelTextSize="8pt")
        row.addWidget(self.plot, 3)
        fooled = QtWidgets.QVBoxLayout()
        header = QtWidgets.QHBoxLayout()
        self.fooled_title = QtWidgets.QLabel("Fooled examples")
        self.fooled_eps_box = QtWidgets.QComboBox()
        self.fooled_eps_box.setToolTip("Examples the attack turned from right to wrong at this eps")
        header.addWidget(self.fooled_title, 1)
        header.addWidget(self.fooled_eps_box)
        fooled.addLayout(header)
        self.fooled_list = QtWidgets.QListWidget()
        self.fooled_list.setViewMode(QtWidgets.QListView.IconMode)
        self.fooled_list.setIconSize(QtCore.QSize(56, 56))
        self.fooled_list.setGridSize(QtCore.QSize(76, 80))
        self.fooled_list.setUniformItemSizes(True)
        self.fooled_list.setResizeMode(QtWidgets.QListView.Adjust)
        self.fooled_list.setMovement(QtWidgets.QListView.Static)
        self.fooled_list.setToolTip("Click an example to see it large, with its saliency")
        fooled.addWidget(self.fooled_list, 1)
        row.addLayout(fooled, 2)
        column.addLayout(row, 1)
        self.compute_button.clicked.connect(self.compute_curve)
        self.cancel_button.clicked.connect(self.cancel_curve)
        self.export_csv_button.clicked.connect(lambda: self.export_csv())
        self.export_png_button.clicked.connect(lambda: self.export_png())
        self.fooled_eps_box.currentIndexChanged.connect(self._show_fooled)
        self.fooled_list.itemClicked.connect(self._fooled_clicked)
        return column

    # --- the run --------------------------------------------------------------------------------

    def set_run(self, run) -> None:
        self.run = run
        if run is not None:
            self.class_names = run.dataset.class_names
            self.bars.set_class_names(self.class_names)
            self.saliency.set_class_names(self.class_names)
            count = len(run.dataset.test_labels)
            self.index_spin.setRange(0, max(0, count - 1))
            self.images_spin.setMaximum(max(10, count))
        self._update_enabled()
        self._redraw_curves()
        self._request()

    def _update_enabled(self) -> None:
        running = self.worker is not None
        have_model = self.service.spec is not None
        self.compute_button.setEnabled(have_model and not running and self.service.spec.config.is_trainable)
        self.cancel_button.setEnabled(running)

    # --- one digit, live ------------------------------------------------------------------------------

    @property
    def eps(self) -> float:
        return self.eps_slider.value() * MAX_EPS / EPS_STEPS

    def set_drawn(self, digit: np.ndarray) -> None:
        """Attack a drawn digit (uint8 28x28); the view switches its source to it."""
        self.drawn = np.array(digit, dtype=np.uint8).reshape(28, 28)
        self.source_box.setCurrentIndex(self.source_box.findData("drawn"))
        self._request()

    def _source_changed(self) -> None:
        self.index_spin.setEnabled(self.source_box.currentData() == "test")
        self._request()

    def _method_changed(self) -> None:
        self.steps_spin.setVisible(self.method_box.currentData() == "pgd")
        self._request()

    def source(self) -> tuple[np.ndarray | None, int | None, str]:
        """(image, true label or None, caption) of the digit attacked."""
        if self.source_box.currentData() == "drawn":
            if self.drawn is None:
                return None, None, "draw a digit in the Draw tab first"
            return self.drawn, None, "drawn digit"
        if self.run is None:
            return None, None, "train or open a model first"
        index = self.index_spin.value()
        dataset = self.run.dataset
        label = int(dataset.test_labels[index])
        return dataset.test_images[index], label, f"test #{index}, true {self.class_names[label]}"

    def _request(self) -> None:
        grey = round(self.eps * 255, 1)
        self.eps_label.setText(f"{self.eps:.3f} ({grey:g} grey levels)")
        if hasattr(self, "bars"):
            self._timer.start()

    def showEvent(self, event):
        super().showEvent(event)
        if self._stale:
            self.update_attack()

    def update_attack(self) -> None:
        """Ask for the digit attacked now; while the tab is hidden, only once it shows."""
        self._timer.stop()
        self._stale = not self.isVisible()
        if self._stale:
            self.service.forget("attack-live")
            return
        image, label, caption = self.source()
        self.original_pane.show_digit(image, caption)
        if image is None:
            self.service.forget("attack-live")
            self._clear_live(caption)
            return
        method, eps, steps = self.method_box.currentData(), self.eps, self.steps_spin.value()
        self.service.request("attack-live", lambda lab: attack_one(lab, image, label, method, eps, steps),
                             self._show_attack, self._clear_live)

    def _clear_live(self, message: str) -> None:
        self.live = None
        for pane in (self.perturbation_pane, self.adversarial_pane):
            pane.clear()
        self.bars.set_probs(None)
        self.verdict.setText("")
        self.live_status.setText(message)
        self.saliency.set_image(None)

    def _show_attack(self, result: dict) -> None:
        self.live = result
        x, adversarial, eps = result["x"], result["adversarial"], result["eps"]
        change = adversarial - x
        linf = float(np.abs(change).max())
        self.perturbation_pane.show_signed(change / eps if eps > 0 else np.zeros_like(change),
                                           f"largest change {linf:.3f}")
        clean, probs = result["clean_probs"], result["probs"]
        before, after = int(np.argmax(clean)), int(np.argmax(probs))
        self.adversarial_pane.show_digit(adversarial, f"{METHOD_TITLES[result['method']]}, eps {eps:.3f}")
        label = self.source()[1]
        self.bars.set_probs(probs, label, ghost=clean)
        names = self.class_names
        fooled = before != after
        colour = "#b71c1c" if fooled else "#1b5e20"
        self.verdict.setText(f"original: <b>{names[before]}</b> ({clean[before]:.0%}) → adversarial: "
                             f"<b style='color:{colour}'>{names[after]}</b> ({probs[after]:.0%})"
                             + ("  <b style='color:#b71c1c'>fooled</b>" if fooled else ""))
        self.live_status.setText("")
        self.saliency.set_image(adversarial)

    # --- the curve ------------------------------------------------------------------------------------

    def compute_curve(self) -> bool:
        """Start the accuracy-vs-eps computation for the selected run; False (with a message) if it cannot."""
        spec, run = self.service.spec, self.run
        if self.worker is not None or spec is None or run is None:
            return False
        try:
            eps_values = parse_eps(self.eps_edit.text())
        except ValueError as exc:
            self.curve_status.setText(f"<span style='color:#b71c1c'>{exc}</span>")
            return False
        count = min(self.images_spin.value(), len(run.dataset.test_labels))
        method, steps = self.method_box.currentData(), self.steps_spin.value()
        worker = CurveWorker(spec, run.dataset.test_images[:count], run.dataset.test_labels[:count], eps_values,
                             method, steps)
        worker.curve = ((spec.key, spec.epochs, method), f"{run.name}, {spec.epochs} ep, {METHOD_TITLES[method]}", run)
        # Bound methods only: PyQt disconnects them if this view goes before the worker ends.
        worker.stage.connect(self.curve_status.setText)
        worker.progress.connect(self._progress)
        worker.done.connect(self._curve_done)
        worker.cancelled.connect(self._curve_cancelled)
        worker.failed.connect(self._curve_failed)
        worker.finished.connect(self._worker_finished)
        self.worker = worker
        self.progress.setRange(0, 0)
        self.progress.show()
        self.curve_status.setText("starting…")
        self._update_enabled()
        self.launch(worker)
        return True

    def cancel_curve(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            self.curve_status.setText("cancelling…")

    def _progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, total)
        self.progress.setValue(done)

    def _worker_finished(self) -> None:
        self.worker = None
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.hide()
        self._update_enabled()

    def _curve_failed(self, message: str) -> None:
        self.curve_status.setText(f"<span style='color:#b71c1c'>failed: {message}</span>")

    def _curve_cancelled(self, report: AttackReport) -> None:
        self._curve_done(report, cancelled=True, worker=self.sender())

    def _curve_done(self, report: AttackReport, cancelled: bool = False, worker=None) -> None:
        key, name, run = (worker or self.sender()).curve
        results = report.results
        if results:
            self.curves[key] = {"name": name, "model": run.config.model, "method": report.method,
                                "eps": np.array([r.eps for r in results]),
                                "accuracy": np.array([r.accuracy for r in results]),
                                "n_images": results[0].n_images, "colour": PALETTE[run.color_index % len(PALETTE)]}
            self.report, self.report_key = report, key
            self._fill_fooled()
        self._redraw_curves()
        if cancelled:
            self.curve_status.setText(f"cancelled after {len(results)} of the budgets")
        else:
            worst = results[-1]
            self.curve_status.setText(f"{METHOD_TITLES[report.method]} on {worst.n_images} images: clean "
                                      f"{worst.clean_accuracy:.1%}, at eps {worst.eps:g} {worst.accuracy:.1%}")
        self.curve_finished.emit(report)

    def _redraw_curves(self) -> None:
        for item in self.curve_items.values():
            self.plot.removeItem(item)
        self.curve_items.clear()
        current = self.service.run_key
        for key, curve in self.curves.items():
            mine = key[0] == current
            pen = pg.mkPen(curve["colour"], width=3 if mine else 1.5,
                           style=QtCore.Qt.SolidLine if curve["method"] == "fgsm" else QtCore.Qt.DashLine)
            item = self.plot.plot(curve["eps"], curve["accuracy"] * 100, pen=pen, name=curve["name"],
                                  symbol="o", symbolSize=6 if mine else 4, symbolBrush=curve["colour"])
            self.curve_items[key] = item

    # --- the fooled examples -------------------------------------------------------------------------

    def _fill_fooled(self) -> None:
        self.fooled_eps_box.blockSignals(True)
        self.fooled_eps_box.clear()
        for i, result in enumerate(self.report.results):
            if result.eps > 0:
                self.fooled_eps_box.addItem(f"eps {result.eps:g}: {len(result.fooled.indices)}", i)
        # The smallest budget that fools some: the least visible perturbations.
        chosen = next((k for k in range(self.fooled_eps_box.count())
                       if len(self.report.results[self.fooled_eps_box.itemData(k)].fooled.indices)), 0)
        self.fooled_eps_box.setCurrentIndex(chosen)
        self.fooled_eps_box.blockSignals(False)
        self._show_fooled()

    def _show_fooled(self) -> None:
        self.fooled_list.clear()
        index = self.fooled_eps_box.currentData()
        if self.report is None or index is None:
            return
        fooled = self.report.results[index].fooled
        names = self.class_names
        for k in range(len(fooled.indices)):
            pixels = np.round(fooled.adversarial[k].reshape(28, 28) * 255).astype(np.uint8)
            image = QtGui.QImage(pixels.data, 28, 28, 28, QtGui.QImage.Format_Grayscale8).copy()
            image.invertPixels()
            icon = QtGui.QIcon(QtGui.QPixmap.fromImage(image.scaled(56, 56)))
            p = fooled.probs[k]
            item = QtWidgets.QListWidgetItem(icon, f"{names[fooled.labels[k]][:4]}→{names[fooled.predictions[k]][:4]}")
            item.setData(QtCore.Qt.UserRole, k)
            item.setToolTip(f"test #{fooled.indices[k]}: true {names[fooled.labels[k]]}, "
                            f"taken for {names[fooled.predictions[k]]} ({p.max():.0%})")
            self.fooled_list.addItem(item)
        self.fooled_title.setText(f"Fooled examples ({len(fooled.indices)} kept)")

    def _fooled_clicked(self, item) -> None:
        self.open_fooled(int(item.data(QtCore.Qt.UserRole)))

    def open_fooled(self, k: int) -> DigitDetail:
        """The k-th fooled example of the shown eps, large, with its probabilities and saliency."""
        result = self.report.results[self.fooled_eps_box.currentData()]
        fooled = result.fooled
        adversarial = fooled.adversarial[k]
        saliency = SaliencyPanel(self.service, "detail-saliency", self.class_names)
        saliency.set_image(adversarial)
        self.detail = DigitDetail(None, adversarial * 255, int(fooled.labels[k]), fooled.probs[k], self.class_names,
                                  self, title=f"Test image {fooled.indices[k]} under {METHOD_TITLES[self.report.method]}, "
                                              f"eps {result.eps:g}", saliency=saliency)
        self.detail.show()
        return self.detail

    # --- export -----------------------------------------------------------------------------------

    def export_csv(self, path: str | None = None) -> bool:
        if not path:
            path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Export curves", "accuracy-vs-eps.csv", "CSV (*.csv)")
        if not path:
            return False
        try:
            with open(path, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["run", "epochs", "model", "method", "eps", "accuracy", "n_images"])
                for (key, epochs, method), curve in self.curves.items():
                    for eps, accuracy in zip(curve["eps"], curve["accuracy"]):
                        writer.writerow([key, epochs, curve["model"], method, f"{eps:g}", f"{accuracy:.6f}",
                                         curve["n_images"]])
        except OSError as exc:
            self._export_failed(path, exc.strerror or str(exc))
            return False
        return True

    def export_png(self, path: str | None = None) -> bool:
        if not path:
            path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Export plot", "accuracy-vs-eps.png", "PNG (*.png)")
        if not path:
            return False
        from pyqtgraph.exporters import ImageExporter

        try:
            exporter = ImageExporter(self.plot.plotItem)
            exporter.parameters()["width"] = max(800, self.plot.width())
            if exporter.export(path) is False or not QtCore.QFileInfo(path).exists():
                raise OSError("the image could not be written")
        except Exception as exc:  # exporters raise a variety of errors on unwritable paths
            self._export_failed(path, str(exc))
            return False
        return True

    def _export_failed(self, path: str, reason: str) -> None:
        box = QtWidgets.QMessageBox(QtWidgets.QMessageBox.Warning, "Not exported", f"cannot write {path}: {reason}",
                                    QtWidgets.QMessageBox.Ok, self)
        box.setAttribute(QtCore.Qt.WA_DeleteOnClose)
        box.open()
