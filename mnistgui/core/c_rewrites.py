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

**A product with the batch of images skips its all-zero pixel columns.** `dot(pixels, w)` and the SGD
update `w - lr * dot(pixels.T, d)`, where `pixels` is `cast(images, float32) * scale` for the uint8 batch
and `w` a shared matrix at least pixel_products.MIN_COLUMNS wide, become pixel_products' Ops, which take
the uint8 batch itself (see there); a sigmoid of the product is taken in the same pass.
"""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.graph.rewriting.basic import dfs_rewriter, in2out, node_rewriter
from pytensor.scalar import basic as scalar
from pytensor.scalar.math import Sigmoid
from pytensor.tensor.elemwise import DimShuffle, Elemwise
from pytensor.tensor.math import Dot

from . import pixel_products
from .blas import cblas_gemm
from .pixel_products import PixelGemmUpdate, PixelProduct

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


def _scaled_pixels(x):
    """(images, scale) if `x` is the fused loop cast(images, float32) * scale, for a uint8 matrix `images`
    and a float32 constant `scale`, else None."""
    node = x.owner
    if node is None or not isinstance(node.op, Elemwise) or x.dtype != "float32" or x.ndim != 2 \
            or len(node.inputs) != 1 or node.inputs[0].dtype != "uint8" or node.inputs[0].ndim != 2:
        return None
    composite = node.op.scalar_op
    if not isinstance(composite, scalar.Composite) or len(composite.outputs) != 1:
        return None
    out = composite.outputs[0]
    if out.owner is None or not isinstance(out.owner.op, scalar.Mul) or len(out.owner.inputs) != 2:
        return None
    for cast, scale in (out.owner.inputs, reversed(out.owner.inputs)):
        if isinstance(scale, scalar.ScalarConstant) and scale.dtype == "float32" and cast.owner is not None \
                and isinstance(cast.owner.op, scalar.Cast) and cast.owner.op.o_type.dtype == "float32" \
                and cast.owner.inputs[0] is composite.inputs[0]:
            return node.inputs[0], pt.constant(np.asarray(scale.data, dtype="float32"))
    return None


def _wide_shared_weights(w) -> bool:
    if not isinstance(w, SharedVariable) or w.dtype != "float32" or w.ndim != 2:
        return False
    value = w.get_value(borrow=True)
    return value.ndim == 2 and value.shape[1] >= pixel_products.MIN_COLUMNS


def _products_left_to_blas_are_small(fgraph) -> bool:
    """Whether every other product in the graph is with a shared matrix narrower than MIN_COLUMNS one way.
    The pixel products' threads want BLAS on one thread (backend.kernel_cores); a graph with a large
    product besides (the dropout MLP's 625 x 625 layer) keeps BLAS's threads and NumPy's products
    (its 10,000 test images: 0.075 s so, 0.085 s with the kernels and BLAS on one thread, measured)."""
    for node in fgraph.apply_nodes:
        if isinstance(node.op, Dot):
            operands = node.inputs
        elif isinstance(node.op, GemmUpdate):
            operands = node.inputs[2:]
        else:
            continue
        if _scaled_pixels(operands[0]) is not None or _transposed_scaled_pixels(operands[0]) is not None:
            continue  # one of the pixel products themselves
        for operand in operands:
            inner = _transpose_of(operand)
            shared = operand if inner is None else inner
            if isinstance(shared, SharedVariable) and np.ndim(value := shared.get_value(borrow=True)) == 2 \
                    and min(value.shape) >= pixel_products.MIN_COLUMNS:
                return False
    return True


@node_rewriter([Dot])
def product_of_pixels(fgraph, node):
    x, w = node.inputs
    parts = _scaled_pixels(x)
    if parts is None or not _wide_shared_weights(w) or node.outputs[0].dtype != "float32" \
            or not _products_left_to_blas_are_small(fgraph) or pixel_products.library() is None:
        return None
    images, scale = parts
    return [PixelProduct()(images, scale, w)]


def _transpose_of(x):
    """y if `x` is y.T, else None."""
    if x.owner is not None and isinstance(x.owner.op, DimShuffle) and tuple(x.owner.op.new_order) == (1, 0):
        return x.owner.inputs[0]
    return None


def _transposed_scaled_pixels(x):
    """(images, scale) if `x` is the transpose of _scaled_pixels' pattern: transposed after the scaling (where
    the scaled pixels feed a forward product too) or before it (PyTensor moves a lone transpose inwards)."""
    inner = _transpose_of(x)
    if inner is not None:
        return _scaled_pixels(inner)
    parts = _scaled_pixels(x)
    if parts is None:
        return None
    images = _transpose_of(parts[0])
    return None if images is None else (images, parts[1])


@node_rewriter([Elemwise, NumpySigmoid])
def sigmoid_of_pixel_product(fgraph, node):
    """sigmoid(PixelProduct) as one pass, where nothing else reads the product (the sigmoid MLP's hidden
    layer: its gradient reads the sigmoid's output)."""
    if isinstance(node.op, Elemwise) and (not isinstance(node.op.scalar_op, Sigmoid) or node.op.inplace_pattern):
        return None
    (product,) = node.inputs
    owner = product.owner
    if owner is None or not isinstance(owner.op, PixelProduct) or owner.op.sigmoid or len(fgraph.clients[product]) != 1:
        return None
    return [PixelProduct(sigmoid=True)(*owner.inputs)]


@node_rewriter([GemmUpdate])
def gemm_update_of_pixels(fgraph, node):
    w, lr, a, d = node.inputs
    parts = _transposed_scaled_pixels(a)
    if parts is None or not _wide_shared_weights(w) or d.dtype != "float32" \
            or not _products_left_to_blas_are_small(fgraph) or pixel_products.library() is None:
        return None
    images, scale = parts
    return [PixelGemmUpdate(inplace=node.op.inplace)(w, lr, images, scale, d)]


@node_rewriter([GemmUpdate, PixelGemmUpdate], inplace=True)
def gemm_update_in_place(fgraph, node):
    if not node.op.inplace:
        return [type(node.op)(inplace=True)(*node.inputs)]
    return None


def register_c_rewrites(mode):
    """The c mode with the rewrites of this module."""
    mode = mode.register((in2out(sigmoid_of_pixel_product, standalone_sigmoid_to_numpy, sgd_update_to_gemm,
                                 gemm_update_of_pixels, product_of_pixels, name="mnistgui_c_fast_paths"),
                          REWRITE_POSITION))
    # The destroy handler refuses the in-place form where w is read after the update or may not be
    # overwritten (an input the caller passed, not an updated shared variable): then it stays a copy.
    return mode.register((dfs_rewriter(gemm_update_in_place, name="mnistgui_gemm_update_in_place"), INPLACE_POSITION))
