import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.gradient import verify_grad
from scipy.signal import convolve2d

from mnistgui.core import backend
from mnistgui.core.ops import conv2d, corr2d_valid, corr2d_weights, max_pool_2d

MODE = backend.compile_mode("c")  # compiles fastest; the Ops' kernels are the same in every backend


def _reference_conv(x, w, mode):
    """Multi-channel convolution from scipy, one (image, filter) pair at a time."""
    n, c = x.shape[:2]
    f = w.shape[0]
    out = [[sum(convolve2d(x[i, ch], w[j, ch], mode) for ch in range(c)) for j in range(f)] for i in range(n)]
    return np.array(out)


def _reference_pool(x):
    """2x2 max pooling with ignore_border=False, by loops."""
    n, c, h, w = x.shape
    out = np.empty((n, c, (h + 1) // 2, (w + 1) // 2), dtype=x.dtype)
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            out[:, :, i, j] = x[:, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].max(axis=(2, 3))
    return out


@pytest.mark.parametrize("mode", ["valid", "full"])
@pytest.mark.parametrize("shape", [((2, 3, 7, 6), (4, 3, 3, 2)), ((1, 1, 28, 28), (5, 1, 3, 3))])
def test_conv2d_matches_scipy(mode, shape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape[0])
    w = rng.standard_normal(shape[1])
    X, W = pt.tensor4(dtype="float64"), pt.tensor4(dtype="float64")
    fn = pytensor.function([X, W], conv2d(X, W, mode), mode=MODE)
    np.testing.assert_allclose(fn(x, w), _reference_conv(x, w, mode), rtol=1e-10, atol=1e-10)


def test_conv2d_with_static_filter_shape_gives_notebook_sizes():
    X = pt.tensor4(dtype="float32")
    W = pt.tensor4(dtype="float32")
    out = conv2d(X, W, "full", filter_shape=(32, 1, 3, 3))
    fn = pytensor.function([X, W], [out, max_pool_2d(out)], mode=MODE)
    a, b = fn(np.ones((2, 1, 28, 28), "float32"), np.ones((32, 1, 3, 3), "float32"))
    assert a.shape == (2, 32, 30, 30) and b.shape == (2, 32, 15, 15)
    assert a.dtype == np.float32


@pytest.mark.parametrize("size", [(4, 4), (5, 7), (13, 13), (1, 1)])
def test_max_pool_matches_loops_including_odd_sizes(size):
    x = np.random.default_rng(2).standard_normal((2, 3) + size)
    X = pt.tensor4(dtype="float64")
    fn = pytensor.function([X], max_pool_2d(X), mode=MODE)
    np.testing.assert_array_equal(fn(x), _reference_pool(x))


def test_max_pool_gradient_goes_to_first_maximum_only():
    X = pt.tensor4(dtype="float64")
    grad = pytensor.grad(max_pool_2d(X).sum(), X)
    fn = pytensor.function([X], grad, mode=MODE)
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 2, 2] = -1.0  # odd border window: its only real element
    expected = np.zeros((1, 1, 3, 3))
    expected[0, 0, 0, 0] = expected[0, 0, 0, 2] = expected[0, 0, 2, 0] = expected[0, 0, 2, 2] = 1.0
    np.testing.assert_array_equal(fn(x), expected)


@pytest.mark.parametrize("mode", ["valid", "full"])
def test_conv2d_gradient_matches_finite_differences(mode):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 6, 5))
    w = rng.standard_normal((4, 3, 3, 2))
    verify_grad(lambda a, b: conv2d(a, b, mode), [x, w], rng=rng, mode=MODE)


def test_weights_gradient_op_has_correct_gradients_too():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 5, 5, 2))  # channels-last, as the Ops work
    g = rng.standard_normal((2, 3, 3, 3))
    verify_grad(corr2d_weights, [x, g], rng=rng, mode=MODE)
    verify_grad(corr2d_valid, [x, rng.standard_normal((3, 2, 3, 3))], rng=rng, mode=MODE)


