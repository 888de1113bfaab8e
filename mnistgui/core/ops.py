"""Convolution and max-pooling as PyTensor Ops, forward and gradient.

PyTensor dropped Theano's conv2d and pool_2d. These Ops bring them back with Theano's semantics:
`conv2d` is a true convolution (the filter is flipped) in 'valid' or 'full' mode over
(batch, channels, rows, cols) tensors, and `max_pool_2d` is non-overlapping 2x2 pooling with
ignore_border=False, so odd sizes round up (13 -> 7).

Inside, the Ops work channels-last, (batch, rows, cols, channels): then im2col copies contiguous
runs, one matrix product per batch gives the output already in layout, and no transpose is needed
between layers. The convnet keeps its feature maps channels-last from first conv to last pool;
`conv2d` and `max_pool_2d` wrap the same Ops for the usual channels-first layout.

One primitive carries the arithmetic: `Corr2dValid`, a valid cross-correlation computed as im2col
plus a single matrix product (what Theano's CorrMM did). Its two gradients are `Corr2dInputGrad`
(one matrix product, then col2im) and `Corr2dWeights` (im2col, then one matrix product).
Filters stay (filters, channels, rows, cols), as in Theano and in the model files.
"""

from __future__ import annotations

import sys

import numba
import numpy as np
import pytensor.tensor as pt
from pytensor.gradient import disconnected_type
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.scalar.basic import upcast

# Numba caches compiled kernels beside the source; a frozen app has no source to cache beside.
_CACHE = not getattr(sys, "frozen", False)

# --- NumPy kernels, channels-last ------------------------------------------------------------------


