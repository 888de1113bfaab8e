"""Live train/test error and cost plots, one pair of curves per run, created once, fed by setData."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtCore

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22"]


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
        self.ci.layout.setRowStretchFactor(0, 3)
        self.ci.layout.setRowStretchFactor(1, 2)
        self.curves: dict[int, dict[str, pg.PlotDataItem]] = {}

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

    def set_run_visible(self, key: int, visible: bool) -> None:
        for curve in self.curves.get(key, {}).values():
            curve.setVisible(visible)

    def remove_run(self, key: int) -> None:
        for name, curve in self.curves.pop(key, {}).items():
            plot = self.cost_plot if name == "cost" else self.error_plot
            plot.removeItem(curve)

    def set_log_scale(self, enabled: bool) -> None:
        self.error_plot.setLogMode(y=enabled)
        self.cost_plot.setLogMode(y=enabled)

    def export(self, path: str) -> None:
        """The whole figure as PNG or SVG, by the file's extension."""
        from pyqtgraph.exporters import ImageExporter, SVGExporter

        exporter = SVGExporter(self.scene()) if path.lower().endswith(".svg") else ImageExporter(self.scene())
        if isinstance(exporter, ImageExporter):
            exporter.parameters()["width"] = max(800, self.width())
        exporter.export(path)
