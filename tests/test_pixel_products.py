"""The pixel products (core/pixel_products.c): the forward product and the SGD update of a first layer,
taking the uint8 batch itself and skipping its all-zero pixel columns. Against float64 products of the
same operands, the same bits on any number of threads, in the graphs where they belong and nowhere else."""

import logging
import os
import threading

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

from mnistgui.core import backend, pixel_products
from mnistgui.core.pixel_products import PixelGemmUpdate, PixelProduct, pixel_gemm_update, pixel_product

from .conftest import blas_threads, wait_for_forked_child

SCALE = np.float32(1.0 / 255.0)
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@pytest.fixture(scope="module")
def batches(mnist):
    return mnist.train_images.reshape(len(mnist.train_images), -1)


def _weights(shape, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * 0.01).astype(np.float32)


def _float64_product(images, w):
    return (images.astype(np.float32) * SCALE).astype(np.float64) @ w.astype(np.float64)


def _bound(images, w):
    """float32 rounding over k terms: k ulps of the sum of the terms' magnitudes."""
    pixels = np.abs(images.astype(np.float32) * SCALE).astype(np.float64)
    return images.shape[1] * np.finfo(np.float32).eps * (pixels @ np.abs(w.astype(np.float64))) + 1e-30


def test_the_kernels_compile_on_this_machine():
    assert pixel_products.library() is not None


@pytest.mark.parametrize("rows, columns", [(128, 625), (96, 625), (7, 33), (1, 1), (130, 17), (13, 64)])
def test_the_forward_product_equals_float64_within_rounding_on_any_number_of_threads(batches, rows, columns):
    images = np.ascontiguousarray(batches[1000 : 1000 + rows])
    w = _weights((784, columns))
    results = []
    for threads in (1, 2, 3):
        results.append(pixel_product(images, SCALE, w, threads=threads))
        assert pixel_products.last_parts() == min(threads, CORES)  # the pool ran, on at most the cores there are
    assert all(np.array_equal(results[0], other) for other in results[1:])
    assert np.all(np.abs(results[0] - _float64_product(images, w)) <= _bound(images, w))


def test_the_sigmoid_in_the_same_pass_is_within_a_few_ulps_of_float64(batches):
    images = np.ascontiguousarray(batches[2000:2128])
    results = {}
    for std in (0.01, 0.3):
        w = _weights((784, 625), 10) * np.float32(std / 0.01)
        product = pixel_product(images, SCALE, w)
        results[std] = [pixel_product(images, SCALE, w, sigmoid=True, threads=threads) for threads in (1, 2)]
        assert np.array_equal(*results[std])
        exact = 1 / (1 + np.exp(-product.astype(np.float64)))
        ulps = np.abs(results[std][0] - exact) / np.spacing(exact.astype(np.float32))
        assert ulps.max() <= 4, (std, ulps.max())
    assert results[0.3][0].min() < 1e-5 and results[0.3][0].max() > 1 - 1e-5  # the tails reached


def test_the_sigmoids_tails_are_one_and_zero_and_nan_stays_nan():
    """Beyond exp's range the sigmoid is 1 or exactly 0, never a denormal (as NumPy's, whose exp
    overflows); a NaN product stays NaN, so a diverging run is still seen."""
    images = np.zeros((3, 784), dtype=np.uint8)
    images[:, 0] = 255
    w = np.zeros((784, 80), dtype=np.float32)
    w[0] = np.linspace(-300, 300, 80)
    w[0, 40] = np.nan
    got = pixel_product(images, SCALE, w, sigmoid=True)[0]
    assert np.isnan(got[40]) and np.isnan(got).sum() == 1
    values = got[~np.isnan(got)]
    assert np.all((values == 0) | (values >= np.finfo(np.float32).tiny))
    assert got[0] == 0 and got[-1] == 1
    assert np.all(np.diff(values) >= 0)


@pytest.mark.parametrize("rows, columns, strided", [(128, 625, False), (7, 17, True), (130, 33, False),
                                                     (1, 1, True), (64, 100, True)])
def test_the_update_equals_float64_within_rounding_on_any_number_of_threads(batches, rows, columns, strided):
    images = batches[: 2 * rows : 2, ::-1] if strided else np.ascontiguousarray(batches[:rows])
    w, d = _weights((784, columns), 1), _weights((rows, columns), 2)
    results = []
    for threads in (1, 2, 3):
        results.append(pixel_gemm_update(w.copy(), -0.05, images, SCALE, d, threads=threads))
        assert pixel_products.last_parts() == min(threads, CORES)
    assert all(np.array_equal(results[0], other) for other in results[1:])
    pixels = (images.astype(np.float32) * SCALE).astype(np.float64)
    expected = w.astype(np.float64) - 0.05 * (pixels.T @ d.astype(np.float64))
    bound = 0.05 * rows * np.finfo(np.float32).eps * (np.abs(pixels.T) @ np.abs(d.astype(np.float64))) \
        + np.finfo(np.float32).eps * np.abs(expected)
    assert np.all(np.abs(results[0] - expected) <= bound)
    # The weights of a pixel column that is zero in every image are not touched, bit for bit.
    zero = ~images.any(axis=0)
    assert zero.sum() > 100
    assert np.array_equal(results[0][zero], w[zero])
    assert not np.array_equal(results[0][~zero], w[~zero])


