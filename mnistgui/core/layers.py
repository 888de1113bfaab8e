"""Small pure functions from symbols to symbols: the notebook's building blocks, in PyTensor."""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.tensor.random.op import RandomVariable

from .softmax_ops import row_softmax, softmax_cross_entropy

ACTIVATION_FUNCTIONS = {
    "sigmoid": pt.sigmoid,
    "relu": lambda x: pt.maximum(x, 0.0),  # the notebook's rectify()
    "tanh": pt.tanh,
}


def softmax(x):
    """softmax(x) along each row: the notebook's exp(x - max) / sum, as one Op (softmax_ops)."""
    return row_softmax(x)


def cross_entropy(logits, labels):
    """Mean categorical cross-entropy of integer `labels`, from logits, stably (a log-sum-exp):
    one Op forward and one backward (softmax_ops)."""
    return softmax_cross_entropy(logits, labels)


class RandomFloat32(RandomVariable):
    """Uniform [0, 1) float32 draws. PyTensor's uniform draws float64 and casts: three times slower."""

    name = "random_float32"
    signature = "->()"
    dtype = "float32"

    def rng_fn(self, rng, size):
        return rng.random(size=size, dtype=np.float32)


random_float32 = RandomFloat32()


class RngChain:
    """One shared NumPy generator threaded through every draw of a graph.

    `draw_*` returns a variate and advances the symbolic state; `update` is the (shared, new state)
    pair to pass to `function(..., updates=...)` so the next call continues the stream.
    """

    def __init__(self, seed: int, name: str = "dropout_rng"):
        self.shared = pt.random.shared_rng(seed=seed, name=name)
        self.state = self.shared

    def uniform(self, shape):
        self.state, sample = random_float32(size=shape, rng=self.state, return_next_rng=True)
        return sample

    @property
    def used(self) -> bool:
        return self.state is not self.shared

    @property
    def update(self):
        return (self.shared, self.state)


def dropout(x, p: float, rng: RngChain | None):
    """Zero each unit with probability p and rescale the rest by 1/(1-p); identity when p == 0."""
    if p <= 0 or rng is None:
        return x
    retain = 1.0 - p
    mask = pt.lt(rng.uniform(x.shape), retain)
    return x * pt.cast(mask, x.dtype) * np.float32(1.0 / retain)


def dense(x, w, b=None, product=pt.dot):
    y = product(x, w)
    return y if b is None else y + b


def init_weights(shape, scheme: str, std: float, rng: np.random.Generator, name: str):
    """A float32 shared weight: N(0, std^2) as in the notebook, or Glorot-uniform, or He-normal."""
    if len(shape) == 4:  # (filters, channels, rows, cols)
        receptive = shape[2] * shape[3]
        fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
    else:
        fan_in, fan_out = shape[0], shape[1]
    if scheme == "normal":
        value = rng.standard_normal(shape) * std
    elif scheme == "glorot":
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        value = rng.uniform(-limit, limit, size=shape)
    elif scheme == "he":
        value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
    else:
        raise ValueError(f"unknown init scheme {scheme!r}")
    return pytensor.shared(value.astype(np.float32), name=name)


def zeros_bias(size: int, name: str):
    return pytensor.shared(np.zeros(size, dtype=np.float32), name=name)
