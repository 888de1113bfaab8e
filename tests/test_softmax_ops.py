"""The classifier head's Ops (softmax, cross-entropy and its gradient) against float64 references, on
every backend, by finite differences, and as the single nodes they exist to be."""

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.gradient import verify_grad
from pytensor.tensor.elemwise import CAReduce, Elemwise

from mnistgui.core import backend
from mnistgui.core.layers import cross_entropy, softmax
from mnistgui.core.softmax_ops import RowSoftmax, SoftmaxCrossEntropy, SoftmaxCrossEntropyGrad


def _backends():
    names = ["c", "numba"]
    try:
        import jax  # noqa: F401

        names.append("jax")
    except ImportError:
        pass
    return names


def _reference(logits, labels):
    """Cost, its gradient and the probabilities in float64, written out from the definition."""
    x = logits.astype(np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    probs = e / e.sum(axis=1, keepdims=True)
    rows = np.arange(len(labels))
    cost = -np.log(probs[rows, labels]).mean()
    onehot = np.zeros_like(probs)
    onehot[rows, labels] = 1
    return cost, (probs - onehot) / len(labels), probs


def _head_function(backend_name):
    logits, labels = pt.matrix("logits", dtype="float32"), pt.ivector("labels")
    cost = cross_entropy(logits, labels)
    scaled = np.float32(3.0) * cost  # an output gradient other than 1 reaches the gradient Op
    outputs = [cost, pytensor.grad(scaled, logits), softmax(logits)]
    return backend.function([logits, labels], outputs, mode=backend.compile_mode(backend_name))


def _batch(rows=128, classes=10, scale=4.0, seed=0):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((rows, classes)) * scale).astype(np.float32)
    return logits, rng.integers(0, classes, rows).astype(np.int32)


@pytest.mark.parametrize("backend_name", _backends())
def test_head_matches_the_float64_definition_on_every_backend(backend_name):
    fn = _head_function(backend_name)
    for logits, labels in (_batch(), _batch(rows=1, classes=3, seed=1), _batch(rows=7, scale=40.0, seed=2)):
        cost, gradient, probs = fn(logits, labels)
        ref_cost, ref_gradient, ref_probs = _reference(logits, labels)
        assert np.asarray(cost).dtype == np.float32 and np.asarray(cost).shape == ()
        assert gradient.dtype == np.float32 and probs.dtype == np.float32
        assert float(cost) == pytest.approx(ref_cost, rel=1e-6, abs=1e-6)
        np.testing.assert_allclose(gradient, 3.0 * ref_gradient, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(probs, ref_probs, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("backend_name", _backends())
def test_head_is_stable_for_huge_logits(backend_name):
    """Logits of 1e4 overflow exp() in float32; a blown-up run must still see a finite cost."""
    logits = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4]], np.float32)
    labels = np.array([1, 2], np.int32)
    cost, gradient, probs = _head_function(backend_name)(logits, labels)
    assert float(cost) == pytest.approx((1e4 + np.log(2)) / 2, rel=1e-6)
    np.testing.assert_allclose(probs, [[1, 0, 0], [0, 0.5, 0.5]], atol=1e-7)
    np.testing.assert_allclose(gradient, 1.5 * np.array([[1, -1, 0], [0, 0.5, -0.5]]), atol=1e-6)


@pytest.mark.parametrize("backend_name", ["c", "numba"])
def test_a_label_outside_the_classes_is_a_clear_error(backend_name):
    fn = _head_function(backend_name)
    logits, labels = _batch(rows=4)
    for bad in (10, -1):
        labels[2] = bad
        with pytest.raises(ValueError, match="outside the model's"):
            fn(logits, labels)


def test_finite_differences():
    rng = np.random.default_rng(3)
    labels = np.array([0, 3, 1, 3, 2], np.int32)
    mode = backend.compile_mode("c")
    verify_grad(lambda x: SoftmaxCrossEntropy()(x, labels), [rng.standard_normal((5, 4))], rng=rng, mode=mode)
    verify_grad(lambda x: (RowSoftmax()(x) * np.arange(4.0)).sum(), [rng.standard_normal((5, 4))], rng=rng,
                mode=mode)


def test_the_head_adds_one_node_forward_and_one_backward():
    """What the Ops are for: no elementwise or reduction node of the head is left for the c backend to
    compile a module for (the scaled output gradient folds into a constant)."""
    fn = _head_function("c")
    ops = [node.op for node in fn.maker.fgraph.toposort()]
    kinds = {type(op) for op in ops}
    assert {SoftmaxCrossEntropy, SoftmaxCrossEntropyGrad, RowSoftmax} <= kinds
    assert not [op for op in ops if isinstance(op, (Elemwise, CAReduce))], ops


def test_wrong_inputs_are_type_errors():
    with pytest.raises(TypeError, match="float matrix"):
        cross_entropy(pt.tensor3(dtype="float32"), pt.ivector())
    with pytest.raises(TypeError, match="integer vector"):
        cross_entropy(pt.matrix(dtype="float32"), pt.vector(dtype="float32"))
    with pytest.raises(TypeError, match="float matrix"):
        softmax(pt.imatrix())
