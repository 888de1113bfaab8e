"""A ReLU followed by dropout, as one Op forward and one backward.

Written out, `dropout(relu(x))` is three passes over a layer a step and three more back: PyTensor fuses
them into single-threaded loops that read x and the uniform draws and write the output, the 0/1 mask
and the ReLU's output (kept for its gradient, eq(relu(x), x)); the backward loop reads all three again.
On the convnet's first layer, (128, 15, 15, 32), that was 2.1 ms forward and 1.1 ms back of a 55 ms step.
`ReluDropout` writes the output and one byte per unit instead (bit 0: x >= 0, the ReLU passes a
gradient; bit 1: the unit is kept), `ReluDropoutGrad` reads the gradient and that byte, and both split
a large batch over the kernel threads (see ops.py).

The arithmetic is PyTensor's own, operation for operation: relu(x) is maximum(x, 0) (NaN stays NaN, -0
stays -0), the output (scale * relu(x)) * keep, and the gradient ((scale * [x >= 0]) * g) * keep, where
scale = float32(1 / retain) as in `layers.dropout`, and a unit is kept where its draw u < retain in double
precision, as the unfused graph compared (`kept_threshold`: the same units on every backend). So a run's
history is the unfused graph's bit for bit where the scale is exact (dropout 0.2 and 0.5, the notebook's,
and any power of two). Otherwise a kept unit may differ in its last bit: PyTensor's C loop multiplies in
double precision by the constant's printed decimal (1.1111112 for float32(1 / 0.9)), this Op by the
float32 constant's own value (JAX in float32).
"""

from __future__ import annotations

import numba
import numpy as np
import pytensor.tensor as pt
from pytensor.gradient import DisconnectedType, disconnected_type
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.graph.traversal import ancestors

from . import ops
from .ops import _CACHE

# Below this many units one thread does it: the dropout MLP's layers (128 x 784, 128 x 625) take 0.1 ms,
# and there BLAS's own threads hold the other core between products.
PARALLEL_MIN_UNITS = 1 << 18
_PASSES_GRADIENT, _KEPT = 1, 2


# The products in double precision, rounded once to the layer's type on the store, as PyTensor's C
# loop computes them (its constants are double literals): the same float32 for every finite product,
# and a dropped unit whose scaled value would overflow float32 is 0, not inf * 0.
@numba.njit(cache=_CACHE, nogil=True, fastmath=False)
def _relu_dropout_kernel(x, u, threshold, scale, y, code):
    zero = x.dtype.type(0)
    for i in range(x.size):
        v = x[i]
        relu = zero if zero > v else v  # PyTensor's maximum(v, 0): NaN and -0 pass through
        kept = u[i] <= threshold
        y[i] = (scale * np.float64(relu)) * (1.0 if kept else 0.0)
        code[i] = (_KEPT if kept else 0) | (_PASSES_GRADIENT if v >= zero else 0)


@numba.njit(cache=_CACHE, nogil=True, fastmath=False)
def _relu_dropout_grad_kernel(g, code, scale, gx):
    for i in range(g.size):
        c = code[i]
        passes = 1.0 if c & _PASSES_GRADIENT else 0.0
        kept = 1.0 if c & _KEPT else 0.0
        gx[i] = ((scale * passes) * np.float64(g[i])) * kept


def kept_threshold(retain: float) -> np.float32:
    """The largest float32 below retain: a float32 draw u is kept where u <= this, which is exactly
    where u < retain in double precision (the unfused graph's comparison, a float64 constant), on every
    backend, JAX's float32 included."""
    threshold = np.float32(retain)
    return threshold if float(threshold) < retain else np.nextafter(threshold, np.float32(0))


def _scale(retain: float) -> np.float64:
    """1 / retain as `layers.dropout` writes it, a float32 constant, for the kernels' double arithmetic."""
    return np.float64(np.float32(1.0 / retain))


def _flat(a):
    return a.reshape(-1)


def _in_parts(work, rows: int, units: int) -> None:
    """work(start, stop) over the rows: on the kernel threads for a large layer, else here."""
    if units >= PARALLEL_MIN_UNITS:
        ops._kernel_threads.run(work, rows, blas=False)
    else:
        work(0, rows)


