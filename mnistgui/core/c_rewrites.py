"""Two fast paths the c backend's mode rewrites graphs into, after PyTensor's elementwise fusion.

**A sigmoid left alone runs NumPy's vectorised exponential.** PyTensor compiles `sigmoid` to a C loop
calling `exp` one element at a time: 0.21 ms a step on the sigmoid MLP's (128, 625) hidden layer,
profiled, where NumPy's SIMD float32 exponential and three more passes take 0.05-0.07 ms on the same
array (the MLP's step was 1.8 ms). The graph keeps PyTensor's own `sigmoid` (its gradient, its fusion
with neighbours, the Numba and JAX backends' code): only a sigmoid that fusion left as a node of its own
becomes `NumpySigmoid`. The formula is the same, 1 / (1 + exp(-x)) in the input's precision; NumPy's
exponential may differ from the C library's in the last bit.

**An SGD step is one BLAS call.** `w - lr * dot(a, b)`, a weight and its gradient's product, becomes
`GemmUpdate`: BLAS's gemm with beta 1 writes the step into w itself (see blas.py), where NumPy's
product filled a fresh matrix and PyTensor's fused loop read it back beside w (sigmoid MLP: 0.6 ms of
product and update a step, 0.42 ms as one call). It takes w's place in memory only where PyTensor's
destroy handler allows (an updated shared variable that nothing reads afterwards); elsewhere it
works on a copy. Where NumPy's BLAS cannot be called directly (blas.cblas_gemm is None), the graph
stays as it was.
"""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.graph.rewriting.basic import dfs_rewriter, in2out, node_rewriter
from pytensor.scalar import basic as scalar
from pytensor.scalar.math import Sigmoid
from pytensor.tensor.elemwise import Elemwise
from pytensor.tensor.math import Dot

from .blas import cblas_gemm

# After PyTensor's elementwise fusion (49) and its destroy handler (49.5), before its in-place
# elementwise rewrite (50.5, which would otherwise make the update loop write into w): a sigmoid still alone
# then is one the fusion found nothing to join, and an update is one fused loop.
REWRITE_POSITION = 49.9
INPLACE_POSITION = 50.3
# Below this many weights NumPy's product and a subtraction are as quick (logistic regression's 784 x 10:
# 35 µs a step either way, where the direct call measured 33-70 µs).
GEMM_MIN_SIZE = 1 << 16


def sigmoid_numpy(x: np.ndarray) -> np.ndarray:
    out = np.negative(x, out=np.empty_like(x))  # an array even for a 0-d x, where NumPy would give a scalar
    with np.errstate(over="ignore"):  # exp(88.8) overflows float32 to inf: 1 / (1 + inf) is the 0 wanted
        np.exp(out, out=out)
    out += 1
    return np.reciprocal(out, out=out)


class NumpySigmoid(Op):
    """1 / (1 + exp(-x)), elementwise, computed by NumPy; only ever put in a graph by the rewrite below."""

    __props__ = ()

    def make_node(self, x):
        return Apply(self, [x], [x.type()])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = sigmoid_numpy(inputs[0])

    def infer_shape(self, *args):  # (fgraph, node, shapes) on PyTensor 3.0, (node, shapes) on 3.3
        return [args[-1][0]]


numpy_sigmoid = NumpySigmoid()


@node_rewriter([Elemwise])
def standalone_sigmoid_to_numpy(fgraph, node):
    if not isinstance(node.op.scalar_op, Sigmoid) or node.op.inplace_pattern:
        return None
    (x,) = node.inputs
    (out,) = node.outputs
    if x.ndim == 0 or x.dtype not in ("float32", "float64") or x.type.broadcastable != out.type.broadcastable \
            or x.dtype != out.dtype:
        return None
    return [numpy_sigmoid(x)]


