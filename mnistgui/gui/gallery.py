"""The gallery of test digits: all of them, virtualised, filtered and sorted to hunt down mistakes.

A QListView in icon mode over a model that only knows an index array into the test set; tiles are
painted by a delegate on demand, so 10,000 images scroll as smoothly as 10.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtCore, QtGui, QtWidgets

TILE = 84  # pixels: a 56x56 digit and two lines of text
IMAGE_ROLE = QtCore.Qt.UserRole + 1
INDEX_ROLE = QtCore.Qt.UserRole + 2

SORTS = {"index": "test-set order", "confidence": "confidence, least sure first",
         "confidence_desc": "confidence, surest first", "loss": "loss, worst first"}


def select(labels, predictions, kind="all", true_class=None, predicted_class=None):
    """Indices of the test images that pass a filter; before any prediction only the true class filters."""
    if kind == "true":
        keep = labels == true_class
    elif predictions is None or kind == "all":
        keep = np.ones(len(labels), dtype=bool)
    elif kind == "misclassified":
        keep = labels != predictions
    elif kind == "predicted":
        keep = predictions == predicted_class
    else:  # "pair": one cell of the confusion matrix
        keep = (labels == true_class) & (predictions == predicted_class)
    return np.flatnonzero(keep)


def order(indices, probs, labels, sort="index"):
    if probs is None or sort == "index":
        return indices
    confidence = probs[indices].max(axis=1)
    if sort == "confidence":
        return indices[np.argsort(confidence, kind="stable")]
    if sort == "confidence_desc":
        return indices[np.argsort(-confidence, kind="stable")]
    losses = -np.log(np.clip(probs[indices, labels[indices]], 1e-12, 1.0))
    return indices[np.argsort(-losses, kind="stable")]


class GalleryModel(QtCore.QAbstractListModel):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.images = np.zeros((0, 28, 28), dtype=np.uint8)
        self.labels = np.zeros(0, dtype=np.int64)
        self.probs: np.ndarray | None = None
        self.class_names: tuple[str, ...] = tuple(str(i) for i in range(10))
        self.shown = np.zeros(0, dtype=np.int64)

    def set_data(self, images, labels, class_names):
        self.beginResetModel()
        self.images = np.ascontiguousarray(images.reshape(-1, 28, 28))
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = class_names
        self.probs = None
        self.shown = np.arange(len(self.labels))
        self.endResetModel()

    def set_probs(self, probs):
        self.probs = probs

    def set_shown(self, indices):
        self.beginResetModel()
        self.shown = np.asarray(indices, dtype=np.int64)
        self.endResetModel()

    @property
    def predictions(self):
        return None if self.probs is None else np.argmax(self.probs, axis=1)

    def rowCount(self, parent=QtCore.QModelIndex()):
        return 0 if parent.isValid() else len(self.shown)

    def data(self, index, role=QtCore.Qt.DisplayRole):
        if not index.isValid() or index.row() >= len(self.shown):
            return None
        i = int(self.shown[index.row()])
        if role == INDEX_ROLE:
            return i
        if role == QtCore.Qt.ToolTipRole:
            text = f"test image {i}: true {self.class_names[self.labels[i]]}"
            if self.probs is not None:
                p = self.probs[i]
                text += f", predicted {self.class_names[int(p.argmax())]} ({p.max():.1%})"
            return text
        return None


class TileDelegate(QtWidgets.QStyledItemDelegate):
    def __init__(self, model: GalleryModel, parent=None):
        super().__init__(parent)
        self.model = model

    def sizeHint(self, option, index):
        return QtCore.QSize(TILE, TILE + 8)

    def paint(self, painter, option, index):
        i = index.data(INDEX_ROLE)
        if i is None:
            return
        model = self.model
        rect = option.rect.adjusted(2, 2, -2, -2)
        wrong = model.probs is not None and int(model.probs[i].argmax()) != model.labels[i]
        painter.save()
        background = QtGui.QColor("#fde2e1") if wrong else QtGui.QColor("#ffffff")
        if option.state & QtWidgets.QStyle.State_Selected:
            background = QtGui.QColor("#cfe3ff")
        painter.fillRect(rect, background)
        pen = QtGui.QPen(QtGui.QColor("#d62728") if wrong else QtGui.QColor("#cccccc"), 3 if wrong else 1)
        painter.setPen(pen)
        painter.drawRect(rect)
        image = QtGui.QImage(model.images[i].data, 28, 28, 28, QtGui.QImage.Format_Grayscale8)
        image.invertPixels()  # dark ink on light paper reads best at this size
        side = 56
        target = QtCore.QRect(rect.center().x() - side // 2, rect.top() + 4, side, side)
        painter.drawImage(target, image)
        painter.setPen(QtGui.QColor("#222222"))
        font = painter.font()
        font.setPointSizeF(max(6.5, font.pointSizeF() * 0.8))
        painter.setFont(font)
        text_rect = QtCore.QRect(rect.left(), target.bottom() + 2, rect.width(), rect.bottom() - target.bottom() - 2)
        names = model.class_names
        if model.probs is None:
            text = f"#{i}  {names[model.labels[i]][:7]}"
        else:
            p = model.probs[i]
            text = f"{names[model.labels[i]][:5]}→{names[int(p.argmax())][:5]} {p.max():.0%}"
            if wrong:
                painter.setPen(QtGui.QColor("#b71c1c"))
        painter.drawText(text_rect, QtCore.Qt.AlignHCenter | QtCore.Qt.AlignTop, text)
        painter.restore()


class DigitDetail(QtWidgets.QDialog):
    """One image, large, with the probability of every class and, given a `saliency` panel, why.

    `index` None: not a test image as it is (an adversarial one): no way into its feature maps.
    """

    show_features = QtCore.pyqtSignal(int)

    def __init__(self, index, image, label, probs, class_names, parent=None, title=None, saliency=None):
        super().__init__(parent)
        self.setWindowTitle(title or f"Test image {index}")
        self.saliency = saliency
        layout = QtWidgets.QHBoxLayout(self)
        # Not pg.ImageView: it registers named ViewBoxes, whose destruction makes pyqtgraph walk every
        # ViewBox of the process (ViewBox.forgetView); closing such dialogs crashed the interpreter
        # (segmentation faults in later windows; pyqtgraph issue 1628, mantidimaging 3086).
        picture = pg.GraphicsLayoutWidget()
        picture.setMinimumSize(280, 280)
        view = picture.addViewBox(lockAspect=True, invertY=True)
        view.setMenuEnabled(False)
        self.image_item = pg.ImageItem(image.reshape(28, 28).astype(np.float32), levels=(0, 255))
        view.addItem(self.image_item)
        view.setRange(xRange=(0, 28), yRange=(0, 28), padding=0.02)
        layout.addWidget(picture, 1)
        side = QtWidgets.QVBoxLayout()
        verdict = f"true: {class_names[label]}"
        if probs is not None:
            predicted = int(np.argmax(probs))
            verdict += f"    predicted: {class_names[predicted]} ({probs[predicted]:.1%})"
        self.verdict = QtWidgets.QLabel(verdict)
        side.addWidget(self.verdict)
        bars = pg.PlotWidget(background="w")
        bars.setMinimumSize(320, 240)
        if probs is not None:
            colors = ["#2ca02c" if c == label else ("#d62728" if c == int(np.argmax(probs)) else "#1f77b4")
                      for c in range(10)]
            bars.addItem(pg.BarGraphItem(x=np.arange(10), height=probs, width=0.7, brushes=colors))
        bars.setYRange(0, 1)
        bars.getAxis("bottom").setTicks([[(c, class_names[c][:8]) for c in range(10)]])
        bars.setLabel("left", "probability")
        side.addWidget(bars)
        button = QtWidgets.QPushButton("Show its feature maps")
        button.clicked.connect(lambda: (self.show_features.emit(index), self.accept()))
        button.setVisible(index is not None)
        side.addWidget(button)
        layout.addLayout(side, 1)
        if saliency is not None:
            layout.addWidget(saliency, 1)


class GalleryView(QtWidgets.QWidget):
    """Filter and sort controls above the tile view."""

    image_activated = QtCore.pyqtSignal(int)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.model = GalleryModel(self)
        layout = QtWidgets.QVBoxLayout(self)
        controls = QtWidgets.QHBoxLayout()
        self.filter_box = QtWidgets.QComboBox()
        for key, title in (("all", "All"), ("misclassified", "Misclassified"), ("true", "True class"),
                           ("predicted", "Predicted class"), ("pair", "True and predicted")):
            self.filter_box.addItem(title, key)
        self.true_box = QtWidgets.QComboBox()
        self.predicted_box = QtWidgets.QComboBox()
        self.sort_box = QtWidgets.QComboBox()
        for key, title in SORTS.items():
            self.sort_box.addItem(title, key)
        self.count_label = QtWidgets.QLabel()
        controls.addWidget(QtWidgets.QLabel("Show"))
        controls.addWidget(self.filter_box)
        controls.addWidget(QtWidgets.QLabel("true"))
        controls.addWidget(self.true_box)
        controls.addWidget(QtWidgets.QLabel("predicted"))
        controls.addWidget(self.predicted_box)
        controls.addWidget(QtWidgets.QLabel("Sort by"))
        controls.addWidget(self.sort_box)
        controls.addStretch(1)
        controls.addWidget(self.count_label)
        layout.addLayout(controls)
        self.view = QtWidgets.QListView()
        self.view.setViewMode(QtWidgets.QListView.IconMode)
        self.view.setResizeMode(QtWidgets.QListView.Adjust)
        self.view.setMovement(QtWidgets.QListView.Static)
        self.view.setUniformItemSizes(True)
        self.view.setLayoutMode(QtWidgets.QListView.Batched)
        self.view.setBatchSize(200)
        self.view.setSpacing(2)
        self.view.setModel(self.model)
        self.view.setItemDelegate(TileDelegate(self.model, self.view))
        self.view.setMouseTracking(True)
        self.view.clicked.connect(self._activated)
        layout.addWidget(self.view, 1)
        for box in (self.filter_box, self.true_box, self.predicted_box, self.sort_box):
            box.currentIndexChanged.connect(self.refresh)
        self._set_class_names(tuple(str(i) for i in range(10)))

    def _set_class_names(self, names):
        for box in (self.true_box, self.predicted_box):
            box.blockSignals(True)
            current = max(0, box.currentIndex())
            box.clear()
            for c, name in enumerate(names):
                box.addItem(f"{c}: {name}" if name != str(c) else name, c)
            box.setCurrentIndex(current)
            box.blockSignals(False)

    def set_dataset(self, images, labels, class_names):
        self._set_class_names(class_names)
        self.model.set_data(images, labels, class_names)
        self.refresh()

    def set_probs(self, probs):
        self.model.set_probs(probs)
        self.refresh()

    def set_filter(self, kind, true_class=None, predicted_class=None):
        for box, value in ((self.true_box, true_class), (self.predicted_box, predicted_class)):
            if value is not None:
                box.blockSignals(True)
                box.setCurrentIndex(box.findData(value))
                box.blockSignals(False)
        self.filter_box.blockSignals(True)
        self.filter_box.setCurrentIndex(self.filter_box.findData(kind))
        self.filter_box.blockSignals(False)
        self.refresh()

    def refresh(self):
        kind = self.filter_box.currentData()
        self.true_box.setEnabled(kind in ("true", "pair"))
        self.predicted_box.setEnabled(kind in ("predicted", "pair"))
        model = self.model
        indices = select(model.labels, model.predictions, kind, self.true_box.currentData(),
                         self.predicted_box.currentData())
        indices = order(indices, model.probs, model.labels, self.sort_box.currentData())
        model.set_shown(indices)
        self.count_label.setText(f"{len(indices):,} of {len(model.labels):,} images")

    def shown_indices(self) -> np.ndarray:
        return self.model.shown

    def _activated(self, index):
        value = index.data(INDEX_ROLE)
        if value is not None:
            self.image_activated.emit(int(value))
