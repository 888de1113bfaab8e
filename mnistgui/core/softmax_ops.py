"""The classifier's head as three Ops: softmax, and the softmax cross-entropy with its gradient.

Written from primitives, as in the notebook, the head is a dozen graph nodes: a row maximum, a
subtraction, an exponential, a row sum, a logarithm, the picked entries, the mean, and as many again
for the gradient. Under the c backend each is a C module that a cold start compiles with g++: 16 of
a cold convnet's 32 modules, 16 of logistic regression's 19. On a (128, 10) batch each node is a few
microseconds of arithmetic.

Here the head is one node forward and one backward. Under Numba they are nopython kernels; under the
c backend `perform` calls the same kernels (no module to compile; 8 and 11 µs a call on a batch of
128, where NumPy's dozen calls took 29 µs each), and the NumPy code below names a bad label; under
JAX, `jax.nn`. PyTensor's own Softmax and LogSoftmax are no help: the C backend runs them through Python at
36 ms a call for a (128, 10) input.

The arithmetic, the same in the three implementations (float32 in and out):
    shifted = x - max(x, row)                         per row
    loss_i  = log(sum_j exp(shifted_ij)) - shifted_i,label_i    (the sum and the log in float64)
    cost    = mean_i loss_i                           (accumulated in float64)
    d cost / d x = (softmax(x) - onehot(label)) * d cost / n
"""

from __future__ import annotations

import numba
import numpy as np
import pytensor.tensor as pt
from pytensor.gradient import disconnected_type
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op

from .ops import _CACHE, start_compilation_thread  # _CACHE: a frozen app has no source for Numba to cache beside

_NUMBA_KERNEL_VERSION = 4  # bump when a kernel changes, so PyTensor's Numba cache is refreshed
_KERNEL_DTYPES = (np.float32, np.float64)  # the c backend's perform calls the kernels for these (float16: NumPy)


def _check_labels(labels: np.ndarray, x: np.ndarray) -> None:
    if len(labels) != len(x):
        raise ValueError(f"{len(labels)} labels for {len(x)} rows of logits")
    classes = x.shape[1]
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        bad = labels[(labels < 0) | (labels >= classes)][0]
        raise ValueError(f"label {bad} is outside the model's {classes} classes (0 to {classes - 1})")


