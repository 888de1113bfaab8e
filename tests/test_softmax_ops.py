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
        # Under c the Numba kernels find it and the NumPy check names it.
        message = rf"label {bad} is outside the model's 10 classes" if backend_name == "c" else "outside the model's"
        with pytest.raises(ValueError, match=message):
            fn(logits, labels)


@pytest.mark.parametrize("backend_name", _backends())
@pytest.mark.parametrize("dtype", ["int64", "uint8", "int8"])
def test_labels_of_any_integer_type(backend_name, dtype):
    logits, labels = pt.matrix("logits", dtype="float32"), pt.vector("labels", dtype=dtype)
    cost = cross_entropy(logits, labels)
    fn = backend.function([logits, labels], [cost, pytensor.grad(cost, logits)],
                          mode=backend.compile_mode(backend_name))
    x, y = _batch(rows=9, seed=4)
    ref_cost, ref_gradient, _ = _reference(x, y)
    got_cost, got_gradient = fn(x, y.astype(dtype))
    assert float(got_cost) == pytest.approx(ref_cost, rel=1e-6)
    np.testing.assert_allclose(got_gradient, ref_gradient, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend_name", ["c", "numba"])
def test_as_many_labels_as_rows_and_an_empty_batch(backend_name):
    fn = _head_function(backend_name)
    logits, labels = _batch(rows=4)
    for wrong in (labels[:3], labels[:1]):  # one label would broadcast in NumPy: refused all the same
        with pytest.raises(ValueError, match="labels"):
            fn(logits, wrong)
    cost, gradient, probs = fn(logits[:0], labels[:0])
    assert np.isnan(cost) and gradient.shape == (0, 10) and probs.shape == (0, 10)


def test_jax_marks_a_bad_label_with_nan_and_refuses_a_wrong_count():
    pytest.importorskip("jax")
    fn = _head_function("jax")
    logits, labels = _batch(rows=4)
    labels[1] = 10
    cost, gradient, _ = fn(logits, labels)
    gradient = np.asarray(gradient)
    assert np.isnan(cost) and np.isnan(gradient[1]).all() and np.isfinite(gradient[[0, 2, 3]]).all()
    with pytest.raises(ValueError, match="labels for"):
        fn(logits, labels[:3])


def test_finite_differences():
    rng = np.random.default_rng(3)
    labels = np.array([0, 3, 1, 3, 2], np.int32)
    mode = backend.compile_mode("c")
    verify_grad(lambda x: SoftmaxCrossEntropy()(x, labels), [rng.standard_normal((5, 4))], rng=rng, mode=mode)
    verify_grad(lambda x: (RowSoftmax()(x) * np.arange(4.0)).sum(), [rng.standard_normal((5, 4))], rng=rng,
                mode=mode)


def test_second_derivatives_by_finite_differences():
    """The gradient Op has a gradient of its own (a gradient penalty, double backpropagation)."""
    rng = np.random.default_rng(5)
    labels = np.array([2, 0, 1], np.int32)
    weights = rng.standard_normal((3, 4))  # a projection, so the check sees every entry of the gradient
    mode = backend.compile_mode("c")
    verify_grad(lambda g, x: (SoftmaxCrossEntropyGrad()(g, x, labels) * weights).sum(),
                [np.asarray(1.7), rng.standard_normal((3, 4))], rng=rng, mode=mode)
    # And through pytensor.grad twice: the gradient norm's gradient, against the primitive formula's.
    x = pt.matrix("x", dtype="float64")
    primitive = -pt.mean(pt.log(softmax_reference(x))[pt.arange(3), labels])
    penalties = [(pytensor.grad(c, x) ** 2).sum() for c in (cross_entropy(x, labels), primitive)]
    fn = pytensor.function([x], [pytensor.grad(p, x) for p in penalties], mode=mode)
    ours, theirs = fn(rng.standard_normal((3, 4)))
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)


def softmax_reference(x):
    e = pt.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


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


def test_the_c_backend_runs_the_nopython_kernels(monkeypatch):
    """Under c the head's perform calls the Numba kernels: with the NumPy code made to fail, it still runs
    (and a float16 head, which the kernels are not compiled for, still takes the NumPy code)."""
    from mnistgui.core import softmax_ops

    fn = _head_function("c")

    def refuse(*args):
        raise AssertionError("the NumPy code ran")

    monkeypatch.setattr(softmax_ops, "softmax_cross_entropy_numpy", refuse)
    monkeypatch.setattr(softmax_ops, "softmax_cross_entropy_grad_numpy", refuse)
    logits, labels = _batch()
    cost, gradient, _ = fn(logits, labels)
    ref_cost, ref_gradient, _ = _reference(logits, labels)
    assert float(cost) == pytest.approx(ref_cost, rel=1e-6)
    np.testing.assert_allclose(gradient, 3 * ref_gradient, rtol=1e-5, atol=1e-7)
    monkeypatch.undo()
    half = pt.matrix("half", dtype="float16")
    y = pt.ivector("y")
    fn16 = backend.function([half, y], cross_entropy(half, y), mode=backend.compile_mode("c"))
    assert float(fn16(logits.astype(np.float16), labels)) == pytest.approx(ref_cost, rel=1e-2)
