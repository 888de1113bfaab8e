"""Filter and feature-map viewer: any layer's weights or activations as tiles, at any epoch.

Snapshots come as a sequence of (epoch, weights): a list, or a run's on-disk SnapshotStore, of
which only the shown epoch is read. Activations come from a `layer_outputs(weights, images)`
function the workspace provides per configuration (it may take a while to make, so it may arrive
after the run: `set_layer_function`).
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtCore, QtWidgets

from ..core.tiles import normalise, tile_grid, viewable_weight_layers, weight_tiles

GAP_COLOUR = (225, 230, 240)


def tiles_to_rgb(tiles: np.ndarray, columns: int | None = None) -> np.ndarray:
    """Normalised grey tiles on a light background, as an (h, w, 3) uint8 image."""
    grid = tile_grid(normalise(tiles), columns=columns, gap=1, fill=np.nan)
    rgb = np.empty(grid.shape + (3,), dtype=np.uint8)
    gaps = np.isnan(grid)
    grey = (np.nan_to_num(grid) * 255).astype(np.uint8)
    for channel in range(3):
        rgb[..., channel] = np.where(gaps, GAP_COLOUR[channel], grey)
    return rgb


def activation_tiles(value: np.ndarray) -> np.ndarray:
    """One image's layer as tiles: (C, H, W) feature maps as they are, a vector as one square map."""
    if value.ndim == 3:
        return value
    side = math.ceil(math.sqrt(value.size))
    padded = np.full(side * side, np.nan, dtype=np.float32)
    padded[: value.size] = value
    square = padded.reshape(side, side)
    return np.nan_to_num(square, nan=np.nanmin(square) if value.size else 0.0)[None]