def test_max_pool_gradient_matches_finite_differences():
    rng = np.random.default_rng(5)
    verify_grad(max_pool_2d, [rng.standard_normal((2, 3, 5, 7))], rng=rng, mode=MODE)


def test_ops_run_under_numba():
    X = pt.tensor4(dtype="float32")
    W = pt.tensor4(dtype="float32")
    out = max_pool_2d(conv2d(X, W, "valid"))
    cost = out.sum()
    fn = pytensor.function([X, W], [out, pytensor.grad(cost, W)], mode=backend.compile_mode("numba"))
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 1, 8, 8)).astype("float32")
    w = rng.standard_normal((3, 1, 3, 3)).astype("float32")
    pooled, gw = fn(x, w)
    np.testing.assert_allclose(pooled, _reference_pool(_reference_conv(x, w, "valid")), rtol=1e-5)
    assert pooled.dtype == np.float32 and gw.dtype == np.float32 and gw.shape == w.shape


def test_input_gradient_op_has_correct_gradients():
    from mnistgui.core.ops import corr2d_input_grad

    rng = np.random.default_rng(7)
    x = pt.constant(np.zeros((2, 6, 5, 3)))  # channels-last: 6 x 5 images of 3 channels
    verify_grad(lambda g, k: corr2d_input_grad(x, g, k),
                [rng.standard_normal((2, 4, 3, 4)), rng.standard_normal((4, 3, 3, 3))], rng=rng, mode=MODE)


# --- the native Numba and JAX implementations against the C backend ----------------------------------


def _backend_mode(name):
    if name == "jax":
        pytest.importorskip("jax")
    return backend.compile_mode(name)


@pytest.mark.parametrize("name", ["numba", "jax"])
def test_conv_and_pool_with_gradients_match_c(name):
    """Forward and every gradient of a 'full' conv, a 'valid' conv and ceil-mode pooling (odd sizes)."""
    X, W1, W2 = pt.tensor4(dtype="float32"), pt.tensor4(dtype="float32"), pt.tensor4(dtype="float32")
    h = max_pool_2d(conv2d(X, W1, "full", filter_shape=(3, 2, 3, 3)))  # 7 x 6 -> 9 x 8 -> 5 x 4
    out = max_pool_2d(conv2d(h, W2, "valid"))  # 5 x 4 -> 3 x 2 -> 2 x 1
    cost = (out * out).sum() + (h * h).sum()
    outputs = [h, out, *pytensor.grad(cost, [X, W1, W2])]
    rng = np.random.default_rng(8)
    args = [rng.standard_normal(s).astype("float32") for s in ((2, 2, 7, 6), (3, 2, 3, 3), (4, 3, 2, 3))]
    expected = pytensor.function([X, W1, W2], outputs, mode=MODE)(*args)
    got = pytensor.function([X, W1, W2], outputs, mode=_backend_mode(name))(*args)
    for value, reference in zip(got, expected):
        value = np.asarray(value)
        assert value.dtype == np.float32 and value.shape == reference.shape
        np.testing.assert_allclose(value, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["numba", "jax"])
def test_pool_gradient_goes_to_first_maximum_in_every_backend(name):
    X = pt.tensor4(dtype="float32")
    fn = pytensor.function([X], pytensor.grad(max_pool_2d(X).sum(), X), mode=_backend_mode(name))
    x = np.zeros((1, 1, 3, 3), dtype="float32")  # every window a tie of zeros, bar the odd corner
    x[0, 0, 2, 2] = -1.0
    expected = np.zeros((1, 1, 3, 3), dtype="float32")
    expected[0, 0, 0, 0] = expected[0, 0, 0, 2] = expected[0, 0, 2, 0] = expected[0, 0, 2, 2] = 1.0
    np.testing.assert_array_equal(np.asarray(fn(x)), expected)


