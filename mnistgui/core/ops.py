"""Convolution and max-pooling as PyTensor Ops, forward and gradient.

PyTensor dropped Theano's conv2d and pool_2d. These Ops bring them back with Theano's semantics:
`conv2d` is a true convolution (the filter is flipped) in 'valid' or 'full' mode over
(batch, channels, rows, cols) tensors, and `max_pool_2d` is non-overlapping 2x2 pooling with
ignore_border=False, so odd sizes round up (13 -> 7).

One primitive carries the arithmetic: `Corr2dValid`, a valid cross-correlation computed as im2col
plus a single matrix product (what Theano's CorrMM did). Its two gradients are `Corr2dInputGrad`
(one matrix product, then col2im) and `Corr2dWeights` (im2col, then one matrix product).
"""

from __future__ import annotations

import numba
import numpy as np
import pytensor.tensor as pt
from pytensor.gradient import disconnected_type
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.scalar.basic import upcast


def _im2col(x: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """Patches of x (N, C, H, W) as rows (N * rows_out * cols_out, kh * kw * C), channels last.

    Built from kh * kw strided block copies of a channels-last x: far faster than copying a
    sliding-window view, whose innermost strides jump across the image.
    """
    n, c, h, w = x.shape
    rows, cols = h - kh + 1, w - kw + 1
    x_last = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    patches = np.empty((n, rows, cols, kh, kw, c), dtype=x.dtype)
    for a in range(kh):
        for b in range(kw):
            patches[:, :, :, a, b, :] = x_last[:, a : a + rows, b : b + cols, :]
    return patches.reshape(n * rows * cols, kh * kw * c)


def _im2col_single_channel(x: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """For one input channel: patches as (N, kh * kw, rows_out * cols_out), straight from NCHW."""
    n, _, h, w = x.shape
    rows, cols = h - kh + 1, w - kw + 1
    patches = np.empty((n, kh * kw, rows, cols), dtype=x.dtype)
    for a in range(kh):
        for b in range(kw):
            patches[:, a * kw + b] = x[:, 0, a : a + rows, b : b + cols]
    return patches.reshape(n, kh * kw, rows * cols)


def corr2d_valid_numpy(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """out[n, f, i, j] = sum_{c, a, b} x[n, c, i + a, j + b] * k[f, c, a, b]."""
    n, c, h, w = x.shape
    f, _, kh, kw = k.shape
    rows, cols = h - kh + 1, w - kw + 1
    if c == 1:
        # One channel (the first layer): a batched product lands in NCHW directly, no transpose.
        return np.matmul(k.reshape(f, kh * kw), _im2col_single_channel(x, kh, kw)).reshape(n, f, rows, cols)
    out = _im2col(x, kh, kw) @ k.transpose(2, 3, 1, 0).reshape(kh * kw * c, f)
    return np.ascontiguousarray(out.reshape(n, rows, cols, f).transpose(0, 3, 1, 2))


def corr2d_weights_numpy(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """dk[f, c, a, b] = sum_{n, i, j} x[n, c, i + a, j + b] * g[n, f, i, j]."""
    n, c, h, w = x.shape
    _, f, rows, cols = g.shape
    kh, kw = h - rows + 1, w - cols + 1
    if c == 1:
        per_image = np.matmul(g.reshape(n, f, rows * cols), _im2col_single_channel(x, kh, kw).transpose(0, 2, 1))
        return per_image.sum(axis=0).reshape(f, 1, kh, kw)
    grads = g.transpose(0, 2, 3, 1).reshape(n * rows * cols, f)
    dk = grads.T @ _im2col(x, kh, kw)  # (F, kh * kw * C)
    return np.ascontiguousarray(dk.reshape(f, kh, kw, c).transpose(0, 3, 1, 2))


def corr2d_input_grad_numpy(g: np.ndarray, k: np.ndarray, h: int, w: int) -> np.ndarray:
    """dx[n, c, p, q] = sum_{f, i, j} g[n, f, i, j] * k[f, c, p - i, q - j], for x of size (h, w).

    col2im: one matrix product gives every patch's gradient, then kh * kw strided additions fold
    the patches back onto the image; half the memory traffic of correlating a padded gradient.
    """
    n, f, rows, cols = g.shape
    _, c, kh, kw = k.shape
    grads = g.transpose(0, 2, 3, 1).reshape(n * rows * cols, f)
    patches = (grads @ k.transpose(0, 2, 3, 1).reshape(f, kh * kw * c)).reshape(n, rows, cols, kh, kw, c)
    dx = np.zeros((n, h, w, c), dtype=g.dtype)
    for a in range(kh):
        for b in range(kw):
            dx[:, a : a + rows, b : b + cols, :] += patches[:, :, :, a, b, :]
    return np.ascontiguousarray(dx.transpose(0, 3, 1, 2))


def _pad(x, ph, pw):
    """Zero-pad the last two axes of a 4-d tensor by (ph, pw) on each side; ph, pw may be symbolic."""
    if isinstance(ph, int) and isinstance(pw, int) and ph == pw == 0:
        return x
    n, c, h, w = x.shape
    padded = pt.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    return pt.set_subtensor(padded[:, :, ph : ph + h, pw : pw + w], x)


class Corr2dValid(Op):
    """Valid 2-d cross-correlation of x (N, C, H, W) with k (F, C, kh, kw)."""

    __props__ = ()

    def make_node(self, x, k):
        x = pt.as_tensor_variable(x)
        k = pt.as_tensor_variable(k)
        if x.ndim != 4 or k.ndim != 4:
            raise TypeError("Corr2dValid takes two 4-d tensors")
        out = pt.tensor(dtype=upcast(x.dtype, k.dtype), shape=(x.type.shape[0], k.type.shape[0], None, None))
        return Apply(self, [x, k], [out])

    def perform(self, node, inputs, output_storage):
        x, k = inputs
        output_storage[0][0] = corr2d_valid_numpy(x, k).astype(node.outputs[0].dtype, copy=False)

    def infer_shape(self, fgraph, node, shapes):
        (n, _, h, w), (f, _, kh, kw) = shapes
        return [(n, f, h - kh + 1, w - kw + 1)]

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
        out = pt.tensor(dtype=upcast(x.dtype, g.dtype), shape=(g.type.shape[1], x.type.shape[1], None, None))
        return Apply(self, [x, g], [out])

    def perform(self, node, inputs, output_storage):
        x, g = inputs
        output_storage[0][0] = corr2d_weights_numpy(x, g).astype(node.outputs[0].dtype, copy=False)

    def infer_shape(self, fgraph, node, shapes):
        (_, c, h, w), (_, f, rows, cols) = shapes
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
        out = pt.tensor(dtype=upcast(g.dtype, k.dtype), shape=(g.type.shape[0], k.type.shape[1], None, None))
        return Apply(self, [x, g, k], [out])

    def perform(self, node, inputs, output_storage):
        x, g, k = inputs
        dx = corr2d_input_grad_numpy(g, k, x.shape[2], x.shape[3])
        output_storage[0][0] = dx.astype(node.outputs[0].dtype, copy=False)

    def infer_shape(self, fgraph, node, shapes):
        (n, _, h, w), _, (_, c, _, _) = shapes
        return [(n, c, h, w)]

    def connection_pattern(self, node):
        return [[False], [True], [True]]

    def pullback(self, inputs, outputs, output_grads):
        x, g, k = inputs
        (gx,) = output_grads
        return [disconnected_type(), corr2d_valid(gx, k), corr2d_weights(gx, g)]


corr2d_valid = Corr2dValid()
corr2d_weights = Corr2dWeights()
corr2d_input_grad = Corr2dInputGrad()


def conv2d(x, w, border_mode: str = "valid", filter_shape: tuple[int, int, int, int] | None = None):
    """Theano's conv2d: true convolution of x (N, C, H, W) with w (F, C, kh, kw).

    'valid' gives H - kh + 1 rows, 'full' gives H + kh - 1. `filter_shape` (static) lets 'full' pad
    with constants; without it the padding is read from w's shape at run time.
    """
    if border_mode not in ("valid", "full"):
        raise ValueError(f"border_mode must be 'valid' or 'full', not {border_mode!r}")
    if border_mode == "full":
        kh, kw = filter_shape[2:] if filter_shape is not None else (w.shape[2], w.shape[3])
        x = _pad(x, kh - 1, kw - 1)
    return corr2d_valid(x, w[:, :, ::-1, ::-1])


# --- Max pooling ---------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _max_pool_kernel(x, out):
    n, c, h, w = x.shape
    rows, cols = out.shape[2], out.shape[3]
    for nc in range(n * c):
        i, j = nc // c, nc % c
        for r in range(rows):
            for q in range(cols):
                best = x[i, j, 2 * r, 2 * q]
                for a in range(2):
                    for b in range(2):
                        rr, qq = 2 * r + a, 2 * q + b
                        if rr < h and qq < w and x[i, j, rr, qq] > best:
                            best = x[i, j, rr, qq]
                out[i, j, r, q] = best


@numba.njit(cache=True, nogil=True)
def _max_pool_grad_kernel(x, gz, gx):
    n, c, h, w = x.shape
    rows, cols = gz.shape[2], gz.shape[3]
    for nc in range(n * c):
        i, j = nc // c, nc % c
        for r in range(rows):
            for q in range(cols):
                best_r, best_q = 2 * r, 2 * q
                best = x[i, j, best_r, best_q]
                for a in range(2):
                    for b in range(2):
                        rr, qq = 2 * r + a, 2 * q + b
                        if rr < h and qq < w and x[i, j, rr, qq] > best:  # strict: the first maximum wins
                            best, best_r, best_q = x[i, j, rr, qq], rr, qq
                gx[i, j, best_r, best_q] = gz[i, j, r, q]


def max_pool_numpy(x: np.ndarray) -> np.ndarray:
    """2x2 max pooling, ignore_border=False (an odd last row or column pools alone)."""
    n, c, h, w = x.shape
    out = np.empty((n, c, (h + 1) // 2, (w + 1) // 2), dtype=x.dtype)
    _max_pool_kernel(np.ascontiguousarray(x), out)
    return out


def max_pool_grad_numpy(x: np.ndarray, gz: np.ndarray) -> np.ndarray:
    """Route each output gradient to the first maximum of its window (row-major), as cuDNN does."""
    gx = np.zeros(x.shape, dtype=gz.dtype)
    _max_pool_grad_kernel(np.ascontiguousarray(x), np.ascontiguousarray(gz), gx)
    return gx


class MaxPool2x2(Op):
    """Non-overlapping 2x2 max pooling, ignore_border=False: output (ceil(H/2), ceil(W/2))."""

    __props__ = ()

    def make_node(self, x):
        x = pt.as_tensor_variable(x)
        if x.ndim != 4:
            raise TypeError("MaxPool2x2 takes a 4-d tensor")
        out = pt.tensor(dtype=x.dtype, shape=(x.type.shape[0], x.type.shape[1], None, None))
        return Apply(self, [x], [out])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = max_pool_numpy(inputs[0])

    def infer_shape(self, fgraph, node, shapes):
        n, c, h, w = shapes[0]
        return [(n, c, (h + 1) // 2, (w + 1) // 2)]

    def pullback(self, inputs, outputs, output_grads):
        return [max_pool_grad(inputs[0], output_grads[0])]


class MaxPool2x2Grad(Op):
    __props__ = ()

    def make_node(self, x, gz):
        x = pt.as_tensor_variable(x)
        gz = pt.as_tensor_variable(gz)
        return Apply(self, [x, gz], [x.type()])

    def perform(self, node, inputs, output_storage):
        x, gz = inputs
        output_storage[0][0] = max_pool_grad_numpy(x, gz).astype(node.outputs[0].dtype, copy=False)

    def infer_shape(self, fgraph, node, shapes):
        return [shapes[0]]


max_pool_2x2 = MaxPool2x2()
max_pool_grad = MaxPool2x2Grad()

max_pool_2d = max_pool_2x2  # the notebook's max_pool_2d(x, (2, 2)), ignore_border=False