class FilterView(QtWidgets.QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.config = None
        self.snapshots = []  # a sequence of (epoch, weights after it)
        self.test_images = None
        self.layer_outputs = None  # f(weights, images) -> OrderedDict of every named layer
        self.custom_image = None  # uint8 (784,): a digit from elsewhere (drawn), shown instead of a test image
        self.custom_name = ""
        self._known_count = 0  # snapshots when the slider was last synced
        layout = QtWidgets.QVBoxLayout(self)
        controls = QtWidgets.QHBoxLayout()
        self.mode_box = QtWidgets.QComboBox()
        self.mode_box.addItem("Learned weights", "weights")
        self.mode_box.addItem("Feature maps of a test image", "features")
        self.layer_box = QtWidgets.QComboBox()
        self.channel_box = QtWidgets.QComboBox()
        self.channel_box.setToolTip("A deeper conv layer's filters have one kernel per input channel")
        self.image_spin = QtWidgets.QSpinBox()
        self.image_spin.setPrefix("test image ")
        self.epoch_slider = QtWidgets.QSlider(QtCore.Qt.Horizontal)
        self.epoch_slider.setMinimum(1)
        self.epoch_slider.setPageStep(1)
        self.epoch_label = QtWidgets.QLabel("no epochs yet")
        for widget in (QtWidgets.QLabel("Show"), self.mode_box, QtWidgets.QLabel("layer"), self.layer_box,
                       self.channel_box, self.image_spin):
            controls.addWidget(widget)
        controls.addStretch(1)
        layout.addLayout(controls)
        epochs = QtWidgets.QHBoxLayout()
        epochs.addWidget(QtWidgets.QLabel("Epoch"))
        epochs.addWidget(self.epoch_slider, 1)
        epochs.addWidget(self.epoch_label)
        layout.addLayout(epochs)
        self.canvas = pg.GraphicsLayoutWidget()
        self.canvas.setBackground("w")
        self.view = self.canvas.addViewBox(lockAspect=True, invertY=True)
        self.image = pg.ImageItem()
        self.view.addItem(self.image)
        layout.addWidget(self.canvas, 1)
        self.info = QtWidgets.QLabel()
        layout.addWidget(self.info)
        self.tile_count = 0
        self.mode_box.currentIndexChanged.connect(self._mode_changed)
        self.layer_box.currentIndexChanged.connect(self._layer_changed)
        self.channel_box.currentIndexChanged.connect(self.redraw)
        self.image_spin.valueChanged.connect(self._test_image_chosen)
        self.epoch_slider.valueChanged.connect(self.redraw)

    # --- data in ----------------------------------------------------------------------------------

    def set_run(self, config, snapshots, test_images, layer_outputs=None) -> None:
        self.config = config
        self.snapshots = snapshots if hasattr(snapshots, "append") else list(snapshots)
        self.test_images = test_images
        self.layer_outputs = layer_outputs
        self.image_spin.setRange(0, max(0, len(test_images) - 1) if test_images is not None else 0)
        self._fill_layers()
        self._sync_epochs(follow=True)

    def set_layer_function(self, layer_outputs) -> None:
        self.layer_outputs = layer_outputs
        if self.mode_box.currentData() == "features":
            self._fill_layers()

    def add_snapshot(self, epoch: int, weights) -> None:
        """Append to a list of snapshots (a SnapshotStore is appended to by its training job)."""
        following = self._following()
        self.snapshots.append((epoch, weights))
        self._snapshot_added(following)

    def snapshot_added(self) -> None:
        """The sequence given to set_run has grown by one."""
        self._snapshot_added(self._following())

    def _following(self) -> bool:
        # At the newest snapshot known so far, or before any (the slider then shows 1 of 0): the
        # slider moves on with the run. The worker may have added several before the GUI hears of one.
        return self.epoch_slider.value() >= self._known_count

    def _snapshot_added(self, following: bool) -> None:
        if self.layer_box.count() == 0:
            self._fill_layers()
        self._sync_epochs(follow=following)

    def show_image(self, index: int) -> None:
        self.custom_image = None
        self.mode_box.setCurrentIndex(self.mode_box.findData("features"))
        self.image_spin.setValue(index)
        self.redraw()

    def show_arbitrary_image(self, image: np.ndarray, name: str = "drawn digit") -> None:
        """The feature maps of any 28x28 image (uint8, or float in [0, 1]); choosing a test image returns to those."""
        array = np.asarray(image).reshape(-1)
        if array.size != 784:
            raise ValueError(f"expected a 28x28 image, not {array.size} pixels")
        if array.dtype != np.uint8:
            array = np.round(np.clip(array.astype(np.float32), 0, 1) * 255).astype(np.uint8)
        self.custom_image, self.custom_name = array.copy(), name
        self.mode_box.setCurrentIndex(self.mode_box.findData("features"))
        self.redraw()

    def _test_image_chosen(self) -> None:
        self.custom_image = None
        self.redraw()

    # --- controls ---------------------------------------------------------------------------------

    def _sync_epochs(self, follow: bool) -> None:
        count = self._known_count = len(self.snapshots)
        self.epoch_slider.blockSignals(True)
        self.epoch_slider.setMaximum(max(1, count))
        self.epoch_slider.setEnabled(count > 1)
        if follow:
            self.epoch_slider.setValue(count)
        self.epoch_slider.blockSignals(False)
        self.redraw()

    def _fill_layers(self) -> None:
        self.layer_box.blockSignals(True)
        previous = self.layer_box.currentData()
        self.layer_box.clear()
        if self.config is not None and self.snapshots and self.config.model != "knn":
            shown = self._shown_weights()
            if self.mode_box.currentData() == "weights":
                for name in viewable_weight_layers(self.config, shown):
                    self.layer_box.addItem(name, name)
            elif self.layer_outputs is not None:
                sample = self.layer_outputs(shown, np.zeros((1, 784), dtype=np.uint8))
                for name in sample:
                    if name not in ("logits", "probs"):
                        self.layer_box.addItem(name, name)
        index = self.layer_box.findData(previous)
        self.layer_box.setCurrentIndex(max(0, index))
        self.layer_box.blockSignals(False)
        self._layer_changed()

    def _mode_changed(self) -> None:
        self.image_spin.setVisible(self.mode_box.currentData() == "features")
        self._fill_layers()

    def _layer_changed(self) -> None:
        self.channel_box.blockSignals(True)
        self.channel_box.clear()
        layer = self.layer_box.currentData()
        weights = self._shown_weights() if self.snapshots else {}
        value = weights.get(layer) if self.mode_box.currentData() == "weights" else None
        deep_conv = value is not None and value.ndim == 4 and value.shape[1] > 1
        if deep_conv:
            self.channel_box.addItem("mean |w| over input channels", None)
            for channel in range(value.shape[1]):
                self.channel_box.addItem(f"input channel {channel}", channel)
        self.channel_box.setVisible(deep_conv)
        self.channel_box.blockSignals(False)
        self.redraw()

    # --- drawing ----------------------------------------------------------------------------------

    def _shown_index(self) -> int:
        return min(self.epoch_slider.value(), len(self.snapshots)) - 1

    def _shown_weights(self) -> dict:
        return self.snapshots[self._shown_index()][1]

    def current_tiles(self) -> np.ndarray | None:
        """The (n, h, w) tiles now shown, or None when there is nothing to show."""
        if not self.snapshots or self.config is None or self.layer_box.count() == 0:
            return None
        weights = self._shown_weights()
        layer = self.layer_box.currentData()
        if self.mode_box.currentData() == "weights":
            return weight_tiles(self.config, weights, layer, self.channel_box.currentData())
        if self.layer_outputs is None or (self.test_images is None and self.custom_image is None):
            return None
        if self.custom_image is not None:
            image = self.custom_image.reshape(1, -1)
        else:
            image = self.test_images[self.image_spin.value()].reshape(1, -1)
        return activation_tiles(self.layer_outputs(weights, image)[layer][0])

    def redraw(self) -> None:
        count = len(self.snapshots)
        if count:
            epoch = self.snapshots[self._shown_index()][0]
            self.epoch_label.setText(f"epoch {epoch} (snapshot {self.epoch_slider.value()} of {count})")
        else:
            self.epoch_label.setText("no epochs yet")
        tiles = self.current_tiles()
        if tiles is None:
            self.image.clear()
            self.tile_count = 0
            if self.config is not None and self.config.model == "knn":
                self.info.setText("kNN has no learned weights.")
            elif self.snapshots and self.mode_box.currentData() == "features" and self.layer_outputs is None:
                self.info.setText("Preparing the feature maps…")
            else:
                self.info.setText("Train or open a model to see its filters.")
            return
        self.tile_count = len(tiles)
        self.image.setImage(tiles_to_rgb(tiles))
        self.view.autoRange(padding=0.02)
        h, w = tiles.shape[1:]
        source = ""
        if self.mode_box.currentData() == "features":
            source = f" ({self.custom_name})" if self.custom_image is not None else f" (test image {self.image_spin.value()})"
        self.info.setText(f"{len(tiles)} tiles of {h}x{w}{source}; each tile scaled to its own range")