def relu_dropout_forward(x, u, retain: float):
    """(y, code) from x and the draws u: the c backend's perform."""
    x, u = np.ascontiguousarray(x), np.ascontiguousarray(u)
    if u.shape != x.shape:
        raise ValueError(f"ReluDropout: draws of shape {u.shape} for units of shape {x.shape}")
    threshold = kept_threshold(retain)
    y, code = np.empty_like(x), np.empty(x.shape, np.uint8)
    scale = _scale(retain)

    def part(start, stop):
        _relu_dropout_kernel(_flat(x[start:stop]), _flat(u[start:stop]), threshold, scale, _flat(y[start:stop]),
                             _flat(code[start:stop]))

    _in_parts(part, len(x), x.size)
    return y, code


def relu_dropout_backward(g, code, retain: float):
    """The gradient with respect to x, from y's gradient and the forward pass's codes: the c backend's perform."""
    g, code = np.ascontiguousarray(g), np.ascontiguousarray(code)
    if code.shape != g.shape:
        raise ValueError(f"ReluDropoutGrad: codes of shape {code.shape} for a gradient of shape {g.shape}")
    gx = np.empty_like(g)
    scale = _scale(retain)

    def part(start, stop):
        _relu_dropout_grad_kernel(_flat(g[start:stop]), _flat(code[start:stop]), scale, _flat(gx[start:stop]))

    _in_parts(part, len(g), g.size)
    return gx


class _KeepRateOp(Op):
    __props__ = ("retain",)

    def __init__(self, retain: float):
        self.retain = float(retain)


class ReluDropout(_KeepRateOp):
    """(relu(x) * keep / retain, code) for uniform draws u, keep = u < retain."""

    def make_node(self, x, u):
        x, u = pt.as_tensor_variable(x), pt.as_tensor_variable(u)
        if x.dtype not in ("float32", "float64") or x.ndim != u.ndim or x.ndim == 0:
            raise TypeError("ReluDropout takes a float tensor and draws of its shape")
        return Apply(self, [x, u], [x.type(), pt.tensor(dtype="uint8", shape=x.type.shape)])

    def perform(self, node, inputs, output_storage):
        x, u = inputs
        y, code = relu_dropout_forward(x, u, self.retain)
        output_storage[0][0], output_storage[1][0] = y, code

    def infer_shape(self, *args):  # (fgraph, node, shapes) on PyTensor 3.0, (node, shapes) on 3.3
        x_shape = args[-1][0]
        return [x_shape, x_shape]

    def connection_pattern(self, node):
        return [[True, False], [False, False]]

    def pullback(self, inputs, outputs, output_grads):
        g = output_grads[0]
        if isinstance(g.type, DisconnectedType):
            return [disconnected_type(), disconnected_type()]
        return [ReluDropoutGrad(self.retain)(g, outputs[1]), disconnected_type()]


class ReluDropoutGrad(_KeepRateOp):
    """The gradient through `ReluDropout`, from the output's gradient and the forward pass's codes."""

    def make_node(self, g, code):
        g, code = pt.as_tensor_variable(g), pt.as_tensor_variable(code)
        if code.dtype != "uint8" or code.ndim != g.ndim:
            raise TypeError("ReluDropoutGrad takes a gradient and ReluDropout's uint8 codes of its shape")
        return Apply(self, [g, code], [g.type()])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = relu_dropout_backward(*inputs, self.retain)

    def infer_shape(self, *args):
        return [args[-1][0]]

    def connection_pattern(self, node):
        return [[True], [False]]


def used_by(outputs) -> bool:
    """Whether a graph computing `outputs` has a ReluDropout in it."""
    return any(v.owner is not None and isinstance(v.owner.op, ReluDropout) for v in ancestors(outputs))


def relu_dropout(x, u, retain: float):
    """relu(x) with each unit kept where u < retain and scaled by 1 / retain."""
    return ReluDropout(retain)(x, u)[0]