def softmax_numpy(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    e /= e.sum(axis=1, keepdims=True)
    return e


def softmax_cross_entropy_numpy(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean cross-entropy of integer `labels` under softmax(x), as a 0-d array of x's dtype (NaN for no rows)."""
    _check_labels(labels, x)
    if len(x) == 0:
        return np.asarray(np.nan, dtype=x.dtype)
    shifted = x - x.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(shifted).sum(axis=1, dtype=np.float64))
    picked = shifted[np.arange(len(labels)), labels]
    return np.asarray((log_sum - picked).mean(), dtype=x.dtype)


def softmax_cross_entropy_grad_numpy(g: np.ndarray, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    _check_labels(labels, x)
    if len(x) == 0:
        return np.empty_like(x)
    dx = softmax_numpy(x)
    dx[np.arange(len(labels)), labels] -= 1
    dx *= np.asarray(g, dtype=x.dtype) / x.dtype.type(len(labels))
    return dx


def _kernel_or_numpy(kernel, numpy_version, logits, inputs):
    """The c backend's perform: the nopython kernel for float32 and float64 logits, else NumPy; NumPy
    also where the kernel refuses its input, for the message that names the label and the classes."""
    if logits.dtype not in _KERNEL_DTYPES:
        return numpy_version(*inputs)
    try:
        return kernel(*inputs)
    except ValueError:
        return numpy_version(*inputs)


def _logits(x):
    x = pt.as_tensor_variable(x)
    if x.ndim != 2 or np.dtype(x.dtype).kind != "f":
        raise TypeError(f"the softmax takes a float matrix (samples, classes), not {x.type}")
    return x


def _labels(labels):
    labels = pt.as_tensor_variable(labels)
    if labels.ndim != 1 or np.dtype(labels.dtype).kind not in "iu":
        raise TypeError(f"the labels must be an integer vector, not {labels.type}")
    return labels


class RowSoftmax(Op):
    """softmax(x) along each row of a matrix."""

    __props__ = ()

    def make_node(self, x):
        x = _logits(x)
        return Apply(self, [x], [x.type()])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = softmax_numpy(inputs[0])

    def infer_shape(self, *args):  # (fgraph, node, shapes) on PyTensor 3.0, (node, shapes) on 3.3
        return [args[-1][0]]

    def pullback(self, inputs, outputs, output_grads):
        (probs,) = outputs
        (g,) = output_grads
        return [probs * (g - (g * probs).sum(axis=1, keepdims=True))]


class SoftmaxCrossEntropy(Op):
    """The mean categorical cross-entropy of integer labels under softmax(logits): a scalar."""

    __props__ = ()

    def make_node(self, logits, labels):
        logits, labels = _logits(logits), _labels(labels)
        return Apply(self, [logits, labels], [pt.scalar(dtype=logits.dtype)])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = _kernel_or_numpy(softmax_cross_entropy_nb, softmax_cross_entropy_numpy, inputs[0], inputs)

    def infer_shape(self, *args):
        return [()]

    def connection_pattern(self, node):
        return [[True], [False]]

    def pullback(self, inputs, outputs, output_grads):
        logits, labels = inputs
        (g,) = output_grads
        return [softmax_cross_entropy_grad(g, logits, labels), disconnected_type()]


class SoftmaxCrossEntropyGrad(Op):
    """d SoftmaxCrossEntropy / d logits, times the output gradient g (a scalar)."""

    __props__ = ()

    def make_node(self, g, logits, labels):
        g = pt.as_tensor_variable(g)
        logits, labels = _logits(logits), _labels(labels)
        if g.ndim != 0:
            raise TypeError(f"the cross-entropy's output gradient is a scalar, not {g.type}")
        return Apply(self, [g, logits, labels], [logits.type()])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = _kernel_or_numpy(softmax_cross_entropy_grad_nb, softmax_cross_entropy_grad_numpy,
                                                inputs[1], inputs)

    def infer_shape(self, *args):
        return [args[-1][1]]

    def connection_pattern(self, node):
        return [[True], [True], [False]]

    def pullback(self, inputs, outputs, output_grads):
        """For second derivatives (a gradient penalty, double backpropagation): with p = softmax(x),
        s = g / n and G the incoming gradient, d/dx = s p (G - sum_j G_j p_j) row by row, and
        d/dg = sum((p - onehot) G) / n."""
        g, logits, labels = inputs
        (upstream,) = output_grads
        probs = row_softmax(logits)
        rows = pt.cast(logits.shape[0], logits.dtype)
        onehot = pt.cast(pt.eq(pt.arange(logits.shape[1])[None, :], labels[:, None]), logits.dtype)
        scale = g / rows
        d_logits = scale * probs * (upstream - (upstream * probs).sum(axis=1, keepdims=True))
        d_g = ((probs - onehot) * upstream).sum() / rows
        return [d_g, d_logits, disconnected_type()]


row_softmax = RowSoftmax()
softmax_cross_entropy = SoftmaxCrossEntropy()
softmax_cross_entropy_grad = SoftmaxCrossEntropyGrad()


# --- Numba: nopython kernels, row by row ----------------------------------------------------------------


@numba.njit(cache=_CACHE, nogil=True, fastmath=False)
def _check_labels_nb(labels, x):
    if labels.shape[0] != x.shape[0]:
        raise ValueError("as many labels as rows of logits are needed")
    classes = x.shape[1]
    for label in labels:
        if label < 0 or label >= classes:
            raise ValueError("a label is outside the model's classes")


@numba.njit(cache=_CACHE, nogil=True, fastmath=False)
def _row_max_nb(x, i):
    top = x[i, 0]
    for j in range(1, x.shape[1]):
        top = max(top, x[i, j])
    return top


@numba.njit(cache=_CACHE, nogil=True, fastmath=False)
def softmax_nb(x):
    n, k = x.shape
    out = np.empty_like(x)
    for i in range(n):
        top = _row_max_nb(x, i)
        total = 0.0
        for j in range(k):
            out[i, j] = np.exp(x[i, j] - top)
            total += out[i, j]
        for j in range(k):
            out[i, j] /= total
    return out


@numba.njit(cache=_CACHE, nogil=True, fastmath=False)
def softmax_cross_entropy_nb(x, labels):
    n, k = x.shape
    _check_labels_nb(labels, x)
    loss = 0.0
    for i in range(n):
        top = _row_max_nb(x, i)
        total = 0.0
        for j in range(k):
            total += np.float64(np.exp(x[i, j] - top))
        loss += np.log(total) - np.float64(x[i, labels[i]] - top)
    out = np.empty((), dtype=x.dtype)
    out[()] = loss / n if n else np.nan
    return out


@numba.njit(cache=_CACHE, nogil=True, fastmath=False)
def softmax_cross_entropy_grad_nb(g, x, labels):
    n, k = x.shape
    _check_labels_nb(labels, x)
    dx = softmax_nb(x)
    scale = g.item() / max(n, 1)
    for i in range(n):
        dx[i, labels[i]] -= 1
        for j in range(k):
            dx[i, j] *= scale
    return dx


def _compile_kernels(dtype) -> None:
    """Call the cross-entropy kernels once with the types a training step passes them (float32
    logits from a matrix product, int32 labels sliced from the training set, read-only as the Trainer
    keeps them, a 0-d output gradient)."""
    logits, labels = np.zeros((2, 3), dtype), np.zeros(2, np.int32)
    labels.flags.writeable = False
    softmax_cross_entropy_nb(logits, labels)
    softmax_cross_entropy_grad_nb(np.ones((), dtype), logits, labels)


def start_kernel_compilation(dtype="float32"):
    """Compile the c backend's cross-entropy kernels on a thread (a second from an empty Numba cache),
    beside the graph's rewrites and C modules; see ops.start_kernel_compilation."""
    return start_compilation_thread("mnistgui-numba-head", _compile_kernels, dtype)


def register_numba() -> None:
    from pytensor.link.numba.dispatch import basic as numba_basic
    from pytensor.link.numba.dispatch.basic import register_funcify_default_op_cache_key

    @register_funcify_default_op_cache_key(RowSoftmax)
    def numba_funcify_row_softmax(op, node, **kwargs):
        @numba_basic.numba_njit(fastmath=False)
        def row_softmax_nb(x):
            return softmax_nb(x)

        return row_softmax_nb, _NUMBA_KERNEL_VERSION

    @register_funcify_default_op_cache_key(SoftmaxCrossEntropy)
    def numba_funcify_softmax_cross_entropy(op, node, **kwargs):
        @numba_basic.numba_njit(fastmath=False)
        def cross_entropy_nb(x, labels):
            return softmax_cross_entropy_nb(x, labels)

        return cross_entropy_nb, _NUMBA_KERNEL_VERSION

    @register_funcify_default_op_cache_key(SoftmaxCrossEntropyGrad)
    def numba_funcify_softmax_cross_entropy_grad(op, node, **kwargs):
        @numba_basic.numba_njit(fastmath=False)
        def cross_entropy_grad_nb(g, x, labels):
            return softmax_cross_entropy_grad_nb(g, x, labels)

        return cross_entropy_grad_nb, _NUMBA_KERNEL_VERSION


# --- JAX -----------------------------------------------------------------------------------------------


def register_jax() -> None:
    """Jitted code cannot raise on a value: a label outside the classes makes the cost and its gradient
    NaN there (which the trainer reports as a diverged run), where c and Numba raise. Shapes are known
    when JAX traces, so a count of labels that differs from the rows raises then."""
    import jax
    import jax.numpy as jnp
    from pytensor.link.jax.dispatch import jax_funcify

    def _check_shapes_jax(x, labels):
        if labels.shape[0] != x.shape[0]:
            raise ValueError(f"{labels.shape[0]} labels for {x.shape[0]} rows of logits")

    def _valid_jax(labels, x):
        return (labels >= 0) & (labels < x.shape[1])

    @jax_funcify.register(RowSoftmax)
    def jax_funcify_row_softmax(op, node, **kwargs):
        return lambda x: jax.nn.softmax(x, axis=1)

    @jax_funcify.register(SoftmaxCrossEntropy)
    def jax_funcify_softmax_cross_entropy(op, node, **kwargs):
        def cross_entropy(x, labels):
            _check_shapes_jax(x, labels)
            log_probs = jax.nn.log_softmax(x, axis=1)
            index = jnp.clip(labels, 0, x.shape[1] - 1)[:, None].astype(jnp.int32)
            picked = jnp.take_along_axis(log_probs, index, axis=1)[:, 0]
            picked = jnp.where(_valid_jax(labels, x), picked, jnp.nan)  # no error from jitted code: NaN
            return (-jnp.mean(picked)).astype(x.dtype)

        return cross_entropy

    @jax_funcify.register(SoftmaxCrossEntropyGrad)
    def jax_funcify_softmax_cross_entropy_grad(op, node, **kwargs):
        def cross_entropy_grad(g, x, labels):
            _check_shapes_jax(x, labels)
            onehot = jax.nn.one_hot(labels, x.shape[1], dtype=x.dtype)
            dx = (jax.nn.softmax(x, axis=1) - onehot) * (jnp.asarray(g, dtype=x.dtype) / max(x.shape[0], 1))
            return jnp.where(_valid_jax(labels, x)[:, None], dx, jnp.nan)

        return cross_entropy_grad