def test_an_edge_column_is_updated_with_one_rounding_as_the_others():
    """The last columns past a whole tile (625 = 19 x 32 + 17) get w + alpha * sum in one fused
    multiply-add, as a full tile's do: the same bits as a tile-wide matrix's first columns."""
    rng = np.random.default_rng(8)
    images = rng.integers(0, 256, (16, 784)).astype(np.uint8)
    w, d = _weights((784, 32), 6), _weights((16, 32), 7)
    full = pixel_gemm_update(w.copy(), -0.05, images, SCALE, d)
    for width in (17, 5, 1):
        edge = pixel_gemm_update(np.ascontiguousarray(w[:, :width]), -0.05, images, SCALE,
                                 np.ascontiguousarray(d[:, :width]))
        assert np.array_equal(edge, full[:, :width]), width


def test_a_blank_or_empty_batch():
    w = _weights((784, 40))
    blank = np.zeros((9, 784), dtype=np.uint8)
    assert pixel_products.nonzero_columns(blank) == 0
    assert np.array_equal(pixel_product(blank, SCALE, w), np.zeros((9, 40), dtype=np.float32))
    assert np.array_equal(pixel_gemm_update(w.copy(), -0.5, blank, SCALE, _weights((9, 40))), w)
    assert pixel_product(np.zeros((0, 784), dtype=np.uint8), SCALE, w).shape == (0, 40)
    assert np.array_equal(pixel_gemm_update(w.copy(), -0.5, np.zeros((0, 784), dtype=np.uint8), SCALE,
                                            np.zeros((0, 40), dtype=np.float32)), w)


def test_leaving_out_a_zero_column_changes_no_bit(batches):
    """Zero columns added between the others change the column count and the packing, not the sums."""
    images = np.ascontiguousarray(batches[5000:5128])
    w = _weights((784, 625), 3)
    positions = np.sort(np.random.default_rng(4).integers(0, 785, 150))
    wider = np.insert(images, positions, 0, axis=1)
    wider_w = np.insert(w, positions, _weights((150, 625), 5), axis=0)
    assert pixel_products.nonzero_columns(wider) == pixel_products.nonzero_columns(images)
    assert np.array_equal(pixel_product(wider, SCALE, wider_w), pixel_product(images, SCALE, w))


def test_a_column_that_is_zero_throughout_is_never_read(batches):
    """Infinite weights behind a zero column reach no output (BLAS would make them NaN: 0 * inf)."""
    images = np.ascontiguousarray(batches[:128])
    zero = np.flatnonzero(~images.any(axis=0))
    w = _weights((784, 625))
    w[zero] = np.inf
    assert np.all(np.isfinite(pixel_product(images, SCALE, w)))
    assert pixel_products.nonzero_columns(images) == 784 - len(zero)


def test_strided_images_and_weights_in_any_layout(batches):
    images = batches[:256:2, ::-1]  # every other image, its pixels reversed: strides (2 * 784, -1)
    w = np.asfortranarray(_weights((784, 100)))
    got = pixel_product(images, SCALE, w)
    assert np.all(np.abs(got - _float64_product(images, w)) <= _bound(images, w))


def test_wrong_operands_are_refused_with_their_shapes(batches):
    images = np.ascontiguousarray(batches[:8])
    with pytest.raises(ValueError, match="uint8"):
        pixel_product(images.astype(np.float32), SCALE, _weights((784, 64)))
    with pytest.raises(ValueError, match=r"\(8, 784\) @ weights \(783, 64\)"):
        pixel_product(images, SCALE, _weights((783, 64)))
    with pytest.raises(ValueError, match="float32"):
        pixel_product(images, SCALE, _weights((784, 64)).astype(np.float64))
    with pytest.raises(ValueError, match="C-contiguous, writeable"):
        pixel_gemm_update(_weights((784, 64)).T.copy().T, -0.1, images, SCALE, _weights((8, 64)))