def _im2col(x: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """Patches of x (N, H, W, C) as rows (N * rows_out * cols_out, kh * kw * C): kh * kw block copies."""
    n, h, w, c = x.shape
    rows, cols = h - kh + 1, w - kw + 1
    patches = np.empty((n, rows, cols, kh, kw, c), dtype=x.dtype)
    for a in range(kh):
        for b in range(kw):
            patches[:, :, :, a, b, :] = x[:, a : a + rows, b : b + cols, :]
    return patches.reshape(n * rows * cols, kh * kw * c)


def _filters_as_matrix(k: np.ndarray) -> np.ndarray:
    """(F, C, kh, kw) filters as the (kh * kw * C, F) matrix that multiplies im2col rows."""
    f, c, kh, kw = k.shape
    return k.transpose(2, 3, 1, 0).reshape(kh * kw * c, f)


def corr2d_nhwc(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """out[n, i, j, f] = sum_{c, a, b} x[n, i + a, j + b, c] * k[f, c, a, b]."""
    n, h, w, _ = x.shape
    f, _, kh, kw = k.shape
    rows, cols = h - kh + 1, w - kw + 1
    return (_im2col(x, kh, kw) @ _filters_as_matrix(k)).reshape(n, rows, cols, f)


def corr2d_weights_nhwc(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """dk[f, c, a, b] = sum_{n, i, j} x[n, i + a, j + b, c] * g[n, i, j, f]."""
    n, h, w, c = x.shape
    _, rows, cols, f = g.shape
    kh, kw = h - rows + 1, w - cols + 1
    dk = g.reshape(n * rows * cols, f).T @ _im2col(x, kh, kw)  # (F, kh * kw * C)
    return np.ascontiguousarray(dk.reshape(f, kh, kw, c).transpose(0, 3, 1, 2))


def corr2d_input_grad_nhwc(g: np.ndarray, k: np.ndarray, h: int, w: int) -> np.ndarray:
    """dx[n, p, q, c] = sum_{f, i, j} g[n, i, j, f] * k[f, c, p - i, q - j], for x of size (h, w).

    col2im: one matrix product gives every patch's gradient, then kh * kw strided additions fold
    the patches back onto the image.
    """
    n, rows, cols, f = g.shape
    _, c, kh, kw = k.shape
    patches = (g.reshape(n * rows * cols, f) @ _filters_as_matrix(k).T).reshape(n, rows, cols, kh, kw, c)
    dx = np.zeros((n, h, w, c), dtype=g.dtype)
    for a in range(kh):
        for b in range(kw):
            dx[:, a : a + rows, b : b + cols, :] += patches[:, :, :, a, b, :]
    return dx


def corr2d_valid_numpy(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Channels-first reference: out[n, f, i, j] = sum_{c, a, b} x[n, c, i + a, j + b] * k[f, c, a, b]."""
    out = corr2d_nhwc(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), k)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


@numba.njit(cache=_CACHE, nogil=True)
def _max_pool_kernel(x, out):
    n, h, w, c = x.shape
    for i in range(n):
        for r in range(out.shape[1]):
            for q in range(out.shape[2]):
                for j in range(c):
                    best = x[i, 2 * r, 2 * q, j]
                    for a in range(2):
                        for b in range(2):
                            rr, qq = 2 * r + a, 2 * q + b
                            if rr < h and qq < w and x[i, rr, qq, j] > best:
                                best = x[i, rr, qq, j]
                    out[i, r, q, j] = best


@numba.njit(cache=_CACHE, nogil=True)
def _max_pool_grad_kernel(x, gz, gx):
    n, h, w, c = x.shape
    for i in range(n):
        for r in range(gz.shape[1]):
            for q in range(gz.shape[2]):
                for j in range(c):
                    best_r, best_q = 2 * r, 2 * q
                    best = x[i, best_r, best_q, j]
                    for a in range(2):
                        for b in range(2):
                            rr, qq = 2 * r + a, 2 * q + b
                            if rr < h and qq < w and x[i, rr, qq, j] > best:  # strict: the first maximum wins
                                best, best_r, best_q = x[i, rr, qq, j], rr, qq
                    gx[i, best_r, best_q, j] = gz[i, r, q, j]


def max_pool_nhwc(x: np.ndarray) -> np.ndarray:
    """2x2 max pooling, ignore_border=False (an odd last row or column pools alone)."""
    n, h, w, c = x.shape
    if h % 2 == 0 and w % 2 == 0:  # four strided views with contiguous channel runs: vectorised
        top = np.maximum(x[:, 0::2, 0::2], x[:, 0::2, 1::2])
        return np.maximum(top, np.maximum(x[:, 1::2, 0::2], x[:, 1::2, 1::2]), out=top)
    out = np.empty((n, (h + 1) // 2, (w + 1) // 2, c), dtype=x.dtype)
    _max_pool_kernel(np.ascontiguousarray(x), out)
    return out


def max_pool_grad_nhwc(x: np.ndarray, gz: np.ndarray) -> np.ndarray:
    """Route each output gradient to the first maximum of its window (row-major), as cuDNN does."""
    gx = np.zeros(x.shape, dtype=gz.dtype)
    _max_pool_grad_kernel(np.ascontiguousarray(x), np.ascontiguousarray(gz), gx)
    return gx


def max_pool_numpy(x: np.ndarray) -> np.ndarray:
    """Channels-first 2x2 max pooling, for references and viewers."""
    out = max_pool_nhwc(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


# --- Ops, channels-last -------------------------------------------------------------------------------


def _as_float_out(node, value):
    return value.astype(node.outputs[0].dtype, copy=False)


class Corr2dValid(Op):
    """Valid 2-d cross-correlation of x (N, H, W, C) with k (F, C, kh, kw), giving (N, H', W', F)."""

    __props__ = ()

    def make_node(self, x, k):
        x = pt.as_tensor_variable(x)
        k = pt.as_tensor_variable(k)
        if x.ndim != 4 or k.ndim != 4:
            raise TypeError("Corr2dValid takes two 4-d tensors")
        out = pt.tensor(dtype=upcast(x.dtype, k.dtype), shape=(x.type.shape[0], None, None, k.type.shape[0]))
        return Apply(self, [x, k], [out])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = _as_float_out(node, corr2d_nhwc(*inputs))

    def infer_shape(self, *args):  # (fgraph, node, shapes) on PyTensor 3.0, (node, shapes) on 3.3
        (n, h, w, _), (f, _, kh, kw) = args[-1]
        return [(n, h - kh + 1, w - kw + 1, f)]

    def pullback(self, inputs, outputs, output_grads):
        x, k = inputs
        (g,) = output_grads
        return [corr2d_input_grad(x, g, k), corr2d_weights(x, g)]


class Corr2dWeights(Op):
    """Gradient of `Corr2dValid` with respect to its filters, given x and the output gradient g."""

    __props__ = ()

    def make_node(self, x, g):
        x = pt.as_tensor_variable(x)
        g = pt.as_tensor_variable(g)
        out = pt.tensor(dtype=upcast(x.dtype, g.dtype), shape=(g.type.shape[3], x.type.shape[3], None, None))
        return Apply(self, [x, g], [out])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = _as_float_out(node, corr2d_weights_nhwc(*inputs))

    def infer_shape(self, *args):  # (fgraph, node, shapes) on PyTensor 3.0, (node, shapes) on 3.3
        (_, h, w, c), (_, rows, cols, f) = args[-1]
        return [(f, c, h - rows + 1, w - cols + 1)]

    def pullback(self, inputs, outputs, output_grads):
        x, g = inputs
        (gk,) = output_grads
        return [corr2d_input_grad(x, g, gk), corr2d_valid(x, gk)]


class Corr2dInputGrad(Op):
    """Gradient of `Corr2dValid` with respect to x, given g and k; x itself only lends its shape."""

    __props__ = ()

    def make_node(self, x, g, k):
        x, g, k = (pt.as_tensor_variable(v) for v in (x, g, k))
        out = pt.tensor(dtype=upcast(g.dtype, k.dtype), shape=(g.type.shape[0], None, None, k.type.shape[1]))
        return Apply(self, [x, g, k], [out])

    def perform(self, node, inputs, output_storage):
        x, g, k = inputs
        output_storage[0][0] = _as_float_out(node, corr2d_input_grad_nhwc(g, k, x.shape[1], x.shape[2]))

    def infer_shape(self, *args):  # (fgraph, node, shapes) on PyTensor 3.0, (node, shapes) on 3.3
        (n, h, w, _), _, (_, c, _, _) = args[-1]
        return [(n, h, w, c)]

    def connection_pattern(self, node):
        return [[False], [True], [True]]

    def pullback(self, inputs, outputs, output_grads):
        x, g, k = inputs
        (gx,) = output_grads
        return [disconnected_type(), corr2d_valid(gx, k), corr2d_weights(gx, g)]


corr2d_valid = Corr2dValid()
corr2d_weights = Corr2dWeights()
corr2d_input_grad = Corr2dInputGrad()


class MaxPool2x2(Op):
    """Non-overlapping 2x2 max pooling of (N, H, W, C), ignore_border=False: (N, ceil(H/2), ceil(W/2), C)."""

    __props__ = ()

    def make_node(self, x):
        x = pt.as_tensor_variable(x)
        if x.ndim != 4:
            raise TypeError("MaxPool2x2 takes a 4-d tensor")
        out = pt.tensor(dtype=x.dtype, shape=(x.type.shape[0], None, None, x.type.shape[3]))
        return Apply(self, [x], [out])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = max_pool_nhwc(inputs[0])

    def infer_shape(self, *args):  # (fgraph, node, shapes) on PyTensor 3.0, (node, shapes) on 3.3
        n, h, w, c = args[-1][0]
        return [(n, (h + 1) // 2, (w + 1) // 2, c)]

    def pullback(self, inputs, outputs, output_grads):
        return [max_pool_grad(inputs[0], output_grads[0])]


class MaxPool2x2Grad(Op):
    __props__ = ()

    def make_node(self, x, gz):
        x = pt.as_tensor_variable(x)
        gz = pt.as_tensor_variable(gz)
        return Apply(self, [x, gz], [x.type()])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = _as_float_out(node, max_pool_grad_nhwc(*inputs))

    def infer_shape(self, *args):  # (fgraph, node, shapes) on PyTensor 3.0, (node, shapes) on 3.3
        return [args[-1][0]]


max_pool_2x2 = MaxPool2x2()
max_pool_grad = MaxPool2x2Grad()


# --- graph functions ---------------------------------------------------------------------------------


def _pad_spatial(x, ph, pw):
    """Zero-pad axes 1 and 2 of a channels-last 4-d tensor by (ph, pw) on each side."""
    n, h, w, c = x.shape
    padded = pt.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=x.dtype)
    return pt.set_subtensor(padded[:, ph : ph + h, pw : pw + w, :], x)


def conv2d_nhwc(x, w, border_mode: str = "valid", filter_shape: tuple[int, int, int, int] | None = None):
    """Theano's conv2d on channels-last x (N, H, W, C) with filters w (F, C, kh, kw): (N, H', W', F).

    'valid' gives H - kh + 1 rows, 'full' gives H + kh - 1. `filter_shape` (static) lets 'full' pad
    by constants; without it the padding is read from w's shape at run time.
    """
    if border_mode not in ("valid", "full"):
        raise ValueError(f"border_mode must be 'valid' or 'full', not {border_mode!r}")
    if border_mode == "full":
        kh, kw = filter_shape[2:] if filter_shape is not None else (w.shape[2], w.shape[3])
        x = _pad_spatial(x, kh - 1, kw - 1)
    return corr2d_valid(x, w[:, :, ::-1, ::-1])


def conv2d(x, w, border_mode: str = "valid", filter_shape: tuple[int, int, int, int] | None = None):
    """Theano's conv2d on channels-first x (N, C, H, W): true convolution, 'valid' or 'full'."""
    out = conv2d_nhwc(x.dimshuffle(0, 2, 3, 1), w, border_mode, filter_shape)
    return out.dimshuffle(0, 3, 1, 2)


max_pool_2d_nhwc = max_pool_2x2


def max_pool_2d(x):
    """The notebook's max_pool_2d(x, (2, 2)) with ignore_border=False, on channels-first x."""
    return max_pool_2x2(x.dimshuffle(0, 2, 3, 1)).dimshuffle(0, 3, 1, 2)
