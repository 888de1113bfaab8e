"""The confusion matrix as a 10x10 heat map with counts; clicking a cell filters the gallery to it."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtCore, QtWidgets


class ConfusionView(QtWidgets.QWidget):
    cell_clicked = QtCore.pyqtSignal(int, int)  # true class, predicted class

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QtWidgets.QVBoxLayout(self)
        self.caption = QtWidgets.QLabel("Rows: true class. Columns: predicted class. Click a cell to see its images.")
        layout.addWidget(self.caption)
        self.plot = pg.PlotWidget(background="w")
        self.plot.setAspectLocked(True)
        self.plot.invertY(True)
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        self.plot.setMenuEnabled(False)
        self.image = pg.ImageItem()
        self.image.setColorMap(pg.colormap.get("CET-L18"))  # white to dark blue
        self.plot.addItem(self.image)
        self.plot.setLabel("left", "true class")
        self.plot.setLabel("bottom", "predicted class")
        self.texts = [[pg.TextItem(anchor=(0.5, 0.5)) for _ in range(10)] for _ in range(10)]
        for r in range(10):
            for c in range(10):
                self.texts[r][c].setPos(c + 0.5, r + 0.5)
                self.plot.addItem(self.texts[r][c])
        self.accuracy_texts = [pg.TextItem(anchor=(0, 0.5), color="#333333") for _ in range(10)]
        for r, item in enumerate(self.accuracy_texts):
            item.setPos(10.15, r + 0.5)
            self.plot.addItem(item)
        self.plot.setXRange(0, 11.6, padding=0)
        self.plot.setYRange(0, 10, padding=0.02)
        layout.addWidget(self.plot, 1)
        self.plot.scene().sigMouseClicked.connect(self._clicked)
        self.matrix = np.zeros((10, 10), dtype=np.int64)
        self.set_class_names(tuple(str(i) for i in range(10)))

    def set_class_names(self, names):
        ticks = [(i + 0.5, name[:10]) for i, name in enumerate(names)]
        self.plot.getAxis("bottom").setTicks([ticks])
        self.plot.getAxis("left").setTicks([ticks])

    def set_matrix(self, matrix: np.ndarray) -> None:
        self.matrix = np.asarray(matrix)
        shown = np.log1p(self.matrix.astype(np.float32))  # the diagonal would drown every mistake
        self.image.setImage(shown, levels=(0, max(1.0, float(shown.max()))))
        self.image.setRect(QtCore.QRectF(0, 0, 10, 10))
        high = shown.max() or 1.0
        totals = self.matrix.sum(axis=1)
        for r in range(10):
            for c in range(10):
                count = int(self.matrix[r, c])
                color = "#ffffff" if shown[r, c] > 0.55 * high else "#222222"
                self.texts[r][c].setColor(color)
                self.texts[r][c].setText(str(count) if count else "")
            accuracy = self.matrix[r, r] / totals[r] if totals[r] else float("nan")
            self.accuracy_texts[r].setText("" if np.isnan(accuracy) else f"{accuracy:.1%}")

    def cell_at(self, scene_pos) -> tuple[int, int] | None:
        point = self.plot.getPlotItem().vb.mapSceneToView(scene_pos)
        row, col = int(np.floor(point.y())), int(np.floor(point.x()))
        return (row, col) if 0 <= row < 10 and 0 <= col < 10 else None

    def _clicked(self, event):
        cell = self.cell_at(event.scenePos())
        if cell is not None:
            self.cell_clicked.emit(*cell)
