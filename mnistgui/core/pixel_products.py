"""The products a layer makes with the batch of images itself skip the batch's all-zero pixel columns
(c backend).

A batch of 128 MNIST digits has about a third of its 784 pixel columns zero in every image: the frame
round the digit (520 columns hold a non-zero pixel, on average over the training set's batches). BLAS
multiplies them all. The sigmoid MLP's two products with its 784 x 625 weights, the forward product and
the SGD update, were 1.1 ms of its 1.5 ms step, at 83-89% of the machine's sgemm ceiling: fewer
multiplications was the way left to make them faster.

The kernels (pixel_products.c) take the uint8 batch as it is, scale it while packing it into registers'
order as BLAS packs its operands, leave out the zero columns, and split the output over the cores on a
pool of threads of their own. Each output is a sum from zero in a fixed order of one fused multiply-add
per term, so the same bits on any number of threads; and a zero column adds exactly zero to every sum,
so leaving it out changes the time only. Against NumPy's OpenBLAS on the same batches (2 threads, BLAS
unpinned, training set batches of 128 x 784, 625 columns): the forward product 0.41 against 0.54 ms,
the update 0.36 against 0.44 ms.

The graph keeps PyTensor's own `dot` (its gradient, the Numba and JAX backends): the c mode's rewrites
(c_rewrites) put these Ops in place of a product whose left side is `cast(images, float32) * scale`
for a uint8 matrix `images`, the way every model takes its pixels, and whose weights are a shared
matrix at least `MIN_COLUMNS` wide (logistic regression's 10 columns stay with NumPy).

The C source compiles at first use with the compiler PyTensor uses and its flags for this CPU, into
PyTensor's compile directory. Where that fails (no compiler, a compiler error, MNISTGUI_PIXEL_PRODUCTS=0)
`library()` is None and graphs keep NumPy's products.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op

from .ops import kernel_threads

_log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("pixel_products.c")
# Narrower weights gain nothing from the kernels' 32-column tiles (logistic regression: 10 columns).
MIN_COLUMNS = 64

_lock = threading.Lock()
_state: dict[str, object] = {}


def compile_command() -> list[str] | None:
    """The compiler and flags for the kernels: PyTensor's compiler, its flags for this CPU."""
    import pytensor
    from pytensor.link.c.cmodule import GCC_compiler

    if not pytensor.config.cxx:
        return None
    cpu_flags = [flag for flag in GCC_compiler.compile_args() if flag.startswith("-m")]
    # -ffp-contract=fast: a multiply-add in the source is one fused instruction (each sum's rounding
    # is then fixed by the source, not left to the compiler's choice).
    return [pytensor.config.cxx, "-x", "c", "-std=gnu11", "-O3", "-ffp-contract=fast", "-fPIC", "-shared",
            "-pthread", *cpu_flags]


def _build() -> ctypes.CDLL | None:
    import pytensor

    if os.environ.get("MNISTGUI_PIXEL_PRODUCTS") == "0":
        return None
    try:
        source = SOURCE.read_bytes()
        command = compile_command()
        if command is None:
            return None
        key = hashlib.sha256(source + "\0".join(command).encode()).hexdigest()[:16]
        folder = Path(pytensor.config.compiledir) / "mnistgui"
        path = folder / f"pixel_products-{key}.so"
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            # Built under a name of its own and renamed into place: another process may build it at once.
            with tempfile.TemporaryDirectory(dir=folder) as scratch:
                built = Path(scratch) / path.name
                result = subprocess.run([*command, str(SOURCE), "-o", str(built)], capture_output=True, text=True,
                                        timeout=300)
                if result.returncode != 0:
                    _log.warning("The pixel-product kernels did not compile; NumPy's products instead:\n%s",
                                 result.stderr[-2000:])
                    return None
                os.replace(built, path)
        return _load(path)
    except Exception as error:  # noqa: BLE001 - whatever stops the build (the compiler, its flags, the loader) leaves NumPy's products
        _log.warning("The pixel-product kernels are not available (%s); NumPy's products instead.", error)
        return None


def _load(path: Path) -> ctypes.CDLL:
    library = ctypes.CDLL(str(path))
    i64, f32, ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
    library.mnistgui_pixel_product.argtypes = [ptr, i64, i64, i64, i64, f32, ptr, i64, i64, ptr, i64, ctypes.c_int,
                                               ctypes.c_int]
    library.mnistgui_pixel_gemm_update.argtypes = [ptr, i64, i64, i64, i64, f32, ptr, i64, i64, f32, ptr, i64,
                                                   ctypes.c_int]
    library.mnistgui_pixel_nonzero_columns.argtypes = [ptr, i64, i64, i64, i64]
    library.mnistgui_pixel_last_parts.argtypes = []
    for function in (library.mnistgui_pixel_product, library.mnistgui_pixel_gemm_update,
                     library.mnistgui_pixel_nonzero_columns, library.mnistgui_pixel_last_parts):
        function.restype = ctypes.c_int
    return library


def library() -> ctypes.CDLL | None:
    """The compiled kernels, built on the first call; None where they cannot be."""
    if "library" in _state:  # every step asks: no lock once known
        return _state["library"]
    with _lock:
        if "library" not in _state:
            _state["library"] = _build()
        return _state["library"]


def _check(status: int) -> None:
    if status == -1:
        raise MemoryError("the pixel-product kernels ran out of memory (their output was left as it was)")
    if status != 0:
        raise ValueError(f"the pixel-product kernels refused their sizes (status {status})")


def _pixels(images: np.ndarray) -> np.ndarray:
    if images.dtype != np.uint8 or images.ndim != 2:
        raise ValueError(f"pixel products: a uint8 matrix of images, not {images.dtype} with shape {images.shape}")
    return images


