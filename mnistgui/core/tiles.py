"""Pure-NumPy tiling of weights and feature maps into one image (after DeepLearningTutorials' tiler)."""

from __future__ import annotations

import math

import numpy as np

from .config import Config


def normalise(tiles: np.ndarray) -> np.ndarray:
    """Scale each tile to [0, 1] on its own, so faint and strong filters are equally visible."""
    tiles = tiles.astype(np.float32)
    flat = tiles.reshape(len(tiles), -1)
    low = flat.min(axis=1)[:, None, None]
    high = flat.max(axis=1)[:, None, None]
    return (tiles - low) / np.maximum(high - low, 1e-12)


def tile_grid(tiles: np.ndarray, columns: int | None = None, gap: int = 1, fill: float = np.nan) -> np.ndarray:
    """Lay out (n, h, w) tiles row by row in one (rows*(h+gap)-gap, cols*(w+gap)-gap) image.

    Gaps are NaN by default, which the viewers draw as background.
    """
    n, h, w = tiles.shape
    if n == 0:
        return np.zeros((h, w), dtype=np.float32)
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    image = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap), fill, dtype=np.float32)
    for index in range(n):
        r, c = divmod(index, columns)
        image[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tiles[index]
    return image


def weight_tiles(config: Config, weights: dict[str, np.ndarray], layer: str, channel: int | None = None) -> np.ndarray:
    """The (n, h, w) tiles that show one layer's weights.

    logreg: the 10 templates as 28x28. MLPs: each first-layer unit's 784 weights as 28x28.
    Convnet: 'w' gives its 32 3x3 filters; a deeper layer ('w2', 'w3') gives each filter's kernel
    for input `channel`, or, with channel None, each filter's mean absolute kernel over channels.
    """
    value = weights[layer]
    if value.ndim == 4:
        if value.shape[1] == 1:
            return value[:, 0]
        if channel is None:
            return np.abs(value).mean(axis=1)
        return value[:, channel]
    if value.shape[0] == 784:
        return value.T.reshape(-1, 28, 28)
    raise ValueError(f"layer {layer} of {config.model} is not an image-shaped layer")


def viewable_weight_layers(config: Config, weights: dict[str, np.ndarray]) -> list[str]:
    """Layers whose weights read as pictures: conv kernels and weights over the 28x28 pixels."""
    return [name for name, value in weights.items() if value.ndim == 4 or (value.ndim == 2 and value.shape[0] == 784)]