def test_static_full_padding_has_correct_gradients():
    """'full' with a static filter shape pads with the ZeroPad2d Op (what the convnet uses)."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 6, 5))
    w = rng.standard_normal((4, 3, 3, 2))
    verify_grad(lambda a, b: conv2d(a, b, "full", filter_shape=(4, 3, 3, 2)), [x, w], rng=rng, mode=MODE)
    X, W = pt.tensor4(dtype="float64"), pt.tensor4(dtype="float64")
    fn = pytensor.function([X, W], conv2d(X, W, "full", filter_shape=(4, 3, 3, 2)), mode=MODE)
    np.testing.assert_allclose(fn(x, w), _reference_conv(x, w, "full"), rtol=1e-10, atol=1e-10)


# --- the kernels split over threads ------------------------------------------------------------------


@pytest.mark.parametrize("threads", ["2", "3"])
def test_kernels_in_parts_equal_one_part(monkeypatch, threads):
    """Batches of 37 and 64 images cut into parts (threads) and blocks give what one part gives."""
    from mnistgui.core import ops

    rng = np.random.default_rng(5)
    for n, side, channels, filters in ((37, 9, 5, 6), (64, 30, 1, 32)):
        x = rng.standard_normal((n, side, side, channels))
        k = rng.standard_normal((filters, channels, 3, 3))
        g = rng.standard_normal((n, side - 2, side - 2, filters))
        pooled_in = rng.integers(-2, 3, size=(n, side - 2, side - 2, filters)).astype(np.float64)  # many ties
        pool_grad = rng.standard_normal((n, (side - 1) // 2, (side - 1) // 2, filters))

        def everything():
            return (ops.corr2d_nhwc(x, k), ops.corr2d_weights_nhwc(x, g), ops.corr2d_input_grad_nhwc(g, k, side, side),
                    ops.max_pool_nhwc(pooled_in), ops.max_pool_grad_nhwc(pooled_in, pool_grad))

        monkeypatch.setenv("MNISTGUI_THREADS", "1")
        single = everything()
        monkeypatch.setenv("MNISTGUI_THREADS", threads)
        parted = everything()
        for one, many in zip(single[:3], parted[:3]):
            np.testing.assert_allclose(many, one, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(parted[3], single[3])
        np.testing.assert_array_equal(parted[4], single[4])
        np.testing.assert_array_equal(parted[3].transpose(0, 3, 1, 2), _reference_pool(pooled_in.transpose(0, 3, 1, 2)))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_numba_kernels_in_parts_equal_the_c_kernels(monkeypatch, threads):
    """The nopython kernels cut a batch into the C kernels' parts (under `prange`) and blocks, and run a
    first layer as direct loops: the float64 reference's results within float32 rounding, and the C
    kernels' bits where no BLAS is involved (Numba's products call SciPy's OpenBLAS, the C kernels
    NumPy's); for one block, many blocks, a short last block, three parts, a batch too small to split,
    and pooling with ties and odd borders."""
    from mnistgui.core import ops

    monkeypatch.setenv("MNISTGUI_THREADS", str(threads))
    rng = np.random.default_rng(11)
    # (images, side, channels, filters): a direct first layer; blocks of 18 images over 37 images (a short
    # last block); three parts of 16-17 images with odd pooling borders; one block for all
    for n, side, channels, filters in ((40, 12, 1, 8), (37, 14, 32, 16), (50, 9, 3, 4), (3, 9, 5, 6)):
        x = rng.standard_normal((n, side, side, channels))
        k = rng.standard_normal((filters, channels, 3, 3))
        g = rng.standard_normal((n, side - 2, side - 2, filters))
        exact = (ops.corr2d_nhwc(x, k), ops.corr2d_weights_nhwc(x, g), ops.corr2d_input_grad_nhwc(g, k, side, side))
        x32, k32, g32 = (a.astype(np.float32) for a in (x, k, g))
        c = (ops.corr2d_nhwc(x32, k32), ops.corr2d_weights_nhwc(x32, g32), ops.corr2d_input_grad_nhwc(g32, k32, side, side))
        got = (ops.corr2d_nb(x32, k32, threads), ops.corr2d_weights_nb(x32, g32, threads),
               ops.corr2d_input_grad_nb(g32, k32, side, side, threads))
        for value, reference in zip(got, exact):
            assert value.dtype == np.float32 and value.shape == reference.shape
            np.testing.assert_allclose(value, reference, rtol=1e-4, atol=1e-5 * np.abs(reference).max())
        if channels * 9 <= ops._DIRECT_PATCH:  # direct loops, no BLAS: the C kernels' parts, the same bits
            np.testing.assert_array_equal(got[0], c[0])
            np.testing.assert_array_equal(got[1], c[1])
        pooled_in = rng.integers(-2, 3, size=g.shape).astype(np.float32)  # many ties
        pool_grad = rng.standard_normal((n, (side - 1) // 2, (side - 1) // 2, filters)).astype(np.float32)
        np.testing.assert_array_equal(ops.max_pool_nb(pooled_in, threads), ops.max_pool_nhwc(pooled_in))
        gx = np.full(pooled_in.shape, np.nan, np.float32)  # every element must be written
        ops.max_pool_grad_into_nb(pooled_in, pool_grad, gx, threads)
        np.testing.assert_array_equal(gx, ops.max_pool_grad_nhwc(pooled_in, pool_grad))
    assert ops._block_images(12 * 12 * 9 * 32) == 18  # the second case really runs in blocks
    a, b = rng.standard_normal((37, 20)).astype(np.float32), rng.standard_normal((20, 9)).astype(np.float32)
    np.testing.assert_allclose(ops.matmul_in_parts_nb(a, b, threads), a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)


def test_numba_kernels_run_alone_in_a_child_forked_after_numba_threads_started():
    """GNU OpenMP kills a forked child's first parallel launch: there the kernels take one part, graphs
    compiled before the fork included (they read the parts when they run)."""
    import os

    from tests.conftest import wait_for_forked_child

    from mnistgui.core import ops

    if ops.numba_kernel_threads() == 1:
        pytest.skip("Numba's kernels run on one thread here")
    x = np.ones((64, 6, 6, 2), np.float32)
    k = np.ones((3, 2, 3, 3), np.float32)
    expected = ops.corr2d_nb(x, k, ops.numba_kernel_threads())  # starts Numba's threads in this process
    pid = os.fork()
    if pid == 0:
        try:
            parts_at_fork = ops._numba_kernel_parts.value  # what compiled Numba graphs read: set by the fork hook
            threads = ops.numba_kernel_threads()
            same = np.array_equal(ops.corr2d_nb(x, k, threads), expected)
            alone = threads == 1 and parts_at_fork == 1
            os._exit(0 if same and (alone or ops._numba_layer["state"][0] != "omp") else 3)
        except BaseException:
            os._exit(4)
    assert wait_for_forked_child(pid, "in a kernel") == 0  # not -15: GNU OpenMP's SIGTERM


def test_pool_gradient_in_whole_and_border_windows_goes_to_first_maximum():
    """Every tie pattern of a whole 2x2 window (the vectorised path) and of the odd border windows."""
    from mnistgui.core import ops

    patterns = np.array(np.meshgrid(*[[0.0, 1.0]] * 4, indexing="ij")).reshape(4, -1).T  # 16 windows
    x = np.zeros((1, 2, 2 * len(patterns) + 1, 1))  # plus one odd border column
    for index, (a, b, c, d) in enumerate(patterns):
        x[0, :, 2 * index : 2 * index + 2, 0] = [[a, b], [c, d]]
    x[0, :, -1, 0] = [3.0, 3.0]  # a border window with a tie
    gz = np.arange(1.0, len(patterns) + 2).reshape(1, 1, -1, 1)
    gx = ops.max_pool_grad_nhwc(x, gz)
    for index, window in enumerate(patterns):
        expected = np.zeros(4)
        expected[int(np.argmax(window))] = gz[0, 0, index, 0]  # argmax: the first maximum, row-major
        np.testing.assert_array_equal(gx[0, :, 2 * index : 2 * index + 2, 0].ravel(), expected)
    np.testing.assert_array_equal(gx[0, :, -1, 0], [gz[0, 0, -1, 0], 0.0])


def test_single_threaded_blas_nests_and_restores():
    from mnistgui.core.ops import single_threaded_blas
    from tests.conftest import blas_threads

    before = blas_threads()
    with single_threaded_blas():
        with single_threaded_blas():
            assert set(blas_threads()) == {1}
        assert set(blas_threads()) == {1}  # the outer holder still runs
    assert blas_threads() == before


def test_single_threaded_blas_holds_a_blas_loaded_after_its_first_use():
    """Numba's products call SciPy's OpenBLAS, which Numba loads when it first compiles one: a run's
    hold on BLAS must find it, though the holder first looked before it was loaded."""
    from threadpoolctl import ThreadpoolController

    from mnistgui.core import ops
    from tests.conftest import blas_threads

    ops.matmul_in_parts_nb(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32), 1)  # SciPy's BLAS loaded
    libraries = ThreadpoolController().select(user_api="blas")
    if len(libraries.lib_controllers) < 2:
        pytest.skip("Numba and NumPy share one BLAS here")
    before = blas_threads()
    if max(before) == 1:
        pytest.skip("BLAS runs on one thread here anyway")
    stale = ThreadpoolController().select(filepath=libraries.lib_controllers[0].filepath)  # as if one were not loaded yet
    saved = ops._kernel_threads._blas
    ops._kernel_threads._blas = stale
    try:
        with ops.single_threaded_blas():
            assert set(blas_threads()) == {1}
    finally:
        ops._kernel_threads._blas = saved
    assert blas_threads() == before


def test_matmul_in_parts_equals_matmul_with_correct_gradients(monkeypatch):
    from mnistgui.core.ops import matmul_in_parts

    monkeypatch.setenv("MNISTGUI_THREADS", "2")
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((37, 20)), rng.standard_normal((20, 9))  # 37 rows: two unequal parts
    A, B = pt.matrix(dtype="float64"), pt.matrix(dtype="float64")
    np.testing.assert_allclose(pytensor.function([A, B], matmul_in_parts(A, B), mode=MODE)(a, b), a @ b, rtol=1e-12)
    verify_grad(lambda p, q: matmul_in_parts(p, q), [a, b], rng=rng, mode=MODE)


def test_max_pool_passes_nan_through_from_anywhere_in_a_window():
    """A diverging run must not lose its NaN in a pooling layer: whole windows and odd border windows."""
    from mnistgui.core import ops

    x = np.zeros((1, 3, 3, 1))
    x[0, 1, 1, 0] = np.nan  # the bottom-right of the whole top-left window
    x[0, 2, 2, 0] = np.nan  # the border window's only element
    x[0, 0, 2, 0] = 5.0
    out = ops.max_pool_nhwc(x)[0, :, :, 0]
    assert np.isnan(out[0, 0]) and np.isnan(out[1, 1]) and out[0, 1] == 5.0 and out[1, 0] == 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_first_layer_kernel_adds_the_nine_taps_in_order_from_zero(dtype):
    """The 3x3 one-channel loop (registers, one write a pixel) gives the general loop's bits: the taps
    added one by one, row-major, to a zero, so a zero border of the image gives +0, never -0."""
    from mnistgui.core.ops import _filters_as_matrix, corr2d_nhwc

    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 12, 11, 1)).astype(dtype)
    x[:, :4] = 0  # products 0 * (negative weight) are -0
    k = rng.standard_normal((17, 1, 3, 3)).astype(dtype)  # 17 filters: a vector and a remainder
    weights = _filters_as_matrix(k)
    expected = np.zeros((5, 10, 9, 17), dtype)
    for tap in range(9):
        a, b = divmod(tap, 3)
        expected += x[:, a : a + 10, b : b + 9, :] * weights[tap]
    out = corr2d_nhwc(x, k)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, expected)
    assert not np.any(np.signbit(out[:, :2]))  # rows made only of the zero border


_KERNEL_AFTER_NUMBA_GRAPH = """
import math
import numpy as np, pytensor, pytensor.tensor as pt
from mnistgui.core import ops, softmax_ops
ops.register_backend("numba")
x, k = pt.tensor4("x", dtype="float64"), pt.tensor4("k", dtype="float64")
labels = pt.ivector("labels")
maps = ops.corr2d_valid(x, k)
cost = softmax_ops.softmax_cross_entropy(maps.mean(axis=(1, 2)), labels).mean()
fn = pytensor.function([x, k, labels], [maps, cost, pytensor.grad(cost, k)], mode="NUMBA")
rng = np.random.default_rng(0)
x = rng.standard_normal((5, 12, 11, 1))
k = rng.standard_normal((17, 1, 3, 3))
numba_maps = fn(x, k, np.array([0, 1, 3, 5, 16], np.int32))[0]
weights = ops._filters_as_matrix(k)
expected = np.zeros((5, 10, 9, 17))
for tap in range(9):
    a, b = divmod(tap, 3)
    expected += x[:, a : a + 10, b : b + 9, :] * weights[tap]