def _float_matrix(x: np.ndarray, name: str, writeable: bool = False) -> np.ndarray:
    if x.dtype != np.float32 or x.ndim != 2:
        raise ValueError(f"pixel products: {name} must be a float32 matrix, not {x.dtype} with shape {x.shape}")
    if not x.flags.c_contiguous or (writeable and not x.flags.writeable):
        x = np.array(x, order="C")
    return x


def scaled(images: np.ndarray, scale: float) -> np.ndarray:
    """The pixels as the graph computes them: float32(images) * float32(scale)."""
    return images.astype(np.float32) * np.float32(scale)


def pixel_product(images: np.ndarray, scale: float, w: np.ndarray, threads: int | None = None,
                  sigmoid: bool = False) -> np.ndarray:
    """(images * scale) @ w, for uint8 images (m, k) and float32 weights (k, n); with `sigmoid`, the
    logistic sigmoid of it, taken in the same pass (the kernels' own exp, within a few ulps of libm's)."""
    images, w = _pixels(images), _float_matrix(w, "the weights")
    (m, k), (k2, n) = images.shape, w.shape
    if k != k2:
        raise ValueError(f"pixel products: images {images.shape} @ weights {w.shape}")
    out = np.empty((m, n), dtype=np.float32)
    kernels = library()
    if kernels is None:
        np.dot(scaled(images, scale), w, out=out)
        if sigmoid:
            from .c_rewrites import sigmoid_numpy

            return sigmoid_numpy(out)
        return out
    _check(kernels.mnistgui_pixel_product(images.ctypes.data, m, k, images.strides[0], images.strides[1], scale,
                                          w.ctypes.data, n, n, out.ctypes.data, n, int(sigmoid), threads or kernel_threads()))
    return out


def pixel_gemm_update(w: np.ndarray, alpha: float, images: np.ndarray, scale: float, d: np.ndarray,
                      threads: int | None = None) -> np.ndarray:
    """w += alpha * (images * scale).T @ d in place, for a C-contiguous writeable float32 w (k, n),
    uint8 images (m, k) and float32 d (m, n); returns w."""
    images, d = _pixels(images), _float_matrix(d, "the gradient")
    (m, k), (m2, n) = images.shape, d.shape
    if m != m2 or w.shape != (k, n) or w.dtype != np.float32 or not w.flags.c_contiguous or not w.flags.writeable:
        raise ValueError(f"pixel products: images {images.shape}, gradient {d.shape} into weights {w.shape} "
                         f"{w.dtype} (C-contiguous, writeable)")
    kernels = library()
    if kernels is None:
        w += np.float32(alpha) * np.dot(scaled(images, scale).T, d)
        return w
    _check(kernels.mnistgui_pixel_gemm_update(images.ctypes.data, m, k, images.strides[0], images.strides[1], scale,
                                              d.ctypes.data, n, n, alpha, w.ctypes.data, n, threads or kernel_threads()))
    return w


def nonzero_columns(images: np.ndarray) -> int:
    """How many of the batch's pixel columns hold a non-zero pixel: the kernels' inner dimension."""
    images = _pixels(images)
    kernels = library()
    if kernels is None:
        return int(np.count_nonzero(images.any(axis=0)))
    count = kernels.mnistgui_pixel_nonzero_columns(images.ctypes.data, *images.shape, *images.strides)
    _check(min(count, 0))
    return count


def last_parts() -> int:
    """The parts the last product or update on this thread ran in (1 where it ran alone), 0 before any."""
    kernels = library()
    return 0 if kernels is None else kernels.mnistgui_pixel_last_parts()


def used_by(function) -> bool:
    """Whether a compiled PyTensor function runs these kernels."""
    fgraph = getattr(getattr(function, "maker", None), "fgraph", None)
    return fgraph is not None and any(isinstance(node.op, (PixelProduct, PixelGemmUpdate))
                                      for node in fgraph.apply_nodes)


class PixelProduct(Op):
    """(cast(images, float32) * scale) @ w for a uint8 matrix of images, or its sigmoid; only ever put in
    a graph by the c mode's rewrites (c_rewrites)."""

    __props__ = ("sigmoid",)

    def __init__(self, sigmoid: bool = False):
        self.sigmoid = sigmoid

    def make_node(self, images, scale, w):
        images, scale, w = (pt.as_tensor_variable(v) for v in (images, scale, w))
        out = pt.matrix(dtype="float32", shape=(images.type.shape[0], w.type.shape[1]))
        return Apply(self, [images, scale, w], [out])

    def perform(self, node, inputs, output_storage):
        images, scale, w = inputs
        output_storage[0][0] = pixel_product(images, float(scale), w, sigmoid=self.sigmoid)

    def infer_shape(self, *args):  # (fgraph, node, shapes) on PyTensor 3.0, (node, shapes) on 3.3
        shapes = args[-1]
        return [(shapes[0][0], shapes[2][1])]


class PixelGemmUpdate(Op):
    """w - lr * ((cast(images, float32) * scale).T @ d): an SGD step of a first layer's weights."""

    __props__ = ("inplace",)

    def __init__(self, inplace: bool = False):
        self.inplace = inplace
        if inplace:
            self.destroy_map = {0: [0]}

    def make_node(self, w, lr, images, scale, d):
        return Apply(self, [w, lr, images, scale, d], [w.type()])

    def perform(self, node, inputs, output_storage):
        w, lr, images, scale, d = inputs
        if not self.inplace or not w.flags.c_contiguous or not w.flags.writeable:
            w = np.array(w, order="C")
        output_storage[0][0] = pixel_gemm_update(w, -float(lr), images, float(scale), d)

    def infer_shape(self, *args):
        return [args[-1][0]]