def test_two_threads_calling_at_once_both_get_their_products(batches):
    """One call runs on the pool at a time; a second computes on its own thread meanwhile."""
    w = _weights((784, 625))
    inputs = [np.ascontiguousarray(batches[i * 128 : (i + 1) * 128]) for i in range(8)]
    expected = [pixel_product(images, SCALE, w, threads=1) for images in inputs]
    failures = []

    parts = []

    def run(offset):
        for _ in range(20):
            for index in range(offset, len(inputs), 2):
                if not np.array_equal(pixel_product(inputs[index], SCALE, w, threads=2), expected[index]):
                    failures.append(index)
                parts.append(pixel_products.last_parts())

    threads = [threading.Thread(target=run, args=(offset,)) for offset in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert set(parts) <= {1, min(2, CORES)} and min(2, CORES) in parts  # the pool, or alone while it was taken


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX-only")
def test_a_forked_child_makes_its_own_threads(batches):
    images = np.ascontiguousarray(batches[:128])
    w = _weights((784, 625))
    expected = pixel_product(images, SCALE, w, threads=2)  # the pool's threads run in the parent
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os._exit(0 if np.array_equal(pixel_product(images, SCALE, w, threads=2), expected) else 1)
        finally:
            os._exit(2)
    assert wait_for_forked_child(pid, "computing a pixel product") == 0


def test_a_missing_or_failing_compiler_leaves_numpys_products(monkeypatch, caplog):
    monkeypatch.setattr(pixel_products, "_state", {})
    monkeypatch.setattr(pixel_products, "compile_command", lambda: ["cc-that-is-not-there-mnistgui"])
    with caplog.at_level(logging.WARNING, logger="mnistgui.core.pixel_products"):
        assert pixel_products.library() is None
    assert "not available" in caplog.text
    monkeypatch.setattr(pixel_products, "compile_command", lambda: ["false"])
    monkeypatch.setattr(pixel_products, "_state", {})
    with caplog.at_level(logging.WARNING, logger="mnistgui.core.pixel_products"):
        assert pixel_products.library() is None
    assert "did not compile" in caplog.text
    images = np.random.default_rng(0).integers(0, 256, (8, 784)).astype(np.uint8)
    w = _weights((784, 64))
    np.testing.assert_allclose(pixel_product(images, SCALE, w), _float64_product(images, w), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pixel_product(images, SCALE, w, sigmoid=True),
                               1 / (1 + np.exp(-_float64_product(images, w))), rtol=1e-5)


def _ops(fn):
    return [node.op for node in fn.maker.fgraph.toposort()]


def _first_layer_graph(columns):
    images = pt.matrix("images", dtype="uint8")
    w = pytensor.shared(_weights((784, columns)), name="w")
    pixels = pt.cast(images, "float32") * SCALE
    return images, w, pixels


def _pixel_ops(fn):
    return [op for op in _ops(fn) if isinstance(op, (PixelProduct, PixelGemmUpdate))]


def test_only_a_product_of_scaled_uint8_pixels_with_wide_shared_weights_is_taken(batches):
    images_value = np.ascontiguousarray(batches[:32])
    c = backend.compile_mode("c")
    images, w, pixels = _first_layer_graph(625)
    fn = backend.function([images], pt.dot(pixels, w), mode=c)
    assert sum(isinstance(op, PixelProduct) for op in _ops(fn)) == 1
    assert np.array_equal(fn(images_value), pixel_product(images_value, SCALE, w.get_value()))
    narrow_images, narrow_w, narrow_pixels = _first_layer_graph(10)  # logistic regression's width
    assert not any(isinstance(op, PixelProduct)
                   for op in _ops(backend.function([narrow_images], pt.dot(narrow_pixels, narrow_w), mode=c)))
    floats = pt.matrix("floats", dtype="float32")
    assert not any(isinstance(op, PixelProduct) for op in _ops(backend.function([floats], pt.dot(floats, w), mode=c)))
    # A sigmoid of the product joins it, unless the product itself is read too.
    hidden = pt.sigmoid(pt.dot(pixels, w))
    fused = backend.function([images], hidden, mode=c)
    assert [op.sigmoid for op in _pixel_ops(fused)] == [True]
    assert np.array_equal(fused(images_value), pixel_product(images_value, SCALE, w.get_value(), sigmoid=True))
    both = backend.function([images], [hidden, pt.dot(pixels, w)], mode=c)
    assert [op.sigmoid for op in _pixel_ops(both)] == [False]
    # A graph with a large product besides keeps BLAS's threads for it, and NumPy's products.
    square = pytensor.shared(_weights((625, 625)), name="square")
    assert _pixel_ops(backend.function([images], pt.dot(pt.sigmoid(pt.dot(pixels, w)), square), mode=c)) == []
    # The Numba backend keeps PyTensor's product.
    numba = backend.function([images], pt.dot(pixels, w), mode=backend.compile_mode("numba"))
    assert not any(isinstance(op, PixelProduct) for op in _ops(numba))


def test_near_misses_of_the_pattern_keep_pytensors_products():
    images, w, pixels = _first_layer_graph(625)
    scale = pt.scalar("scale", dtype="float32")
    wide = pt.matrix("wide", dtype="uint16")
    weights = pt.matrix("weights", dtype="float32")
    d = pt.matrix("d", dtype="float32")
    cases = {
        "a scale given at run time": ([images, scale], pt.dot(pt.cast(images, "float32") * scale, w)),
        "16-bit images": ([wide], pt.dot(pt.cast(wide, "float32") * SCALE, w)),
        "float64 pixels": ([images], pt.dot(pt.cast(images, "float64") * np.float64(1 / 255), w)),
        "weights passed in, not shared": ([images, weights], pt.dot(pixels, weights)),
        "a pixel offset as well": ([images], pt.dot(pt.cast(images, "float32") * SCALE + np.float32(1), w)),
        "pixels on the right": ([images, d], pt.dot(d.T, pixels)),
    }
    for name, (inputs, output) in cases.items():
        assert _pixel_ops(backend.function(inputs, output, mode=backend.compile_mode("c"))) == [], name
    w_value = w.get_value()
    update = {
        "a scale given at run time": ([images, scale, d],
                                      w - np.float32(0.1) * pt.dot((pt.cast(images, "float32") * scale).T, d)),
        "16-bit images": ([wide, d], w - np.float32(0.1) * pt.dot((pt.cast(wide, "float32") * SCALE).T, d)),
    }
    for name, (inputs, new_w) in update.items():
        fn = backend.function(inputs, [], updates=[(w, new_w)], mode=backend.compile_mode("c"))
        assert not any(isinstance(op, PixelGemmUpdate) for op in _ops(fn)), name
    w.set_value(w_value)


def test_the_sgd_update_of_the_first_layer_is_taken_in_place(batches):
    images, w, pixels = _first_layer_graph(625)
    d = pt.matrix("d", dtype="float32")
    w_before = w.get_value()
    fn = backend.function([images, d], [], updates=[(w, w - np.float32(0.1) * pt.dot(pixels.T, d))],
                          mode=backend.compile_mode("c"))
    assert [op.inplace for op in _ops(fn) if isinstance(op, PixelGemmUpdate)] == [True]
    images_value, d_value = np.ascontiguousarray(batches[:64]), _weights((64, 625), 9)
    fn(images_value, d_value)
    assert np.array_equal(w.get_value(), pixel_gemm_update(w_before.copy(), -np.float32(0.1), images_value, SCALE,
                                                           d_value))


def test_the_sigmoid_mlp_runs_them_and_holds_blas_to_one_thread(mnist):
    from mnistgui.core.config import Config
    from mnistgui.core.training import Trainer, create_model

    config = Config.for_model("mlp", backend="c", train_size=1280, test_size=500, epochs=1, seed=3)
    trainer = Trainer(create_model(config), mnist.subset(1280, 500))
    trainer.compile()
    ops = _ops(trainer._train_fn)
    assert [op.sigmoid for op in ops if isinstance(op, PixelProduct)] == [True]  # the hidden layer in one pass
    assert [op.inplace for op in ops if isinstance(op, PixelGemmUpdate)] == [True]
    assert trainer.model.runs_pixel_products
    with backend.kernel_cores(trainer.model):
        assert set(blas_threads()) == {1}
    others = Trainer(create_model(Config.for_model("dropout_mlp", backend="c", train_size=1280, test_size=500)),
                     mnist.subset(1280, 500))
    others.compile()
    # Its training graph takes dropped-out pixels; its prediction graph takes the pixels, but keeps BLAS for
    # its 625 x 625 layer, and so NumPy's product for the first as well.
    assert _pixel_ops(others._train_fn) == [] and _pixel_ops(others.model._predict) == []
    assert not others.model.runs_pixel_products


def test_the_sigmoid_mlp_trains_as_with_numpys_products(mnist, monkeypatch):
    """One epoch of 1,280 images from the same start, with the kernels and with NumPy's BLAS."""
    from mnistgui.core.config import Config
    from mnistgui.core.training import Trainer, create_model

    results = {}
    for kernels in (True, False):
        if not kernels:
            monkeypatch.setattr(pixel_products, "_state", {"library": None})
        config = Config.for_model("mlp", backend="c", train_size=1280, test_size=500, epochs=1, seed=11)
        trainer = Trainer(create_model(config), mnist.subset(1280, 500))
        trainer.compile()
        assert trainer.model.runs_pixel_products is kernels
        results[kernels] = (list(trainer.train())[-1].cost, trainer.model.get_state()["params"])
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-5)
    for name, value in results[True][1].items():
        np.testing.assert_allclose(value, results[False][1][name], rtol=1e-4, atol=1e-6, err_msg=name)