z = rng.standard_normal((7, 10)) * 30
softmax = np.empty_like(z)
for i, row in enumerate(z.tolist()):  # the kernel's loop in Python floats: libm's exp, a running sum, division
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    total = 0.0
    for v in exps:
        total += v
    softmax[i] = [v / total for v in exps]
print(int(np.array_equal(ops.corr2d_nhwc(x, k), expected)), int(np.array_equal(numba_maps, expected)),
      int(np.array_equal(softmax_ops.softmax_nb(z), softmax)))
"""


def test_kernels_keep_their_arithmetic_after_a_numba_graph_compiled_them(tmp_path):
    """PyTensor's NUMBA mode compiles the Ops' functions with fastmath on unless told otherwise, and a
    kernel compiled first as their callee would inherit it (fused multiply-adds, a reciprocal for a
    division) and be cached so for the C backend too. From an empty Numba cache, a NUMBA graph first: the
    C backend's first-layer kernel must still add the nine taps in order from zero, the NUMBA graph's own
    convolution give the same bits, and the softmax kernel libm's exp, a running sum and a division."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"),
               PYTENSOR_FLAGS=f"base_compiledir={tmp_path / 'pytensor'}")
    result = subprocess.run([sys.executable, "-c", _KERNEL_AFTER_NUMBA_GRAPH], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["1", "1", "1"]


def test_every_jitted_function_sets_fastmath_off_outright():
    """A jitted function that leaves fastmath unset takes its caller's while it compiles: every `njit` in
    mnistgui says False itself, module-level kernels and the Ops' functions alike."""
    import ast
    from pathlib import Path

    import numba

    import mnistgui
    from mnistgui.core import augment, dropout_ops, knn, ops, softmax_ops

    def is_njit(node):
        return (isinstance(node, ast.Attribute) and node.attr in ("njit", "numba_njit")) or \
            (isinstance(node, ast.Name) and node.id in ("njit", "numba_njit"))

    calls, unset = 0, []
    for path in sorted(Path(mnistgui.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            decorators = getattr(node, "decorator_list", [])
            unset += [f"{path.name}:{d.lineno} (bare decorator)" for d in decorators if is_njit(d)]
            if isinstance(node, ast.Call) and is_njit(node.func):
                calls += 1
                if not any(kw.arg == "fastmath" and isinstance(kw.value, ast.Constant) and kw.value.value is False
                           for kw in node.keywords):
                    unset.append(f"{path.name}:{node.lineno}")
    assert calls >= 50 and not unset

    kernels = {f"{module.__name__}.{name}": value for module in (augment, dropout_ops, knn, ops, softmax_ops)
               for name, value in vars(module).items() if isinstance(value, numba.core.dispatcher.Dispatcher)}
    assert len(kernels) >= 37
    assert not sorted(name for name, kernel in kernels.items() if kernel.targetoptions.get("fastmath") is not False)
