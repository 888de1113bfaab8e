"""NumPy's own OpenBLAS, called directly for the one product NumPy cannot express: C += alpha A B.

The SGD step of a weight matrix is `w - lr * dot(a, b)`. NumPy computes the product into a fresh
array and PyTensor's C loop then reads it back with w: two passes over the matrix that BLAS's
`gemm`, with beta 1, folds into the product itself (sigmoid MLP: 0.6 ms of product and update a
step, 0.42 ms as one gemm, measured on its 784 x 625 weights). PyTensor's own Gemm needs a BLAS to
link at compile time, which a pip-installed PyTensor does not find; NumPy's wheels bring one, loaded
in this process already. threadpoolctl, which mnistgui uses to set its thread count, says where.

`cblas_gemm()` is None where that does not hold (NumPy built against MKL or Apple's Accelerate, a
library whose symbols are not found, or one that fails the check on a small product): the update
then stays NumPy's product and PyTensor's loop, as before.
"""

from __future__ import annotations

import ctypes
import os
import threading

import numpy as np

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112

# (symbol prefix, suffix, integer type): NumPy 2's wheels (scipy-openblas, 64-bit indices), NumPy 1.26's
# (openblas64_), then 32-bit builds.
_SYMBOLS = [("scipy_cblas_", "64_", ctypes.c_int64), ("cblas_", "64_", ctypes.c_int64),
            ("scipy_cblas_", "", ctypes.c_int), ("cblas_", "", ctypes.c_int)]

_lock = threading.Lock()
_found: dict[str, object] = {}


def _numpy_openblas_path() -> str | None:
    from threadpoolctl import threadpool_info

    # threadpoolctl reports resolved paths: resolve NumPy's too (site-packages behind a symlink).
    numpy_root = os.path.dirname(os.path.dirname(os.path.realpath(np.__file__)))
    for info in threadpool_info():
        path = os.path.realpath(info.get("filepath") or "")
        # NumPy's copy (numpy.libs/, numpy/.dylibs/), not another package's OpenBLAS in the same process.
        if info.get("internal_api") == "openblas" and os.path.basename(os.path.dirname(path)).startswith(("numpy", ".dylibs")) \
                and path.startswith(numpy_root):
            return path
    return None


class Gemm:
    """c <- alpha * a @ b + c in place, for C-contiguous c and 2-d a, b of c's dtype (any of C or
    Fortran order: a transposed view is passed with BLAS's transpose flag, not copied)."""

    def __init__(self, function, index, dtype):
        self.function, self.dtype = function, np.dtype(dtype)
        scalar = ctypes.c_float if self.dtype == np.float32 else ctypes.c_double
        function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, index, index, index, scalar,
                             ctypes.c_void_p, index, ctypes.c_void_p, index, scalar, ctypes.c_void_p, index]
        function.restype = None

    @staticmethod
    def _operand(x):
        if x.flags.c_contiguous:
            return x, _NO_TRANS, max(1, x.shape[1])
        if x.flags.f_contiguous:
            return x, _TRANS, max(1, x.shape[0])
        x = np.ascontiguousarray(x)
        return x, _NO_TRANS, max(1, x.shape[1])

    def __call__(self, alpha: float, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
        (m, k), (k2, n) = a.shape, b.shape
        if k != k2 or c.shape != (m, n) or not c.flags.c_contiguous or not c.flags.writeable:
            raise ValueError(f"gemm: shapes {a.shape} @ {b.shape} into {c.shape} (C-contiguous, writeable)")
        if a.dtype != self.dtype or b.dtype != self.dtype or c.dtype != self.dtype:
            raise ValueError(f"gemm: {a.dtype} @ {b.dtype} into {c.dtype}, not {self.dtype}")
        if m == 0 or n == 0:
            return c
        a, trans_a, lda = self._operand(a)
        b, trans_b, ldb = self._operand(b)
        # ctypes lets go of the GIL for the call, as NumPy's dot does.
        self.function(_ROW_MAJOR, trans_a, trans_b, m, n, k, alpha, a.ctypes.data, lda, b.ctypes.data, ldb,
                      1.0, c.ctypes.data, max(1, n))
        return c


def _load(dtype: np.dtype) -> Gemm | None:
    try:
        path = _numpy_openblas_path()
        if path is None:
            return None
        library = ctypes.CDLL(path)
    except Exception:  # threadpoolctl's inspection or the loader: no direct BLAS, and nothing else lost
        return None
    letter = "s" if dtype == np.float32 else "d"
    for prefix, suffix, index_type in _SYMBOLS:
        function = getattr(library, f"{prefix}{letter}gemm{suffix}", None)
        if function is None:
            continue
        gemm = Gemm(function, index_type, dtype)
        if _passes_check(gemm, dtype):
            return gemm
    return None


def _passes_check(gemm: Gemm, dtype) -> bool:
    """A small product with both transposes against NumPy's: a wrong integer width or symbol shows here."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((7, 5)).astype(dtype)
    b = rng.standard_normal((6, 7)).astype(dtype)  # used transposed: a Fortran-order view
    c = rng.standard_normal((5, 6)).astype(dtype)
    expected = c - 0.5 * (a.T.astype(np.float64) @ b.T.astype(np.float64))
    got = gemm(-0.5, a.T, b.T, c.copy())
    return bool(np.allclose(got, expected, rtol=1e-4, atol=1e-4))


def cblas_gemm(dtype) -> Gemm | None:
    """NumPy's BLAS gemm for float32 or float64, or None where it cannot be called directly."""
    dtype = np.dtype(dtype)
    if dtype.name in _found:  # every step asks: no lock once known
        return _found[dtype.name]
    if dtype not in (np.float32, np.float64) or os.environ.get("MNISTGUI_DIRECT_BLAS") == "0":
        return None
    with _lock:
        if dtype.name not in _found:
            _found[dtype.name] = _load(dtype)
        return _found[dtype.name]
