"""Why the model decided: saliency maps of one class's score with respect to the pixels.

- The gradient (Simonyan et al. 2014): d logit_c / d x, how each pixel would move the class's score.
- Integrated gradients (Sundararajan et al. 2017): (x - x0) times the gradient averaged along the
  straight path from a baseline x0 (black by default) to x, by the midpoint rule over `steps` points.
  By the completeness axiom its attributions add up to logit_c(x) - logit_c(x0), up to the rule's error.

Scores are the logits (before the softmax): a probability saturates, and its gradient vanishes exactly
where the model is most sure. Maps come back as float32 (28, 28) in score units; positive pixels push
the class's score up, negative ones down.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytensor
import pytensor.tensor as pt

from . import backend
from .models import IMAGE_SIDE, N_CLASSES, pixel_graph

IG_STEPS = 64
IG_CHUNK = 128  # path points per gradient call


@dataclass
class Explanation:
    """One image's saliency for one class."""

    target: int  # the class explained
    predicted: int  # the class the model chose
    probs: np.ndarray  # (10,) on the image
    gradient: np.ndarray  # (28, 28) d logit / d pixel
    integrated: np.ndarray  # (28, 28) integrated gradients
    score: float  # logit of `target` on the image
    baseline_score: float  # ... on the baseline

    @property
    def completeness_gap(self) -> float:
        """sum(integrated) - (score - baseline_score): 0 for exact integration."""
        return float(self.integrated.sum() - (self.score - self.baseline_score))


def _pixels(image) -> np.ndarray:
    """One image, uint8 or float in [0, 1], any of (28, 28), (784,), (1, 784), as float32 (784,)."""
    array = np.asarray(image)
    if array.size != IMAGE_SIDE * IMAGE_SIDE:
        raise ValueError(f"expected one 28x28 image, not an array of shape {array.shape}")
    if array.dtype == np.uint8:
        return array.reshape(-1).astype(np.float32) / np.float32(255.0)
    return array.reshape(-1).astype(np.float32)


class Saliency:
    """Gradient and integrated-gradients maps for a trained `NeuralModel`, compiled once.

    Built from the model definition over float pixels and the model's shared weights (dropout off),
    so it always explains the weights the model holds now. Compile it off the GUI thread.
    """

    def __init__(self, model, mode=None):
        config = model.config
        if not config.is_trainable:
            raise ValueError("nearest neighbours has no gradient: saliency maps need a trained model")
        pixels, layers = pixel_graph(model)
        classes = pt.ivector("classes")
        logits = layers["logits"]
        # Each image's chosen score depends on that image's pixels alone, so the gradient of the sum
        # is, row by row, each image's own gradient.
        chosen = logits[pt.arange(classes.shape[0]), classes]
        gradient = pytensor.grad(chosen.sum(), pixels)
        mode = mode or backend.compile_mode(model.backend)
        self.model = model
        self._gradient = backend.function([pixels, classes], [gradient, logits], mode=mode)
        self._logits = backend.function([pixels], [logits, layers["probs"]], mode=mode)

    @backend.on_kernel_cores
    def logits(self, images) -> np.ndarray:
        """(n, 10) scores of uint8 or float images."""
        array = np.asarray(images)
        pixels = array.reshape(len(array), -1)
        pixels = pixels.astype(np.float32) / np.float32(255.0) if array.dtype == np.uint8 else pixels.astype(np.float32)
        return self._logits(pixels)[0]

    def _target(self, pixels: np.ndarray, target: int | None) -> tuple[int, np.ndarray, np.ndarray]:
        logits, probs = self._logits(pixels[None, :])
        predicted = int(np.argmax(probs[0]))
        if target is None:
            target = predicted
        if not 0 <= int(target) < N_CLASSES:
            raise ValueError(f"class must be in 0..{N_CLASSES - 1}, not {target}")
        return int(target), logits[0], probs[0]

    @backend.on_kernel_cores
    def gradient(self, image, target: int | None = None) -> np.ndarray:
        """d logit_target / d pixel as (28, 28); `target` None: the predicted class."""
        pixels = _pixels(image)
        target, _, _ = self._target(pixels, target)
        gradient, _ = self._gradient(pixels[None, :], np.array([target], np.int32))
        return gradient[0].reshape(IMAGE_SIDE, IMAGE_SIDE)

    def integrated_gradients(self, image, target: int | None = None, steps: int = IG_STEPS,
                             baseline=None) -> np.ndarray:
        """Integrated gradients as (28, 28), from `baseline` (default black) to the image."""
        return self.explain(image, target, steps, baseline).integrated

    @backend.on_kernel_cores
    def explain(self, image, target: int | None = None, steps: int = IG_STEPS, baseline=None) -> Explanation:
        """Both maps for one image, with the scores that check integrated gradients' completeness."""
        if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or not 1 <= steps <= 4096:
            raise ValueError(f"steps must be an integer in [1, 4096], not {steps!r}")
        pixels = _pixels(image)
        start = np.zeros_like(pixels) if baseline is None else _pixels(baseline)
        target, logits, probs = self._target(pixels, target)
        alphas = (np.arange(steps, dtype=np.float32) + np.float32(0.5)) / np.float32(steps)  # midpoints
        path = start[None, :] + alphas[:, None] * (pixels - start)[None, :]
        total = np.zeros(pixels.shape, dtype=np.float64)
        for first in range(0, steps, IG_CHUNK):
            part = path[first : first + IG_CHUNK]
            gradients, _ = self._gradient(np.ascontiguousarray(part), np.full(len(part), target, np.int32))
            total += gradients.sum(axis=0, dtype=np.float64)
        plain, _ = self._gradient(pixels[None, :], np.array([target], np.int32))
        integrated = ((pixels - start) * (total / steps)).astype(np.float32)
        baseline_score = float(self._logits(start[None, :])[0][0, target])
        return Explanation(
            target=target, predicted=int(np.argmax(probs)), probs=probs,
            gradient=plain[0].reshape(IMAGE_SIDE, IMAGE_SIDE),
            integrated=integrated.reshape(IMAGE_SIDE, IMAGE_SIDE),
            score=float(logits[target]), baseline_score=baseline_score,
        )


def normalised(heat_map: np.ndarray, percentile: float = 99.0) -> np.ndarray:
    """A map scaled into [-1, 1] for display, zero kept at zero: divided by the `percentile` of its
    absolute values (a few extreme pixels would otherwise wash the rest out), then clipped."""
    values = np.asarray(heat_map, dtype=np.float32)
    scale = float(np.percentile(np.abs(values), percentile)) if values.size else 0.0
    if not np.isfinite(scale) or scale <= 0:
        scale = float(np.abs(values).max()) if values.size else 0.0
    if not np.isfinite(scale) or scale <= 0:
        return np.zeros_like(values)
    return np.clip(values / np.float32(scale), -1.0, 1.0)
