"""The c backend's NumPy sigmoid: put in place of PyTensor's scalar C loop only where a sigmoid stands
alone, equal to the formula, and unchanged in its gradient."""

import warnings

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.tensor.elemwise import Elemwise
from pytensor.tensor.math import Dot

from mnistgui.core import backend
from mnistgui.core.c_rewrites import NumpySigmoid, sigmoid_numpy


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


# --- SGD's update as one BLAS gemm ---------------------------------------------------------------------


def test_numpys_blas_is_found_and_computes_every_layout():
    from mnistgui.core.blas import cblas_gemm

    for dtype in ("float32", "float64"):
        gemm = cblas_gemm(dtype)
        assert gemm is not None  # NumPy's wheels on Linux bring OpenBLAS (CI's machine included)
        rng = np.random.default_rng(2)
        c = rng.standard_normal((6, 5)).astype(dtype)
        a_c, b_c = rng.standard_normal((6, 4)).astype(dtype), rng.standard_normal((4, 5)).astype(dtype)
        strided = rng.standard_normal((6, 8)).astype(dtype)[:, ::2]  # neither C nor Fortran order: copied
        reversed_b = rng.standard_normal((4, 5)).astype(dtype)[::-1]  # negative strides: copied
        for a in (a_c, np.asfortranarray(a_c), strided, a_c[::-1][::-1]):
            for b in (b_c, np.asfortranarray(b_c), reversed_b, rng.standard_normal((10, 4)).astype(dtype).T[:, ::2]):
                expected = c - 0.25 * (a.astype(np.float64) @ b.astype(np.float64))
                got = c.copy()
                assert gemm(-0.25, a, b, got) is got
                np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="shapes"):
            gemm(1.0, a_c, b_c[:3], c.copy())
        with pytest.raises(ValueError, match="shapes"):
            gemm(1.0, a_c, b_c, np.asfortranarray(c))
        other = "float64" if dtype == "float32" else "float32"
        with pytest.raises(ValueError, match="not"):
            gemm(1.0, a_c.astype(other), b_c, c.copy())
        column, row = rng.standard_normal((6, 1)).astype(dtype), rng.standard_normal((1, 5)).astype(dtype)
        outer = c.copy()  # an inner dimension of 1: arrays both C- and Fortran-contiguous
        gemm(2.0, column, row, outer)
        np.testing.assert_allclose(outer, c + 2.0 * column @ row, rtol=1e-5, atol=1e-5)
        empty = c.copy()
        gemm(1.0, a_c[:, :0], b_c[:0], empty)  # an empty inner dimension adds nothing
        np.testing.assert_array_equal(empty, c)


def _sgd_step(w_value, inputs_value, grad_value, lr=0.5):
    w = pytensor.shared(w_value.copy(), name="w")
    x, g = pt.matrix("x"), pt.matrix("g")
    fn = backend.function([x, g], [], updates=[(w, w - np.float32(lr) * pt.dot(x.T, g))],
                          mode=backend.compile_mode("c"))
    fn(inputs_value, grad_value)
    return fn, w.get_value()


@pytest.mark.parametrize("shape", [(784, 625), (30, 10)])  # the MLP's weights, and ones under GEMM_MIN_SIZE
def test_an_sgd_update_is_one_in_place_gemm(shape):
    from mnistgui.core.c_rewrites import GemmUpdate

    rng = np.random.default_rng(3)
    w = rng.standard_normal(shape).astype(np.float32)
    x = rng.standard_normal((128, shape[0])).astype(np.float32)
    g = rng.standard_normal((128, shape[1])).astype(np.float32)
    fn, got = _sgd_step(w, x, g)
    nodes = [n for n in fn.maker.fgraph.toposort() if isinstance(n.op, GemmUpdate)]
    assert len(nodes) == 1 and nodes[0].op.inplace
    assert not any(isinstance(n.op, Dot) for n in fn.maker.fgraph.toposort())
    expected = w.astype(np.float64) - 0.5 * (x.T.astype(np.float64) @ g.astype(np.float64))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_an_update_of_a_callers_array_works_on_a_copy():
    """w passed in by the caller may not be overwritten: the destroy handler keeps the copying form."""
    from mnistgui.core.c_rewrites import GemmUpdate

    w, x, g = pt.matrix("w"), pt.matrix("x"), pt.matrix("g")
    fn = _c([w, x, g], w - np.float32(0.5) * pt.dot(x.T, g))
    ops = _ops(fn)
    assert [op.inplace for op in ops if isinstance(op, GemmUpdate)] == [False]
    rng = np.random.default_rng(4)
    wv = rng.standard_normal((300, 400)).astype(np.float32)
    xv, gv = rng.standard_normal((16, 300)).astype(np.float32), rng.standard_normal((16, 400)).astype(np.float32)
    before = wv.copy()
    got = fn(wv, xv, gv)
    np.testing.assert_array_equal(wv, before)
    np.testing.assert_allclose(got, before - 0.5 * xv.T @ gv, rtol=1e-4, atol=1e-4)


def test_a_product_used_twice_and_other_updates_are_left_alone():
    from mnistgui.core.c_rewrites import GemmUpdate

    w = pytensor.shared(np.ones((4, 3), np.float32), name="w")
    x, g = pt.matrix("x"), pt.matrix("g")
    step = pt.dot(x.T, g)
    shared_product = backend.function([x, g], step.sum(), updates=[(w, w - np.float32(0.1) * step)],
                                      mode=backend.compile_mode("c"))
    momentum_like = backend.function([x, g], [], updates=[(w, np.float32(0.9) * w - np.float32(0.1) * pt.dot(x.T, g))],
                                     mode=backend.compile_mode("c"))
    for fn in (shared_product, momentum_like):
        assert not any(isinstance(op, GemmUpdate) for op in _ops(fn))


