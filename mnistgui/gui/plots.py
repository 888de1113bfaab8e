"""Live error, cost and per-class plots, curves created once per run and fed by setData.

Each run has its train (dashed), test (solid) and, with a validation split, validation (dotted) error
curves, a star on its best validation epoch, and its cost. The notebook's published test curve can
be overlaid in grey; the selected run's per-class test error has a plot of its own.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtCore

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22"]
NOTEBOOK_LABEL = "notebook, test"


class TrainingPlot(pg.GraphicsLayoutWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setBackground("w")
        self.error_plot = self.addPlot(row=0, col=0, title="Error")
        self.error_plot.setLabel("left", "error", units="%")
        self.error_plot.setLabel("bottom", "epoch")
        self.error_plot.showGrid(x=True, y=True, alpha=0.3)
        self.error_legend = self.error_plot.addLegend(offset=(-10, 10))
        self.cost_plot = self.addPlot(row=1, col=0, title="Mean training cost")
        self.cost_plot.setLabel("bottom", "epoch")
        self.cost_plot.showGrid(x=True, y=True, alpha=0.3)
        self.cost_plot.setXLink(self.error_plot)
        colours = [pg.intColor(digit, hues=10) for digit in range(10)]
        # The digits' colours in the title, not a legend: a legend paints each entry in Python at every
        # repaint, which beside a compiling worker made repaints long.
        key = " ".join(f'<span style="color:{c.name()}"><b>{d}</b></span>' for d, c in enumerate(colours))
        self.class_plot = self.addPlot(row=2, col=0, title=f"Per-class test error of the selected run: {key}")
        self.class_plot.setLabel("left", "error", units="%")
        self.class_plot.setLabel("bottom", "epoch")
        self.class_plot.showGrid(x=True, y=True, alpha=0.3)
        self.class_plot.setXLink(self.error_plot)
        self.class_curves = [self.class_plot.plot([], [], pen=pg.mkPen(colour, width=1.5)) for colour in colours]
        self.ci.layout.setRowStretchFactor(0, 3)
        self.ci.layout.setRowStretchFactor(1, 2)
        self.ci.layout.setRowStretchFactor(2, 2)
        self.curves: dict[int, dict[str, pg.PlotDataItem]] = {}
        # The notebook ran 100 epochs: its curve must not stretch the axes of a 10-epoch run.
        # Unnamed, so the plot leaves it out of the legend: `show_notebook` adds it there only while it is
        # shown (a legend keeps an entry for a hidden item, drawn as an odd crossed-out sample).
        self.notebook_curve = pg.PlotDataItem([], [], pen=pg.mkPen((140, 140, 140), width=2, style=QtCore.Qt.DashDotLine))
        self.notebook_curve.setVisible(False)
        self.error_plot.addItem(self.notebook_curve, ignoreBounds=True)
        self.notebook_model: str | None = None

    def _curves_for(self, key: int, name: str, color: str):
        if key not in self.curves:
            train_pen = pg.mkPen(color, width=2, style=QtCore.Qt.DashLine)
            test_pen = pg.mkPen(color, width=2)
            self.curves[key] = {
                "train": self.error_plot.plot([], [], pen=train_pen, symbol="o", symbolSize=5,
                                              symbolBrush=color, name=f"{name} train"),
                "test": self.error_plot.plot([], [], pen=test_pen, symbol="s", symbolSize=5,
                                             symbolBrush=color, name=f"{name} test"),
                "cost": self.cost_plot.plot([], [], pen=test_pen, symbol="o", symbolSize=4, symbolBrush=color),
            }
        return self.curves[key]

    def update_run(self, key: int, name: str, color: str, history) -> None:
        curves = self._curves_for(key, name, color)
        epochs = np.array([r.epoch for r in history], dtype=float)
        train = np.array([r.train_error for r in history], dtype=float) * 100
        test = np.array([r.test_error for r in history], dtype=float) * 100
        cost = np.array([r.cost for r in history], dtype=float)
        finite = np.isfinite(train)
        curves["train"].setData(epochs[finite], train[finite])
        curves["test"].setData(epochs, test)
        finite = np.isfinite(cost)
        curves["cost"].setData(epochs[finite], cost[finite])
        val = np.array([r.val_error for r in history], dtype=float) * 100
        finite = np.isfinite(val)
        if finite.any():  # made only for runs with a validation split: every item costs each repaint
            if "val" not in curves:
                curves["val"] = self.error_plot.plot([], [], pen=pg.mkPen(color, width=2, style=QtCore.Qt.DotLine),
                                                     name=f"{name} validation")
                curves["best"] = self.error_plot.plot([], [], pen=None, symbol="star", symbolSize=16,
                                                      symbolBrush=color, symbolPen="k")
            curves["val"].setData(epochs[finite], val[finite])
            best = int(np.nanargmin(val))  # the lowest validation error: the epoch early stopping restores
            curves["best"].setData([epochs[best]], [val[best]])

    def show_class_errors(self, history) -> None:
        """The per-class test error of one run, epoch by epoch (which digits are learnt late)."""
        epochs = np.array([r.epoch for r in history], dtype=float)
        accuracy = np.array([r.class_accuracy for r in history], dtype=float).reshape(-1, 10)
        for digit, curve in enumerate(self.class_curves):
            finite = np.isfinite(accuracy[:, digit])
            curve.setData(epochs[finite], 100 * (1 - accuracy[finite, digit]))

    def show_notebook(self, model: str | None) -> None:
        """Overlay the notebook's published test error of `model` (None hides it)."""
        from ..core.notebook import notebook_test_errors

        errors = notebook_test_errors(model) if model else []
        self.notebook_model = model if errors else None
        self.notebook_curve.setData(np.arange(1, len(errors) + 1, dtype=float), np.array(errors, dtype=float) * 100)
        self.notebook_curve.setVisible(bool(errors))
        in_legend = self.error_legend.getLabel(self.notebook_curve) is not None
        if errors and not in_legend:
            self.error_legend.addItem(self.notebook_curve, NOTEBOOK_LABEL)
        elif not errors and in_legend:
            self.error_legend.removeItem(self.notebook_curve)

    def set_run_visible(self, key: int, visible: bool) -> None:
        for curve in self.curves.get(key, {}).values():
            curve.setVisible(visible)

    def remove_run(self, key: int) -> None:
        for name, curve in self.curves.pop(key, {}).items():
            plot = self.cost_plot if name == "cost" else self.error_plot
            plot.removeItem(curve)

    def set_log_scale(self, enabled: bool) -> None:
        for plot in (self.error_plot, self.cost_plot, self.class_plot):
            plot.setLogMode(y=enabled)

    def export(self, path: str) -> None:
        """The whole figure as PNG or SVG, by the file's extension."""
        from pyqtgraph.exporters import ImageExporter, SVGExporter

        exporter = SVGExporter(self.scene()) if path.lower().endswith(".svg") else ImageExporter(self.scene())
        if isinstance(exporter, ImageExporter):
            exporter.parameters()["width"] = max(800, self.width())
        exporter.export(path)