class GemmUpdate(Op):
    """w - lr * (a @ b) for matrices w, a, b and a scalar lr, as one BLAS gemm (beta 1)."""

    __props__ = ("inplace",)

    def __init__(self, inplace: bool = False):
        self.inplace = inplace
        if inplace:
            self.destroy_map = {0: [0]}

    def make_node(self, w, lr, a, b):
        return Apply(self, [w, lr, a, b], [w.type()])

    def perform(self, node, inputs, output_storage):
        w, lr, a, b = inputs
        if not self.inplace or not w.flags.c_contiguous or not w.flags.writeable:
            w = np.array(w, order="C")
        gemm = cblas_gemm(w.dtype) if w.size >= GEMM_MIN_SIZE else None
        if gemm is None or a.dtype != w.dtype or b.dtype != w.dtype:
            w -= lr * np.dot(a, b)  # lr: a 0-d array of w's dtype
        else:
            gemm(-float(lr), a, b, w)
        output_storage[0][0] = w

    def infer_shape(self, *args):
        return [args[-1][0]]


def _sgd_update_parts(node):
    """(w, lr, dot) if the fused loop `node` is exactly w - lr * dot(a, b), with lr a scalar (broadcast
    to a matrix, or a constant the fusion folded in), else None."""
    composite = node.op.scalar_op
    if not isinstance(composite, scalar.Composite) or len(composite.outputs) != 1:
        return None
    inner_to_outer = dict(zip(composite.inputs, node.inputs))
    out = composite.outputs[0]
    if out.owner is None or not isinstance(out.owner.op, scalar.Sub) or out.owner.inputs[0] is not composite.inputs[0]:
        return None
    product = out.owner.inputs[1]
    if product.owner is None or not isinstance(product.owner.op, scalar.Mul) or len(product.owner.inputs) != 2:
        return None
    w, dot, lr, lr_input = node.inputs[0], None, None, None
    for factor in product.owner.inputs:
        outer = inner_to_outer.get(factor)
        if outer is not None and outer.owner is not None and isinstance(outer.owner.op, Dot) and dot is None:
            dot = outer
        elif outer is not None and outer is not w and outer.ndim == 2 and all(outer.type.broadcastable) and lr is None:
            lr_input, lr = outer, outer.dimshuffle()
        elif isinstance(factor, scalar.ScalarConstant) and lr is None:
            lr = pt.constant(np.asarray(factor.data, dtype=w.dtype))
        else:
            return None
    if dot is None or lr is None or set(node.inputs) != {w, dot} | ({lr_input} if lr_input is not None else set()):
        return None  # a loop reading anything more is not this update
    if w.ndim != 2 or any(w.type.broadcastable) or not (w.type.broadcastable == dot.type.broadcastable
                                                      == node.outputs[0].type.broadcastable):
        return None
    if not (w.dtype == dot.dtype == lr.dtype == node.outputs[0].dtype) or w.dtype not in ("float32", "float64"):
        return None
    return w, lr, dot


@node_rewriter([Elemwise])
def sgd_update_to_gemm(fgraph, node):
    parts = _sgd_update_parts(node)
    if parts is None:
        return None
    w, lr, dot = parts
    if len(fgraph.clients[dot]) != 1 or cblas_gemm(w.dtype) is None:  # the product is used elsewhere too
        return None
    a, b = dot.owner.inputs
    return [GemmUpdate()(w, lr, a, b)]


@node_rewriter([GemmUpdate], inplace=True)
def gemm_update_in_place(fgraph, node):
    if not node.op.inplace:
        return [GemmUpdate(inplace=True)(*node.inputs)]
    return None


def register_c_rewrites(mode):
    """The c mode with the rewrites of this module."""
    mode = mode.register((in2out(standalone_sigmoid_to_numpy, sgd_update_to_gemm, name="mnistgui_c_fast_paths"),
                          REWRITE_POSITION))
    # The destroy handler refuses the in-place form where w is read after the update or may not be
    # overwritten (an input the caller passed, not an updated shared variable): then it stays a copy.
    return mode.register((dfs_rewriter(gemm_update_in_place, name="mnistgui_gemm_update_in_place"), INPLACE_POSITION))
