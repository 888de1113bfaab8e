"""Data augmentation on the fly: random shifts, rotations, scaling and elastic distortions.

Each training image is resampled (bilinear, zeros outside) through a random affine map about the
image's centre, optionally composed with an elastic distortion (Simard, Steinkraus and Platt 2003:
a random displacement field, smoothed with a Gaussian of width sigma and scaled by alpha). Draws
come from a generator the caller seeds (the trainer: [seed, epoch]), so an epoch's augmented images
are the same whenever it runs, and a resumed run stays bit for bit the same.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numba
import numpy as np

_CACHE = not getattr(sys, "frozen", False)
SIDE = 28
CENTRE = (SIDE - 1) / 2.0


@dataclass(frozen=True)
class Augmentation:
    shift: float = 0.0  # pixels, uniform in [-shift, shift] on each axis
    rotate: float = 0.0  # degrees, uniform in [-rotate, rotate]
    scale: float = 0.0  # fraction, uniform in [1 - scale, 1 + scale]
    elastic_alpha: float = 0.0  # pixels of displacement; 0: no elastic distortion
    elastic_sigma: float = 4.0  # pixels: the smoothness of the distortion

    @classmethod
    def from_config(cls, config) -> Augmentation:
        return cls(config.augment_shift, config.augment_rotate, config.augment_scale,
                   config.elastic_alpha, config.elastic_sigma)

    @property
    def active(self) -> bool:
        return bool(self.shift or self.rotate or self.scale or self.elastic_alpha)


@numba.njit(cache=_CACHE, nogil=True, fastmath=False)
def _resample(images, matrices, offsets, displacement, out):
    """out[n, i, j] = bilinear images[n] at A_n (i, j, with displacement) + offset_n, 0 outside."""
    n = images.shape[0]
    for k in range(n):
        a00, a01, a10, a11 = matrices[k, 0, 0], matrices[k, 0, 1], matrices[k, 1, 0], matrices[k, 1, 1]
        for i in range(SIDE):
            for j in range(SIDE):
                y = i - CENTRE
                x = j - CENTRE
                if displacement.shape[0] > 0:
                    y += displacement[k, 0, i, j]
                    x += displacement[k, 1, i, j]
                sy = a00 * y + a01 * x + CENTRE + offsets[k, 0]
                sx = a10 * y + a11 * x + CENTRE + offsets[k, 1]
                y0 = math.floor(sy)
                x0 = math.floor(sx)
                fy = sy - y0
                fx = sx - x0
                value = 0.0
                for dy in range(2):
                    for dx in range(2):
                        yy = y0 + dy
                        xx = x0 + dx
                        if 0 <= yy < SIDE and 0 <= xx < SIDE:
                            weight = (fy if dy else 1.0 - fy) * (fx if dx else 1.0 - fx)
                            value += weight * images[k, yy * SIDE + xx]
                out[k, i * SIDE + j] = min(255, max(0, int(value + 0.5)))


def gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    return kernel / kernel.sum()


def _blur_matrix(sigma: float) -> np.ndarray:
    """The (SIDE, SIDE) matrix of a Gaussian blur along one axis, zero beyond the border."""
    kernel = gaussian_kernel(sigma)
    radius = len(kernel) // 2
    matrix = np.zeros((SIDE, SIDE))
    for i in range(SIDE):
        for t in range(-radius, radius + 1):
            if 0 <= i + t < SIDE:
                matrix[i, i + t] = kernel[t + radius]
    return matrix


def smooth(fields: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (..., SIDE, SIDE) fields: two large matrix products, rows then columns."""
    blur = _blur_matrix(sigma).astype(fields.dtype)
    rows = (fields.reshape(-1, SIDE) @ blur.T).reshape(fields.shape)
    columns = np.swapaxes(rows, -1, -2).reshape(-1, SIDE) @ blur.T
    return np.swapaxes(columns.reshape(fields.shape), -1, -2)


def augment(images: np.ndarray, augmentation: Augmentation, rng: np.random.Generator) -> np.ndarray:
    """Randomly transformed copies of uint8 `images` (n, 784); the same draws give the same images."""
    images = np.ascontiguousarray(images.reshape(len(images), -1), dtype=np.uint8)
    n = len(images)
    angle = np.deg2rad(rng.uniform(-augmentation.rotate, augmentation.rotate, n))
    zoom = rng.uniform(1.0 - augmentation.scale, 1.0 + augmentation.scale, n)
    offsets = rng.uniform(-augmentation.shift, augmentation.shift, (n, 2))
    # Output pixel (y, x) about the centre samples the input at R(angle) (y, x) / zoom.
    cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
    matrices = np.stack([np.stack([cos, -sin], axis=1), np.stack([sin, cos], axis=1)], axis=1)
    if augmentation.elastic_alpha > 0:
        noise = rng.random((n, 2, SIDE, SIDE), dtype=np.float32) * np.float32(2) - np.float32(1)
        displacement = augmentation.elastic_alpha * smooth(noise, augmentation.elastic_sigma)
    else:
        displacement = np.zeros((0, 2, SIDE, SIDE))
    out = np.empty_like(images)
    _resample(images, matrices, offsets, displacement, out)
    return out
