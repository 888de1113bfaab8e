"""The c backend's NumPy sigmoid: put in place of PyTensor's scalar C loop only where a sigmoid stands
alone, equal to the formula, and unchanged in its gradient."""

import warnings

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.tensor.elemwise import Elemwise

from mnistgui.core import backend
from mnistgui.core.activation_ops import NumpySigmoid, sigmoid_numpy


def _ops(fn):
    return [node.op for node in fn.maker.fgraph.toposort()]


def _c(inputs, outputs):
    return backend.function(inputs, outputs, mode=backend.compile_mode("c"))


def test_a_standalone_sigmoid_runs_in_numpy_under_c_only():
    x, w = pt.matrix("x"), pt.matrix("w")
    hidden = pt.sigmoid(pt.dot(x, w))  # between two products, as in the sigmoid MLP: nothing to fuse with
    outputs = [pt.dot(hidden, w.T)]
    c_ops = _ops(_c([x, w], outputs))
    assert sum(isinstance(op, NumpySigmoid) for op in c_ops) == 1
    assert not any(isinstance(op, Elemwise) and "igmoid" in str(op.scalar_op) for op in c_ops)
    numba_ops = _ops(backend.function([x, w], outputs, mode=backend.compile_mode("numba")))
    assert not any(isinstance(op, NumpySigmoid) for op in numba_ops)


def test_a_sigmoid_fused_with_its_neighbours_stays_in_the_fused_loop():
    x = pt.matrix("x")
    ops = _ops(_c([x], [2 * pt.sigmoid(x) + 1]))
    assert not any(isinstance(op, NumpySigmoid) for op in ops)
    assert len(ops) == 1 and "sigmoid" in str(ops[0].scalar_op).lower()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_values_match_the_formula_and_pytensors_sigmoid(dtype):
    x, w = pt.matrix("x", dtype=dtype), pt.matrix("w", dtype=dtype)
    hidden = pt.sigmoid(pt.dot(x, w))
    ours = _c([x, w], hidden)
    theirs = backend.function([x, w], hidden, mode=backend.compile_mode("numba"))
    rng = np.random.default_rng(0)
    xv = (rng.standard_normal((64, 30)) * 6).astype(dtype)
    wv = np.eye(30, dtype=dtype)
    got = ours(xv, wv)
    assert got.dtype == dtype
    exact = 1 / (1 + np.exp(-xv.astype(np.longdouble)))
    # Within a few units in the last place of the exact value, as PyTensor's own loop is.
    ulp = np.spacing(exact.astype(dtype))
    assert (np.abs(got - exact) <= 4 * ulp).all()
    np.testing.assert_allclose(got, theirs(xv, wv), rtol=4 * np.finfo(dtype).eps, atol=0)


def test_extremes_give_zero_and_one_without_a_warning():
    x = np.array([[-1e4, -100.0, -87.0, 0.0, 30.0, 100.0, 1e4, np.inf, -np.inf]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = sigmoid_numpy(x)
    np.testing.assert_array_equal(got[0, [0, 1, 6, 7, 8]], [0, 0, 1, 1, 0])
    assert got[0, 3] == 0.5 and got[0, 2] == pytest.approx(1.6458e-38, rel=1e-3)  # exp(87) still finite
    assert np.isnan(sigmoid_numpy(np.array([np.nan], np.float32)))[0]  # a NaN stays one: the trainer sees it


def test_the_gradient_through_the_rewritten_sigmoid():
    x, w = pt.matrix("x"), pt.matrix("w")
    cost = pt.sum(pt.dot(pt.sigmoid(pt.dot(x, w)), w.T) ** 2)
    grads = pytensor.grad(cost, [x, w])
    ours = _c([x, w], grads)
    assert any(isinstance(op, NumpySigmoid) for op in _ops(ours))
    theirs = backend.function([x, w], grads, mode=backend.compile_mode("numba"))
    rng = np.random.default_rng(1)
    xv, wv = rng.standard_normal((16, 12)).astype(np.float32), rng.standard_normal((12, 8)).astype(np.float32)
    for got, expected in zip(ours(xv, wv), theirs(xv, wv)):  # float32 sums of terms up to ~20, orders apart
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=2e-5 * np.abs(expected).max())