def test_without_a_direct_blas_the_update_stays_numpys(monkeypatch):
    from mnistgui.core import c_rewrites

    monkeypatch.setattr(c_rewrites, "cblas_gemm", lambda dtype: None)
    rng = np.random.default_rng(5)
    w = rng.standard_normal((300, 200)).astype(np.float32)
    x, g = rng.standard_normal((8, 300)).astype(np.float32), rng.standard_normal((8, 200)).astype(np.float32)
    fn, got = _sgd_step(w, x, g)
    assert not any(isinstance(op, c_rewrites.GemmUpdate) for op in _ops(fn))
    np.testing.assert_allclose(got, w - 0.5 * x.T @ g, rtol=1e-4, atol=1e-4)


def test_the_sigmoid_mlp_trains_through_the_fast_paths(mnist):
    """The MLP's step has both; one epoch of 1,280 images from the same start matches the numba backend's."""
    from mnistgui.core.c_rewrites import GemmUpdate
    from mnistgui.core.config import Config
    from mnistgui.core.training import Trainer, create_model

    results = {}
    for name in ("c", "numba"):
        config = Config.for_model("mlp", backend=name, train_size=1280, test_size=500, epochs=1, seed=7)
        trainer = Trainer(create_model(config), mnist.subset(1280, 500))
        trainer.compile()
        if name == "c":
            ops = _ops(trainer._train_fn)
            # The hidden sigmoid is taken with the pixel product (test_pixel_products), else NumPy's.
            from mnistgui.core.pixel_products import PixelProduct

            assert sum(isinstance(op, NumpySigmoid) for op in ops) + sum(
                isinstance(op, PixelProduct) and op.sigmoid for op in ops) == 1
            # The output layer's update here; the first layer's is pixel_products' (test_pixel_products).
            assert [op.inplace for op in ops if isinstance(op, GemmUpdate)] == [True]
        result = list(trainer.train())[-1]
        results[name] = (result.cost, trainer.model.get_state())
    assert results["c"][0] == pytest.approx(results["numba"][0], rel=1e-5)
    for key, value in results["c"][1]["params"].items():
        np.testing.assert_allclose(value, results["numba"][1]["params"][key], rtol=1e-4, atol=1e-6)


def test_the_update_waits_for_every_reader_of_the_old_weights():
    """The forward product reads w in the same call that overwrites it: it must see the old w."""
    from mnistgui.core.c_rewrites import GemmUpdate

    rng = np.random.default_rng(6)
    w_value = rng.standard_normal((400, 300)).astype(np.float32)
    w = pytensor.shared(w_value.copy(), name="w")
    x, g, probe = pt.matrix("x"), pt.matrix("g"), pt.matrix("probe")
    fn = backend.function([x, g, probe], pt.dot(probe, w), updates=[(w, w - np.float32(0.5) * pt.dot(x.T, g))],
                          mode=backend.compile_mode("c"))
    assert [op.inplace for op in _ops(fn) if isinstance(op, GemmUpdate)] == [True]
    xv, gv = rng.standard_normal((16, 400)).astype(np.float32), rng.standard_normal((16, 300)).astype(np.float32)
    probe_value = rng.standard_normal((3, 400)).astype(np.float32)
    seen = fn(xv, gv, probe_value)
    np.testing.assert_allclose(seen, probe_value @ w_value, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(w.get_value(), w_value - 0.5 * xv.T @ gv, rtol=1e-4, atol=1e-4)


def test_only_w_minus_a_scalar_times_a_product_is_taken():
    from mnistgui.core.c_rewrites import GemmUpdate

    rng = np.random.default_rng(7)
    w, x, g = pt.matrix("w"), pt.matrix("x"), pt.matrix("g")
    rows = pt.vector("rows")
    row_x = pt.tensor("row_x", dtype="float32", shape=(1, None))  # a product of one row, broadcast over w
    cases = {
        "reversed": (np.float32(0.5) * pt.dot(x.T, g) - w, [w, x, g]),
        "a learning rate per row": (w - rows[:, None] * pt.dot(x.T, g), [w, rows, x, g]),
        "a broadcast product": (w - np.float32(0.5) * pt.dot(row_x, g), [w, row_x, g]),
    }
    wv = rng.standard_normal((300, 400)).astype(np.float32)
    values = {"w": wv, "x": rng.standard_normal((16, 300)).astype(np.float32),
              "g": rng.standard_normal((16, 400)).astype(np.float32), "rows": rng.random(300).astype(np.float32),
              "row_x": rng.standard_normal((1, 16)).astype(np.float32)}
    for name, (expression, inputs) in cases.items():
        fn = _c(inputs, expression)
        assert not any(isinstance(op, GemmUpdate) for op in _ops(fn)), name
        args = [values[v.name] for v in inputs]
        reference = backend.function(inputs, expression, mode=backend.compile_mode("numba"))(*args)
        np.testing.assert_allclose(fn(*args), reference, rtol=1e-4, atol=1e-4, err_msg=name)


def test_a_sigmoid_of_a_scalar_stays_an_array():
    v, u = pt.vector("v"), pt.vector("u")
    fn = _c([v, u], pt.sigmoid(pt.dot(v, u)))
    assert any(isinstance(op, Elemwise) for op in _ops(fn))  # PyTensor's own loop: nothing to gain on one number
    assert float(fn(np.ones(3, np.float32), np.ones(3, np.float32))) == pytest.approx(1 / (1 + np.exp(-3.0)))
    zero_d = sigmoid_numpy(np.array(2.0, np.float32))
    assert isinstance(zero_d, np.ndarray) and zero_d.shape == () and zero_d == pytest.approx(1 / (1 + np.exp(-2.0)))