def _compile_kernels(dtype) -> None:
    """The two kernels with the types a training step passes them (flat views of C-contiguous arrays)."""
    x = np.zeros(2, dtype)
    code = np.zeros(2, np.uint8)
    _relu_dropout_kernel(x, np.zeros(2, np.float32), kept_threshold(0.5), _scale(0.5), np.empty_like(x), code)
    _relu_dropout_grad_kernel(x, code, _scale(0.5), np.empty_like(x))


def start_kernel_compilation(dtype="float32"):
    """Compile the kernels on a thread beside the graph's rewrites and C modules (ops.start_kernel_compilation)."""
    return ops.start_compilation_thread("mnistgui-numba-dropout", _compile_kernels, dtype)


# --- Numba and JAX ---------------------------------------------------------------------------------------


def register_numba() -> None:
    from pytensor.link.numba.dispatch import basic as numba_basic
    from pytensor.link.numba.dispatch.basic import register_funcify_default_op_cache_key

    @register_funcify_default_op_cache_key(ReluDropout)
    def numba_funcify_relu_dropout(op, node, **kwargs):
        threshold = kept_threshold(op.retain)
        dtype = np.dtype(node.outputs[0].dtype)
        scale = _scale(op.retain)

        @numba_basic.numba_njit(fastmath=False)
        def relu_dropout_nb(x, u):
            x, u = np.ascontiguousarray(x), np.ascontiguousarray(u)
            if u.shape != x.shape:
                raise ValueError("ReluDropout: draws and units of different shapes")
            y = np.empty(x.shape, dtype=dtype)
            code = np.empty(x.shape, dtype=np.uint8)
            _relu_dropout_kernel(x.reshape(-1), u.reshape(-1), threshold, scale, y.reshape(-1), code.reshape(-1))
            return y, code

        return relu_dropout_nb, ops._NUMBA_KERNEL_VERSION

    @register_funcify_default_op_cache_key(ReluDropoutGrad)
    def numba_funcify_relu_dropout_grad(op, node, **kwargs):
        dtype = np.dtype(node.outputs[0].dtype)
        scale = _scale(op.retain)

        @numba_basic.numba_njit(fastmath=False)
        def relu_dropout_grad_nb(g, code):
            g, code = np.ascontiguousarray(g), np.ascontiguousarray(code)
            if code.shape != g.shape:
                raise ValueError("ReluDropoutGrad: codes and gradient of different shapes")
            gx = np.empty(g.shape, dtype=dtype)
            _relu_dropout_grad_kernel(g.reshape(-1), code.reshape(-1), scale, gx.reshape(-1))
            return gx

        return relu_dropout_grad_nb, ops._NUMBA_KERNEL_VERSION


def register_jax() -> None:
    import jax.numpy as jnp
    from pytensor.link.jax.dispatch import jax_funcify

    @jax_funcify.register(ReluDropout)
    def jax_funcify_relu_dropout(op, node, **kwargs):
        threshold = kept_threshold(op.retain)
        dtype = node.outputs[0].dtype

        def relu_dropout_jax(x, u):
            scale = jnp.asarray(_scale(op.retain), dtype=dtype)  # float32: JAX keeps to it
            kept = u <= jnp.asarray(threshold, dtype=u.dtype)
            y = (scale * jnp.maximum(x, 0)) * kept.astype(dtype)
            code = jnp.where(kept, _KEPT, 0) | jnp.where(x >= 0, _PASSES_GRADIENT, 0)
            return y, code.astype(jnp.uint8)

        return relu_dropout_jax

    @jax_funcify.register(ReluDropoutGrad)
    def jax_funcify_relu_dropout_grad(op, node, **kwargs):
        dtype = node.outputs[0].dtype

        def relu_dropout_grad_jax(g, code):
            scale = jnp.asarray(_scale(op.retain), dtype=dtype)
            passes = ((code & _PASSES_GRADIENT) != 0).astype(dtype)
            kept = ((code & _KEPT) != 0).astype(dtype)
            return ((scale * passes) * g) * kept

        return relu_dropout_grad_jax
