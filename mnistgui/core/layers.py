"""Small pure functions from symbols to symbols: the notebook's building blocks, in PyTensor."""

from __future__ import annotations

import threading

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.tensor.random.op import RandomVariable

from .dropout_ops import relu_dropout
from .ops import _kernel_threads, kernel_threads
from .softmax_ops import row_softmax, softmax_cross_entropy


def relu(x):
    """The notebook's rectify(), maximum(x, 0); remembers x, so that a dropout after it can fuse with it."""
    out = pt.maximum(x, 0.0)
    out.tag.relu_of = x
    return out


ACTIVATION_FUNCTIONS = {
    "sigmoid": pt.sigmoid,
    "relu": relu,
    "tanh": pt.tanh,
}


def softmax(x):
    """softmax(x) along each row: the notebook's exp(x - max) / sum, as one Op (softmax_ops)."""
    return row_softmax(x)


def cross_entropy(logits, labels):
    """Mean categorical cross-entropy of integer `labels`, from logits, stably (a log-sum-exp):
    one Op forward and one backward (softmax_ops)."""
    return softmax_cross_entropy(logits, labels)


# Draws for a layer this large are split over the kernel threads (the convnet's first two layers,
# 921,600 and 401,408 draws a step: 1.8 and 0.8 ms on one core).
PARALLEL_MIN_DRAWS = 1 << 18
_spare_generators = threading.local()


def _spare_generator() -> np.random.Generator:
    """A generator of this thread's own, for its state to be set and drawn from."""
    generator = getattr(_spare_generators, "generator", None)
    if generator is None:
        generator = _spare_generators.generator = np.random.Generator(np.random.PCG64(0))
    return generator


def uniform_float32(rng: np.random.Generator, size) -> np.ndarray:
    """rng.random(size, dtype=float32), and rng left where that leaves it, bit for bit; a large draw in
    parts on the kernel threads.

    PCG64 gives a float32 from each half of a 64-bit output, low half first. From a state with no half
    left over, the draws from index 2k on are those of the same state advanced by k outputs: each part
    draws from its own copy so advanced, and rng takes the last part's final state."""
    count = int(np.prod(size, dtype=np.int64))
    bit_generator = rng.bit_generator
    if count < PARALLEL_MIN_DRAWS or type(bit_generator) is not np.random.PCG64 or kernel_threads() < 2:
        return rng.random(size=size, dtype=np.float32)
    # Held as rng.random holds it (two graphs drawing from one generator at once); an RLock, so the
    # serial fallback inside takes it again.
    with bit_generator.lock:
        return _uniform_float32_in_parts(bit_generator, rng, size, count)


def _uniform_float32_in_parts(bit_generator, rng, size, count):
    state = bit_generator.state
    if state["has_uint32"]:  # a half left over from an odd draw before: the halves no longer line up
        return rng.random(size=size, dtype=np.float32)
    out = np.empty(count, dtype=np.float32)
    pairs = count // 2
    final_state = []

    def part(start, stop):  # the draws of pairs [start, stop); the last part also an odd last draw
        generator = _spare_generator()
        generator.bit_generator.state = state
        generator.bit_generator.advance(start)
        generator.random(out=out[2 * start : count if stop == pairs else 2 * stop], dtype=np.float32)
        if stop == pairs:
            final_state.append(generator.bit_generator.state)

    _kernel_threads.run(part, pairs, blas=False)
    bit_generator.state = final_state[0]
    return out.reshape(size)


class RandomFloat32(RandomVariable):
    """Uniform [0, 1) float32 draws. PyTensor's uniform draws float64 and casts: three times slower."""

    name = "random_float32"
    signature = "->()"
    dtype = "float32"

    def rng_fn(self, rng, size):
        return uniform_float32(rng, size)


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
    """Zero each unit with probability p and rescale the rest by 1/(1-p); identity when p == 0.

    After a `relu` the two are one Op (dropout_ops), with the same draws and the same arithmetic."""
    if p <= 0 or rng is None:
        return x
    retain = 1.0 - p
    draws = rng.uniform(x.shape)
    relu_input = getattr(x.tag, "relu_of", None)
    # The tag travels with clones of x: fuse only where x is still that input's ReLU.
    if relu_input is not None and x.owner is not None and x.owner.inputs[0] is relu_input:
        return relu_dropout(relu_input, draws, retain)
    mask = pt.lt(draws, retain)
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
