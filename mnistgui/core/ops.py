"""Convolution and max-pooling as PyTensor Ops, forward and gradient.

PyTensor dropped Theano's conv2d and pool_2d. These Ops bring them back with Theano's semantics:
`conv2d` is a true convolution (the filter is flipped) in 'valid' or 'full' mode over
(batch, channels, rows, cols) tensors, and `max_pool_2d` is non-overlapping 2x2 pooling with
ignore_border=False, so odd sizes round up (13 -> 7).

Inside, the Ops work channels-last, (batch, rows, cols, channels): then im2col copies contiguous
runs, one matrix product per batch gives the output already in layout, and no transpose is needed
between layers. The convnet keeps its feature maps channels-last from first conv to last pool;
`conv2d` and `max_pool_2d` wrap the same Ops for the usual channels-first layout.

One primitive carries the arithmetic: `Corr2dValid`, a valid cross-correlation computed as im2col
plus matrix products (what Theano's CorrMM did). Its two gradients are `Corr2dInputGrad` (matrix
products, then col2im) and `Corr2dWeights` (im2col, then matrix products). Each splits its batch
into one part a core, run on threads of its own while BLAS keeps to one thread, and each part into
blocks whose patches stay in cache; a first layer's patches of one channel skip the matrix product
for direct loops. Under the Numba backend the same parts run under `prange` on Numba's threads.
Filters stay (filters, channels, rows, cols), as in Theano and in the model files.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numba
import numpy as np
import pytensor.tensor as pt
from numba.extending import intrinsic
from pytensor.gradient import disconnected_type
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.scalar.basic import upcast

# Numba caches compiled kernels beside the source; a frozen app has no source to cache beside.
_CACHE = not getattr(sys, "frozen", False)
# Every mnistgui kernel says `fastmath=False` outright, here and in the other modules. A jitted function
# that leaves fastmath unset inherits its caller's while it compiles, and PyTensor's NUMBA mode compiles
# the Ops' functions with fastmath on (contraction, reassociation): a kernel compiled first from a NUMBA
# graph then kept fused multiply-adds, and Numba's cache, whose key does not hold the flag, handed that
# version to the C backend's Ops too (the first-layer kernel's float64 sums moved by an ulp, found by
# its test). The Ops' own jitted functions set it off as well: theirs is the flag that governs the entry
# points inlined into them (below).

# --- NumPy kernels, channels-last ------------------------------------------------------------------


def _filters_as_matrix(k: np.ndarray) -> np.ndarray:
    """(F, C, kh, kw) filters as the (kh * kw * C, F) matrix that multiplies im2col rows."""
    f, c, kh, kw = k.shape
    return k.transpose(2, 3, 1, 0).reshape(kh * kw * c, f)


# The three products run the batch in parts, one part a thread, each part in blocks of _BLOCK images:
# a block's patches (about 3 MB for the second layer) stay in cache between im2col and the product,
# and each thread's BLAS runs single-threaded, so the copies are parallel too (measured on 2 cores,
# the second layer: 35 ms for its three products at once, 18 ms in parts). Parts and blocks are fixed
# by the batch and the thread count alone, so a run's arithmetic, and its history, do not depend on
# timing.
_BLOCK = 16  # the fewest images a part is given
_BLOCK_VALUES = 3 * 2**20 // 4  # about 3 MB of float32 patches a block


@numba.njit(cache=_CACHE, fastmath=False)  # jitted, so that the nopython kernels below cut the same blocks
def _block_images(patch_values_per_image):
    return max(1, _BLOCK_VALUES // max(1, patch_values_per_image))


# Jitted too, so that both backends cut a batch into the same parts: at most one a thread, of _BLOCK
# images or more, part `part` of `parts` holding images [n * part // parts, n * (part + 1) // parts).
@numba.njit(cache=_CACHE, nogil=True, fastmath=False)
def _parts_nb(n, threads):
    return max(1, min(threads, n // _BLOCK))


@numba.njit(cache=_CACHE, nogil=True, fastmath=False)
def _bounds_nb(n, parts, part):
    return n * part // parts, n * (part + 1) // parts


@numba.njit(cache=_CACHE, nogil=True, fastmath=False)
def _im2col_into(x, kh, kw, out):
    n, h, w, c = x.shape
    rows, cols = h - kh + 1, w - kw + 1
    r = 0
    for i in range(n):
        for p in range(rows):
            for q in range(cols):
                col = 0
                for a in range(kh):
                    for b in range(kw):
                        for ch in range(c):
                            out[r, col + ch] = x[i, p + a, q + b, ch]
                        col += c
                r += 1


@numba.njit(cache=_CACHE, nogil=True, fastmath=False)
def _col2im_into(patches, kh, kw, dx):
    """dx = 0, then add each patch row back onto the pixels it was copied from."""
    n, h, w, c = dx.shape
    rows, cols = h - kh + 1, w - kw + 1
    dx[:] = 0
    r = 0
    for i in range(n):
        for p in range(rows):
            for q in range(cols):
                col = 0
                for a in range(kh):
                    for b in range(kw):
                        for ch in range(c):
                            dx[i, p + a, q + b, ch] += patches[r, col + ch]
                        col += c
                r += 1


# A patch of at most _DIRECT_PATCH values (the first layer's 3x3 on one channel: 9) makes a matrix
# product of inner size 9, which BLAS runs at a fraction of its speed while writing the patches out
# and reading them back; direct loops over the filters' axis (vectorised) do the same work in one pass
# (measured: forward 5.6 to 1.5 ms, filter gradient 4.7 to 2.0 ms for the first layer of a batch of 128).
_DIRECT_PATCH = 16


@numba.njit(cache=_CACHE, nogil=True, fastmath=False)
def _corr_direct_into(x, weights, kh, kw, out):
    """out = valid cross-correlation of x with weights (kh * kw * C, F), pixel by pixel."""
    n, h, w, c = x.shape
    f = weights.shape[1]
    if kh == 3 and kw == 3 and c == 1:
        _corr_3x3_one_channel_into(x, weights, out)
        return
    for i in range(n):
        for p in range(out.shape[1]):
            for q in range(out.shape[2]):
                for t in range(f):
                    out[i, p, q, t] = 0
                col = 0
                for a in range(kh):
                    for b in range(kw):
                        for ch in range(c):
                            v = x[i, p + a, q + b, ch]
                            for t in range(f):
                                out[i, p, q, t] += v * weights[col, t]
                            col += 1


@numba.njit(cache=_CACHE, nogil=True, fastmath=False)
def _corr_3x3_one_channel_into(x, weights, out):
    """`_corr_direct_into` for the notebook's first layer (3x3 filters on one channel): a pixel's nine
    inputs held in registers and each output written once, where the general loop adds into `out` nine
    times (a batch of 128 on two cores: 2.8 to 1.2 ms alone, 2.75 to 1.4 ms inside a training step). The same sum in the same order, from the same
    zero, so the same bits."""
    f = weights.shape[1]
    zero = out.dtype.type(0)
    for i in range(x.shape[0]):
        for p in range(out.shape[1]):
            for q in range(out.shape[2]):
                v0, v1, v2 = x[i, p, q, 0], x[i, p, q + 1, 0], x[i, p, q + 2, 0]
                v3, v4, v5 = x[i, p + 1, q, 0], x[i, p + 1, q + 1, 0], x[i, p + 1, q + 2, 0]
                v6, v7, v8 = x[i, p + 2, q, 0], x[i, p + 2, q + 1, 0], x[i, p + 2, q + 2, 0]
                for t in range(f):
                    out[i, p, q, t] = (zero + v0 * weights[0, t] + v1 * weights[1, t] + v2 * weights[2, t]
                                       + v3 * weights[3, t] + v4 * weights[4, t] + v5 * weights[5, t]
                                       + v6 * weights[6, t] + v7 * weights[7, t] + v8 * weights[8, t])


@numba.njit(cache=_CACHE, nogil=True, fastmath=False)
def _corr_weights_direct(x, g, kh, kw):
    """The (kh * kw * C, F) filter gradient of a valid cross-correlation, pixel by pixel."""
    n, h, w, c = x.shape
    f = g.shape[3]
    total = np.zeros((kh * kw * c, f), dtype=g.dtype)
    for i in range(n):
        for p in range(g.shape[1]):
            for q in range(g.shape[2]):
                col = 0
                for a in range(kh):
                    for b in range(kw):
                        for ch in range(c):
                            v = x[i, p + a, q + b, ch]
                            for t in range(f):
                                total[col, t] += v * g[i, p, q, t]
                            col += 1
    return total


def kernel_threads() -> int:
    """Threads for the convolution kernels: MNISTGUI_THREADS, else OMP_NUM_THREADS, else the usable cores (at most 8)."""
    for name in ("MNISTGUI_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return min(int(value), 8)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(usable, 8))


# Under the Numba backend, Numba's own threads run the kernels' parts (`prange`), where its threading
# layer lets two threads launch parts at once (OpenMP or TBB: the window trains on one thread while
# another compiles or predicts). Its fallback, the workqueue, aborts the process on concurrent launches,
# so there the kernels run on the calling thread alone; so they do in a child forked after OpenMP
# started (GNU OpenMP, in Numba's Linux wheels, kills such a child at its first parallel launch). OpenMP's
# idle threads spin a while before they sleep, so handing them a part is quick even where idle vCPUs
# halt (a round trip through a Python thread pool took 0.1 ms on the reference machine).
_SAFE_LAYERS = ("omp", "tbb")
_numba_layer: dict[str, tuple[str, bool]] = {}  # "state": (threading layer, whether its threads may run parts)
_numba_layer_lock = threading.Lock()


def numba_kernel_threads() -> int:
    """The parts the Numba kernels cut a batch into: `kernel_threads()`, or 1 where Numba's threads cannot
    run them safely (above). The first call starts Numba's threads."""
    threads = kernel_threads()
    if threads > 1:
        state = _numba_layer.get("state")
        if state is None:
            with _numba_layer_lock:
                state = _numba_layer.get("state")
                if state is None:
                    numba.get_num_threads()  # starts the threading layer, whichever loads
                    layer = numba.threading_layer()
                    state = _numba_layer["state"] = (layer, layer in _SAFE_LAYERS)
        threads = threads if state[1] else 1
    _numba_kernel_parts.value = threads
    return threads


# The parts the Numba Ops cut a batch into are read when they run, from this C int (`_kernel_parts_nb`
# loads it through an external symbol), not built into each compiled graph: so one cached graph serves
# any number of cores, and the packaged app can ship its graphs compiled (`mnistgui/shipped_cache.py`).
# `numba_kernel_threads()` sets it whenever it is asked, as each Op is compiled; 1 until then, and in a
# child forked after OpenMP started.
_numba_kernel_parts = ctypes.c_int32(1)
_KERNEL_PARTS_SYMBOL = "mnistgui_numba_kernel_parts"


def _numba_threads_after_fork_in_child() -> None:
    """A child forked after Numba's threads started (by a kernel, or by compiling one) runs its kernels
    alone where those threads are OpenMP's."""
    global _numba_layer_lock
    _numba_layer_lock = threading.Lock()
    from numba.np.ufunc import parallel

    if getattr(parallel, "_is_initialized", True):
        layer = numba.threading_layer()
        _numba_layer["state"] = (layer, layer == "tbb")
        if layer != "tbb":
            _numba_kernel_parts.value = 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_numba_threads_after_fork_in_child)


class _KernelThreads:
    """A process-wide pool for the kernels' parts, remade after a fork (a forked child has none of its
    threads), and BLAS held to one thread while any part runs (a count, so that two training threads
    calling at once do not restore each other's setting too early)."""

    def __init__(self):
        self._reset()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self):
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._workers = 0
        self._single = 0
        self._blas = None
        self._blas_limit = None

    def executor(self) -> ThreadPoolExecutor:
        workers = kernel_threads()
        with self._lock:
            if self._executor is None or self._workers != workers:  # a new count only when the setting changes
                if self._executor is not None:
                    self._executor.shutdown(wait=False)
                self._executor = ThreadPoolExecutor(workers, thread_name_prefix="mnistgui-kernel")
                self._workers = workers
            return self._executor

    @contextlib.contextmanager
    def single_threaded_blas(self, rescan: bool = False):
        """`rescan`: look for BLAS libraries loaded since the last look (0.4 ms). Numba's products call
        SciPy's OpenBLAS, a library of its own that Numba loads when it first compiles one."""
        with self._lock:
            if self._single == 0:
                if self._blas is None or rescan:
                    from threadpoolctl import ThreadpoolController

                    self._blas = ThreadpoolController()
                self._blas_limit = self._blas.limit(limits=1, user_api="blas")
            self._single += 1
        try:
            yield
        finally:
            with self._lock:
                self._single -= 1
                if self._single == 0:
                    self._blas_limit.restore_original_limits()

    def run(self, work, n: int, blas: bool = True):
        """work(start, stop) over [0, n) in kernel_threads() parts; their results in order. `blas`:
        the work calls BLAS (then held to one thread meanwhile)."""
        threads = _parts_nb(n, kernel_threads())
        if threads == 1:
            return [work(0, n)]
        parts = [_bounds_nb(n, threads, part) for part in range(threads)]
        with self.single_threaded_blas() if blas else contextlib.nullcontext():
            executor = self.executor()
            # The last part on this thread: a hand-off to the pool and back costs about 0.1 ms a call,
            # measured, and a step makes some twenty such calls.
            futures = [executor.submit(work, start, stop) for start, stop in parts[:-1]]
            try:
                last = work(*parts[-1])
            finally:
                wait(futures)
            return [future.result() for future in futures] + [last]


_kernel_threads = _KernelThreads()


def single_threaded_blas():
    """A context in which BLAS runs on one thread, so that the kernels' parts have the cores to
    themselves. Hold it around a whole run of convnet steps: switching BLAS back each call wakes
    OpenBLAS's threads, which then spin on the cores the next kernel needs (measured on 2 cores: 5.7 s
    against 4.1 s an epoch of 6,400 images)."""
    return _kernel_threads.single_threaded_blas(rescan=True)


def corr2d_nhwc(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """out[n, i, j, f] = sum_{c, a, b} x[n, i + a, j + b, c] * k[f, c, a, b]."""
    dtype = np.result_type(x.dtype, k.dtype)
    x = np.ascontiguousarray(x, dtype=dtype)
    n, h, w, c = x.shape
    f, _, kh, kw = k.shape
    rows, cols = h - kh + 1, w - kw + 1
    weights = np.ascontiguousarray(_filters_as_matrix(k), dtype=dtype)  # strided, the kernel would not vectorise
    out = np.empty((n, rows, cols, f), dtype=dtype)
    flat = out.reshape(n * rows * cols, f)
    block = _block_images(rows * cols * kh * kw * c)

    def part(start, stop):
        if kh * kw * c <= _DIRECT_PATCH:
            _corr_direct_into(x[start:stop], weights, kh, kw, out[start:stop])
            return
        patches = np.empty((block * rows * cols, kh * kw * c), dtype=dtype)
        for first in range(start, stop, block):
            last = min(first + block, stop)
            m = (last - first) * rows * cols
            _im2col_into(x[first:last], kh, kw, patches[:m])
            np.matmul(patches[:m], weights, out=flat[first * rows * cols : first * rows * cols + m])

    _kernel_threads.run(part, n, blas=kh * kw * c > _DIRECT_PATCH)
    return out


def corr2d_weights_nhwc(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """dk[f, c, a, b] = sum_{n, i, j} x[n, i + a, j + b, c] * g[n, i, j, f]."""
    dtype = np.result_type(x.dtype, g.dtype)
    x = np.ascontiguousarray(x, dtype=dtype)
    n, h, w, c = x.shape
    _, rows, cols, f = g.shape
    kh, kw = h - rows + 1, w - cols + 1
    g = np.ascontiguousarray(g, dtype=dtype)
    g_flat = g.reshape(n * rows * cols, f)
    block = _block_images(rows * cols * kh * kw * c)

    def part(start, stop):
        if kh * kw * c <= _DIRECT_PATCH:
            return _corr_weights_direct(x[start:stop], g[start:stop], kh, kw).T
        patches = np.empty((block * rows * cols, kh * kw * c), dtype=dtype)
        total = np.zeros((f, kh * kw * c), dtype=dtype)
        product = np.empty_like(total)
        for first in range(start, stop, block):
            last = min(first + block, stop)
            m = (last - first) * rows * cols
            _im2col_into(x[first:last], kh, kw, patches[:m])
            np.matmul(g_flat[first * rows * cols : first * rows * cols + m].T, patches[:m], out=product)
            total += product
        return total

    parts = _kernel_threads.run(part, n, blas=kh * kw * c > _DIRECT_PATCH)
    dk = np.array(parts[0])  # a copy: a direct part is a transposed view
    for other in parts[1:]:
        dk += other
    return np.ascontiguousarray(dk.reshape(f, kh, kw, c).transpose(0, 3, 1, 2))


def corr2d_input_grad_nhwc(g: np.ndarray, k: np.ndarray, h: int, w: int) -> np.ndarray:
    """dx[n, p, q, c] = sum_{f, i, j} g[n, i, j, f] * k[f, c, p - i, q - j], for x of size (h, w).

    col2im: one matrix product gives a block's patch gradients, then each is added back onto the
    pixels its patch was copied from.
    """
    dtype = np.result_type(g.dtype, k.dtype)
    g = np.ascontiguousarray(g, dtype=dtype)
    n, rows, cols, f = g.shape
    _, c, kh, kw = k.shape
    weights_t = np.ascontiguousarray(_filters_as_matrix(k).T, dtype=dtype)
    g_flat = g.reshape(n * rows * cols, f)
    dx = np.empty((n, h, w, c), dtype=dtype)

    block = _block_images(rows * cols * kh * kw * c)

    def part(start, stop):
        patches = np.empty((block * rows * cols, kh * kw * c), dtype=dtype)
        for first in range(start, stop, block):
            last = min(first + block, stop)
            m = (last - first) * rows * cols
            np.matmul(g_flat[first * rows * cols : first * rows * cols + m], weights_t, out=patches[:m])
            _col2im_into(patches[:m], kh, kw, dx[first:last])

    _kernel_threads.run(part, n)
    return dx


def corr2d_valid_numpy(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Channels-first reference: out[n, f, i, j] = sum_{c, a, b} x[n, c, i + a, j + b] * k[f, c, a, b]."""
    out = corr2d_nhwc(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), k)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


@numba.njit(cache=_CACHE, nogil=True, fastmath=False)
def _max_pool_kernel(x, out):
    n, h, w, c = x.shape
    for i in range(n):
        for r in range(out.shape[1]):
            for q in range(out.shape[2]):
                r0, q0 = 2 * r, 2 * q
                if r0 + 1 < h and q0 + 1 < w:  # a whole window: straight-line code the compiler vectorises
                    for j in range(c):  # a NaN anywhere in the window wins, as np.maximum's would
                        best = x[i, r0, q0, j]
                        v = x[i, r0, q0 + 1, j]
                        best = v if v > best or v != v else best
                        v = x[i, r0 + 1, q0, j]
                        best = v if v > best or v != v else best
                        v = x[i, r0 + 1, q0 + 1, j]
                        out[i, r, q, j] = v if v > best or v != v else best
                    continue
                for j in range(c):
                    best = x[i, r0, q0, j]
                    for a in range(2):
                        for b in range(2):
                            rr, qq = r0 + a, q0 + b
                            if rr < h and qq < w and (x[i, rr, qq, j] > best or x[i, rr, qq, j] != x[i, rr, qq, j]):
                                best = x[i, rr, qq, j]
                    out[i, r, q, j] = best


@numba.njit(cache=_CACHE, nogil=True, fastmath=False)
def _max_pool_grad_kernel(x, gz, gx):
    """Every element of gx written once: gz at its window's first maximum (row-major), zero elsewhere."""
    n, h, w, c = x.shape
    for i in range(n):
        for r in range(gz.shape[1]):
            for q in range(gz.shape[2]):
                r0, q0 = 2 * r, 2 * q
                if r0 + 1 < h and q0 + 1 < w:  # a whole window, branch-free
                    for j in range(c):
                        v00, v01 = x[i, r0, q0, j], x[i, r0, q0 + 1, j]
                        v10, v11 = x[i, r0 + 1, q0, j], x[i, r0 + 1, q0 + 1, j]
                        take01 = v01 > v00
                        best = v01 if take01 else v00
                        take10 = v10 > best
                        best = v10 if take10 else best
                        take11 = v11 > best
                        take10 = take10 and not take11
                        take01 = take01 and not take10 and not take11
                        take00 = not (take01 or take10 or take11)
                        g = gz[i, r, q, j]
                        gx[i, r0, q0, j] = g if take00 else 0
                        gx[i, r0, q0 + 1, j] = g if take01 else 0
                        gx[i, r0 + 1, q0, j] = g if take10 else 0
                        gx[i, r0 + 1, q0 + 1, j] = g if take11 else 0
                    continue
                for j in range(c):
                    best_r, best_q = r0, q0
                    best = x[i, best_r, best_q, j]
                    for a in range(2):
                        for b in range(2):
                            rr, qq = r0 + a, q0 + b
                            if rr < h and qq < w:
                                if x[i, rr, qq, j] > best:  # strict: the first maximum wins
                                    best, best_r, best_q = x[i, rr, qq, j], rr, qq
                                gx[i, rr, qq, j] = 0
                    gx[i, best_r, best_q, j] = gz[i, r, q, j]


def max_pool_nhwc(x: np.ndarray) -> np.ndarray:
    """2x2 max pooling, ignore_border=False (an odd last row or column pools alone)."""
    x = np.ascontiguousarray(x)
    n, h, w, c = x.shape
    out = np.empty((n, (h + 1) // 2, (w + 1) // 2, c), dtype=x.dtype)
    _kernel_threads.run(lambda start, stop: _max_pool_kernel(x[start:stop], out[start:stop]), n, blas=False)
    return out


def max_pool_grad_nhwc(x: np.ndarray, gz: np.ndarray) -> np.ndarray:
    """Route each output gradient to the first maximum of its window (row-major), as cuDNN does."""
    x = np.ascontiguousarray(x)
    gz = np.ascontiguousarray(gz, dtype=np.result_type(x.dtype, gz.dtype))
    gx = np.empty(x.shape, dtype=gz.dtype)
    _kernel_threads.run(lambda start, stop: _max_pool_grad_kernel(x[start:stop], gz[start:stop], gx[start:stop]),
                        len(x), blas=False)
    return gx


def max_pool_numpy(x: np.ndarray) -> np.ndarray:
    """Channels-first 2x2 max pooling, for references and viewers."""
    out = max_pool_nhwc(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _compile_kernels(dtype) -> None:
    """Run every kernel the c backend's Ops call once, on a few zeros of `dtype`, in the layouts a
    training step passes them (C-contiguous, first-axis slices): Numba compiles each then, and the
    step finds them ready. Batches of 2 run on the calling thread, not on the kernels' pool, and leave
    BLAS's thread count alone (their few tiny products run at whatever count it has)."""
    one, two = np.zeros((2, 4, 4, 1), dtype), np.zeros((2, 4, 4, 2), dtype)  # direct loops; im2col
    g = np.zeros((2, 2, 2, 2), dtype)
    for x in (one, two):
        corr2d_nhwc(x, np.zeros((2, x.shape[3], 3, 3), dtype))
        corr2d_weights_nhwc(x, g)
    corr2d_input_grad_nhwc(g, np.zeros((2, 2, 3, 3), dtype), 4, 4)
    max_pool_grad_nhwc(two, g)
    max_pool_nhwc(two)


_kernel_compilation: dict[tuple[str, str], threading.Thread] = {}
_kernel_compilation_lock = threading.Lock()


def start_kernel_compilation(dtype="float32") -> threading.Thread:
    """Compile the convolution and pooling kernels on a thread of their own, once a process.

    From an empty Numba cache that is 2.5-3.7 s of one core, and a cold compile of the convnet otherwise
    pays it after its C modules are built, with the second core idle. Started before the graph is
    linked, it runs beside the rewrites and the g++ runs (Numba's compiler lock makes any kernel called
    meanwhile wait for it, not compile it twice). From a warm cache it loads them in a fraction of a
    second. Not a daemon: an interpreter leaving mid-compile waits for it rather than cut it off.
    A process forked while it compiles inherits Numba's compiler lock held by a thread it does not
    have: fork before a convnet compile or after it, not during (mnistgui itself never forks)."""
    return start_compilation_thread("mnistgui-numba-kernels", _compile_kernels, dtype)


def start_compilation_thread(name: str, compile_kernels, dtype) -> threading.Thread:
    """Run compile_kernels(dtype) on a thread called `name`, once a process for each name and dtype."""
    key = (name, np.dtype(dtype).name)
    with _kernel_compilation_lock:
        thread = _kernel_compilation.get(key)
        if thread is None:
            thread = threading.Thread(target=compile_kernels, args=(np.dtype(dtype),), name=name)
            _kernel_compilation[key] = thread
            thread.start()
        return thread


def _forget_kernel_compilation_in_child() -> None:
    global _kernel_compilation_lock
    _kernel_compilation_lock = threading.Lock()
    _kernel_compilation.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_kernel_compilation_in_child)


# --- Ops, channels-last -------------------------------------------------------------------------------


def _as_float_out(node, value):
    return value.astype(node.outputs[0].dtype, copy=False)


class Corr2dValid(Op):
    """Valid 2-d cross-correlation of x (N, H, W, C) with k (F, C, kh, kw), giving (N, H', W', F)."""

    __props__ = ()

    def make_node(self, x, k):
        x = pt.as_tensor_variable(x)
        k = pt.as_tensor_variable(k)
        if x.ndim != 4 or k.ndim != 4:
            raise TypeError("Corr2dValid takes two 4-d tensors")
        out = pt.tensor(dtype=upcast(x.dtype, k.dtype), shape=(x.type.shape[0], None, None, k.type.shape[0]))
        return Apply(self, [x, k], [out])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = _as_float_out(node, corr2d_nhwc(*inputs))

    def infer_shape(self, *args):  # (fgraph, node, shapes) on PyTensor 3.0, (node, shapes) on 3.3
        (n, h, w, _), (f, _, kh, kw) = args[-1]
        return [(n, h - kh + 1, w - kw + 1, f)]

    def pullback(self, inputs, outputs, output_grads):
        x, k = inputs
        (g,) = output_grads
        return [corr2d_input_grad(x, g, k), corr2d_weights(x, g)]


class Corr2dWeights(Op):
    """Gradient of `Corr2dValid` with respect to its filters, given x and the output gradient g."""

    __props__ = ()

    def make_node(self, x, g):
        x = pt.as_tensor_variable(x)
        g = pt.as_tensor_variable(g)
        out = pt.tensor(dtype=upcast(x.dtype, g.dtype), shape=(g.type.shape[3], x.type.shape[3], None, None))
        return Apply(self, [x, g], [out])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = _as_float_out(node, corr2d_weights_nhwc(*inputs))

    def infer_shape(self, *args):  # (fgraph, node, shapes) on PyTensor 3.0, (node, shapes) on 3.3
        (_, h, w, c), (_, rows, cols, f) = args[-1]
        return [(f, c, h - rows + 1, w - cols + 1)]

    def pullback(self, inputs, outputs, output_grads):
        x, g = inputs
        (gk,) = output_grads
        return [corr2d_input_grad(x, g, gk), corr2d_valid(x, gk)]


class Corr2dInputGrad(Op):
    """Gradient of `Corr2dValid` with respect to x, given g and k; x itself only lends its shape."""

    __props__ = ()

    def make_node(self, x, g, k):
        x, g, k = (pt.as_tensor_variable(v) for v in (x, g, k))
        out = pt.tensor(dtype=upcast(g.dtype, k.dtype), shape=(g.type.shape[0], None, None, k.type.shape[1]))
        return Apply(self, [x, g, k], [out])

    def perform(self, node, inputs, output_storage):
        x, g, k = inputs
        output_storage[0][0] = _as_float_out(node, corr2d_input_grad_nhwc(g, k, x.shape[1], x.shape[2]))

    def infer_shape(self, *args):  # (fgraph, node, shapes) on PyTensor 3.0, (node, shapes) on 3.3
        (n, h, w, _), _, (_, c, _, _) = args[-1]
        return [(n, h, w, c)]

    def connection_pattern(self, node):
        return [[False], [True], [True]]

    def pullback(self, inputs, outputs, output_grads):
        x, g, k = inputs
        (gx,) = output_grads
        return [disconnected_type(), corr2d_valid(gx, k), corr2d_weights(gx, g)]


corr2d_valid = Corr2dValid()
corr2d_weights = Corr2dWeights()
corr2d_input_grad = Corr2dInputGrad()


class MaxPool2x2(Op):
    """Non-overlapping 2x2 max pooling of (N, H, W, C), ignore_border=False: (N, ceil(H/2), ceil(W/2), C)."""

    __props__ = ()

    def make_node(self, x):
        x = pt.as_tensor_variable(x)
        if x.ndim != 4:
            raise TypeError("MaxPool2x2 takes a 4-d tensor")
        out = pt.tensor(dtype=x.dtype, shape=(x.type.shape[0], None, None, x.type.shape[3]))
        return Apply(self, [x], [out])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = max_pool_nhwc(inputs[0])

    def infer_shape(self, *args):  # (fgraph, node, shapes) on PyTensor 3.0, (node, shapes) on 3.3
        n, h, w, c = args[-1][0]
        return [(n, (h + 1) // 2, (w + 1) // 2, c)]

    def pullback(self, inputs, outputs, output_grads):
        return [max_pool_grad(inputs[0], output_grads[0])]


class MaxPool2x2Grad(Op):
    __props__ = ()

    def make_node(self, x, gz):
        x = pt.as_tensor_variable(x)
        gz = pt.as_tensor_variable(gz)
        return Apply(self, [x, gz], [x.type()])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = _as_float_out(node, max_pool_grad_nhwc(*inputs))

    def infer_shape(self, *args):  # (fgraph, node, shapes) on PyTensor 3.0, (node, shapes) on 3.3
        return [args[-1][0]]


max_pool_2x2 = MaxPool2x2()
max_pool_grad = MaxPool2x2Grad()


class ZeroPad2d(Op):
    """Zero-pad (N, H, W, C) by `rows` above and below and `cols` left and right.

    An Op rather than set_subtensor on a zeros tensor: the padded shape is then the Op's own
    business, where JAX needs it (it cannot allocate an array whose size is arithmetic on traced
    shapes).
    """

    __props__ = ("rows", "cols")

    def __init__(self, rows: int, cols: int):
        self.rows, self.cols = int(rows), int(cols)

    def make_node(self, x):
        x = pt.as_tensor_variable(x)
        if x.ndim != 4:
            raise TypeError("ZeroPad2d takes a 4-d tensor")

        def grown(size, by):
            return None if size is None else size + 2 * by

        shape = (x.type.shape[0], grown(x.type.shape[1], self.rows), grown(x.type.shape[2], self.cols), x.type.shape[3])
        return Apply(self, [x], [pt.tensor(dtype=x.dtype, shape=shape)])

    def perform(self, node, inputs, output_storage):
        (x,) = inputs
        n, h, w, c = x.shape
        out = np.zeros((n, h + 2 * self.rows, w + 2 * self.cols, c), dtype=x.dtype)
        out[:, self.rows : self.rows + h, self.cols : self.cols + w, :] = x
        output_storage[0][0] = out

    def infer_shape(self, *args):  # (fgraph, node, shapes) on PyTensor 3.0, (node, shapes) on 3.3
        n, h, w, c = args[-1][0]
        return [(n, h + 2 * self.rows, w + 2 * self.cols, c)]

    def pullback(self, inputs, outputs, output_grads):
        (g,) = output_grads

        def inner(by):  # constant bounds: no arithmetic on shapes
            return slice(by, -by) if by else slice(None)

        return [g[:, inner(self.rows), inner(self.cols), :]]


def matmul_in_parts_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b with a's rows cut into one part a core, as the conv kernels are."""
    dtype = np.result_type(a.dtype, b.dtype)
    a = np.asarray(a, dtype=dtype)
    b = np.asarray(b, dtype=dtype)
    out = np.empty((a.shape[0], b.shape[1]), dtype=dtype)

    def part(start, stop):
        np.matmul(a[start:stop], b, out=out[start:stop])

    _kernel_threads.run(part, a.shape[0])
    return out


class MatMulInParts(Op):
    """a @ b of two matrices, a's rows in one part a core: the convnet's dense layers, which would
    otherwise run on the one BLAS thread its kernels leave (two of the three products of each
    layer's step take half the time so)."""

    __props__ = ()

    def make_node(self, a, b):
        a = pt.as_tensor_variable(a)
        b = pt.as_tensor_variable(b)
        if a.ndim != 2 or b.ndim != 2:
            raise TypeError("MatMulInParts takes two matrices")
        out = pt.tensor(dtype=upcast(a.dtype, b.dtype), shape=(a.type.shape[0], b.type.shape[1]))
        return Apply(self, [a, b], [out])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = _as_float_out(node, matmul_in_parts_numpy(*inputs))

    def infer_shape(self, *args):  # (fgraph, node, shapes) on PyTensor 3.0, (node, shapes) on 3.3
        (rows, _), (_, cols) = args[-1]
        return [(rows, cols)]

    def pullback(self, inputs, outputs, output_grads):
        a, b = inputs
        (g,) = output_grads
        return [matmul_in_parts(g, b.T), matmul_in_parts(a.T, g)]


matmul_in_parts = MatMulInParts()


# --- graph functions ---------------------------------------------------------------------------------


def _pad_spatial(x, ph, pw):
    """Zero-pad axes 1 and 2 of a channels-last 4-d tensor by (ph, pw) on each side."""
    if isinstance(ph, int) and isinstance(pw, int):  # static: one Op every backend runs natively
        return ZeroPad2d(ph, pw)(x)
    n, h, w, c = x.shape
    padded = pt.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=x.dtype)
    return pt.set_subtensor(padded[:, ph : ph + h, pw : pw + w, :], x)


def conv2d_nhwc(x, w, border_mode: str = "valid", filter_shape: tuple[int, int, int, int] | None = None):
    """Theano's conv2d on channels-last x (N, H, W, C) with filters w (F, C, kh, kw): (N, H', W', F).

    'valid' gives H - kh + 1 rows, 'full' gives H + kh - 1. `filter_shape` (static) lets 'full' pad
    by constants; without it the padding is read from w's shape at run time.
    """
    if border_mode not in ("valid", "full"):
        raise ValueError(f"border_mode must be 'valid' or 'full', not {border_mode!r}")
    if border_mode == "full":
        kh, kw = filter_shape[2:] if filter_shape is not None else (w.shape[2], w.shape[3])
        x = _pad_spatial(x, kh - 1, kw - 1)
    return corr2d_valid(x, w[:, :, ::-1, ::-1])


def conv2d(x, w, border_mode: str = "valid", filter_shape: tuple[int, int, int, int] | None = None):
    """Theano's conv2d on channels-first x (N, C, H, W): true convolution, 'valid' or 'full'."""
    out = conv2d_nhwc(x.dimshuffle(0, 2, 3, 1), w, border_mode, filter_shape)
    return out.dimshuffle(0, 3, 1, 2)


max_pool_2d_nhwc = max_pool_2x2


def max_pool_2d(x):
    """The notebook's max_pool_2d(x, (2, 2)) with ignore_border=False, on channels-first x."""
    return max_pool_2x2(x.dimshuffle(0, 2, 3, 1)).dimshuffle(0, 3, 1, 2)


# --- Numba: native implementations, so that NUMBA mode needs no object mode ----------------------------
# PyTensor's NUMBA mode runs an Op without a `numba_funcify` registration through its Python
# `perform` in Numba's object mode: a round trip through the interpreter for every call. These
# kernels are the NumPy ones above, written for nopython mode (np.dot on contiguous arrays is BLAS).


@numba.njit(cache=_CACHE, nogil=True, fastmath=False)
def _filters_as_matrix_nb(k):
    f, c, kh, kw = k.shape
    return np.ascontiguousarray(k.transpose(2, 3, 1, 0)).reshape(kh * kw * c, f)


# The C backend's parts and blocks, on Numba's threads: each kernel cuts its batch into the parts the C
# kernels would for `threads` (`_parts_nb`, `_bounds_nb`; the Ops pass `numba_kernel_threads()`, read when
# they run: `_kernel_parts_nb`) and runs them under `prange`, each part in blocks whose patches stay in cache
# between im2col and the product, with BLAS on one thread meanwhile (`backend.kernel_cores`). A part runs
# what the C backend's part runs, so a filter gradient, summed over the parts in order, is the same sum.
# One part (a small batch, or one thread) runs on the calling thread, with no parallel launch. The C
# kernels' parts stay Python functions around NumPy's matmul rather than calling these: jitting np.dot and
# the parallel loops took their warm-up from 2.2 to 6.3 s of a cold compile, for an epoch no faster.
#
# The entry points (corr2d_nb, ..., matmul_in_parts_nb) are inlined into the Ops' jitted functions
# (`inline="always"`; called from Python they still compile on their own). Numba links a callee's
# machine code into each caller and optimises and emits it again there, so every layer of calls above
# the parallel loops paid for them anew: the convnet's cold compile under NUMBA mode took 64-66 s, and
# 52-57 s with these layers inlined away (profiled with numba's compile events; the Ops' own layer and
# PyTensor's caching wrapper, which calls through *args, cannot be inlined).


@numba.njit(cache=_CACHE, nogil=True, fastmath=False)
def _corr_part_nb(x, weights, kh, kw, out, start, stop):
    n, h, w, c = x.shape
    rows, cols, f = out.shape[1], out.shape[2], out.shape[3]
    if kh * kw * c <= _DIRECT_PATCH:
        _corr_direct_into(x[start:stop], weights, kh, kw, out[start:stop])
        return
    flat = out.reshape(n * rows * cols, f)
    block = _block_images(rows * cols * kh * kw * c)
    patches = np.empty((min(block, stop - start) * rows * cols, kh * kw * c), dtype=x.dtype)
    for first in range(start, stop, block):
        last = min(first + block, stop)
        m = (last - first) * rows * cols
        _im2col_into(x[first:last], kh, kw, patches[:m])
        np.dot(patches[:m], weights, flat[first * rows * cols : first * rows * cols + m])


@numba.njit(cache=_CACHE, nogil=True, fastmath=False, parallel=True)
def _corr_parts_nb(x, weights, kh, kw, out, parts):
    for part in numba.prange(parts):
        start, stop = _bounds_nb(x.shape[0], parts, part)
        _corr_part_nb(x, weights, kh, kw, out, start, stop)


@numba.njit(cache=_CACHE, nogil=True, fastmath=False, inline="always")
def corr2d_nb(x, k, threads):
    """`corr2d_nhwc` in nopython mode, in parts for `threads`; x and k of one float dtype."""
    x = np.ascontiguousarray(x)
    n, h, w, c = x.shape
    f, _, kh, kw = k.shape
    weights = _filters_as_matrix_nb(k)
    out = np.empty((n, h - kh + 1, w - kw + 1, f), dtype=x.dtype)
    parts = _parts_nb(n, threads)
    if parts == 1:
        _corr_part_nb(x, weights, kh, kw, out, 0, n)
    else:
        _corr_parts_nb(x, weights, kh, kw, out, parts)
    return out


@numba.njit(cache=_CACHE, nogil=True, fastmath=False)
def _corr_weights_part_nb(x, g, kh, kw, start, stop, total):
    """total (F, kh * kw * C) = the filter gradient of images [start, stop)."""
    n, h, w, c = x.shape
    _, rows, cols, f = g.shape
    if kh * kw * c <= _DIRECT_PATCH:
        total[:] = _corr_weights_direct(x[start:stop], g[start:stop], kh, kw).T
        return
    g_flat = g.reshape(n * rows * cols, f)
    block = _block_images(rows * cols * kh * kw * c)
    patches = np.empty((min(block, stop - start) * rows * cols, kh * kw * c), dtype=x.dtype)
    product = np.empty_like(total)
    total[:] = 0
    for first in range(start, stop, block):
        last = min(first + block, stop)
        m = (last - first) * rows * cols
        _im2col_into(x[first:last], kh, kw, patches[:m])
        np.dot(g_flat[first * rows * cols : first * rows * cols + m].T, patches[:m], product)
        total += product


@numba.njit(cache=_CACHE, nogil=True, fastmath=False, parallel=True)
def _corr_weights_parts_nb(x, g, kh, kw, totals):
    parts = totals.shape[0]
    for part in numba.prange(parts):
        start, stop = _bounds_nb(x.shape[0], parts, part)
        _corr_weights_part_nb(x, g, kh, kw, start, stop, totals[part])


@numba.njit(cache=_CACHE, nogil=True, fastmath=False, inline="always")
def corr2d_weights_nb(x, g, threads):
    """`corr2d_weights_nhwc` in nopython mode."""
    x, g = np.ascontiguousarray(x), np.ascontiguousarray(g)
    n, h, w, c = x.shape
    _, rows, cols, f = g.shape
    kh, kw = h - rows + 1, w - cols + 1
    parts = _parts_nb(n, threads)
    totals = np.empty((parts, f, kh * kw * c), dtype=x.dtype)
    if parts == 1:
        _corr_weights_part_nb(x, g, kh, kw, 0, n, totals[0])
    else:
        _corr_weights_parts_nb(x, g, kh, kw, totals)
    dk = totals[0].copy()
    for part in range(1, parts):
        dk += totals[part]
    return np.ascontiguousarray(dk.reshape(f, kh, kw, c).transpose(0, 3, 1, 2))


@numba.njit(cache=_CACHE, nogil=True, fastmath=False)
def _corr_input_grad_part_nb(g, weights_t, dx, start, stop):
    n, rows, cols, f = g.shape
    _, h, w, c = dx.shape
    kh, kw = h - rows + 1, w - cols + 1
    g_flat = g.reshape(n * rows * cols, f)
    block = _block_images(rows * cols * kh * kw * c)
    patches = np.empty((min(block, stop - start) * rows * cols, kh * kw * c), dtype=g.dtype)
    for first in range(start, stop, block):
        last = min(first + block, stop)
        m = (last - first) * rows * cols
        np.dot(g_flat[first * rows * cols : first * rows * cols + m], weights_t, patches[:m])
        _col2im_into(patches[:m], kh, kw, dx[first:last])


@numba.njit(cache=_CACHE, nogil=True, fastmath=False, parallel=True)
def _corr_input_grad_parts_nb(g, weights_t, dx, parts):
    for part in numba.prange(parts):
        start, stop = _bounds_nb(g.shape[0], parts, part)
        _corr_input_grad_part_nb(g, weights_t, dx, start, stop)


@numba.njit(cache=_CACHE, nogil=True, fastmath=False, inline="always")
def corr2d_input_grad_nb(g, k, h, w, threads):
    """`corr2d_input_grad_nhwc` in nopython mode: a block's patch gradients by one product, then col2im."""
    g = np.ascontiguousarray(g)
    n, rows, cols, f = g.shape
    _, c, kh, kw = k.shape
    weights_t = np.ascontiguousarray(_filters_as_matrix_nb(k).T)
    dx = np.empty((n, h, w, c), dtype=g.dtype)
    parts = _parts_nb(n, threads)
    if parts == 1:
        _corr_input_grad_part_nb(g, weights_t, dx, 0, n)
    else:
        _corr_input_grad_parts_nb(g, weights_t, dx, parts)
    return dx


@numba.njit(cache=_CACHE, nogil=True, fastmath=False, parallel=True)
def _max_pool_parts_nb(x, out, parts):
    for part in numba.prange(parts):
        start, stop = _bounds_nb(x.shape[0], parts, part)
        _max_pool_kernel(x[start:stop], out[start:stop])


@numba.njit(cache=_CACHE, nogil=True, fastmath=False, inline="always")
def max_pool_nb(x, threads):
    """`max_pool_nhwc` in nopython mode."""
    x = np.ascontiguousarray(x)
    n, h, w, c = x.shape
    out = np.empty((n, (h + 1) // 2, (w + 1) // 2, c), dtype=x.dtype)
    parts = _parts_nb(n, threads)
    if parts == 1:
        _max_pool_kernel(x, out)
    else:
        _max_pool_parts_nb(x, out, parts)
    return out


@numba.njit(cache=_CACHE, nogil=True, fastmath=False, parallel=True)
def _max_pool_grad_parts_nb(x, gz, gx, parts):
    for part in numba.prange(parts):
        start, stop = _bounds_nb(x.shape[0], parts, part)
        _max_pool_grad_kernel(x[start:stop], gz[start:stop], gx[start:stop])


@numba.njit(cache=_CACHE, nogil=True, fastmath=False, inline="always")
def max_pool_grad_into_nb(x, gz, gx, threads):
    """`max_pool_grad_nhwc` in nopython mode, into gx (every element written)."""
    x, gz = np.ascontiguousarray(x), np.ascontiguousarray(gz)
    parts = _parts_nb(x.shape[0], threads)
    if parts == 1:
        _max_pool_grad_kernel(x, gz, gx)
    else:
        _max_pool_grad_parts_nb(x, gz, gx, parts)


@numba.njit(cache=_CACHE, nogil=True, fastmath=False, parallel=True)
def _matmul_parts_nb(a, b, out, parts):
    for part in numba.prange(parts):
        start, stop = _bounds_nb(a.shape[0], parts, part)
        np.dot(a[start:stop], b, out[start:stop])


@numba.njit(cache=_CACHE, nogil=True, fastmath=False, inline="always")
def matmul_in_parts_nb(a, b, threads):
    """`matmul_in_parts_numpy` in nopython mode."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    parts = _parts_nb(a.shape[0], threads)
    if parts == 1:
        return np.dot(a, b)
    out = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    _matmul_parts_nb(a, b, out, parts)
    return out


_NUMBA_KERNEL_VERSION = 8  # bump when a kernel changes, so PyTensor's Numba cache is refreshed


@intrinsic
def _kernel_parts_nb(typingctx):
    """`_numba_kernel_parts`, loaded when the jitted code runs (an external symbol, so a graph loaded
    from Numba's cache reads it too)."""

    def codegen(context, builder, signature, args):
        from llvmlite import ir

        parts = builder.module.globals.get(_KERNEL_PARTS_SYMBOL)
        if parts is None:
            parts = ir.GlobalVariable(builder.module, ir.IntType(32), _KERNEL_PARTS_SYMBOL)
            parts.linkage = "external"
        return builder.sext(builder.load(parts), ir.IntType(64))

    return numba.types.int64(), codegen


def _register_numba() -> None:
    import scipy.linalg.cython_blas  # noqa: F401  (the BLAS Numba's np.dot calls: loaded now, so a hold on BLAS finds it)
    from llvmlite import binding as llvm
    from pytensor.link.numba.dispatch import basic as numba_basic
    from pytensor.link.numba.dispatch.basic import register_funcify_default_op_cache_key

    llvm.add_symbol(_KERNEL_PARTS_SYMBOL, ctypes.addressof(_numba_kernel_parts))

    def caster(node, index):
        """A jitted v -> v as the output's dtype for input `index` (no copy when it is that already),
        inlined into the Op's function."""
        dtype = np.dtype(node.outputs[0].dtype)
        if node.inputs[index].dtype == dtype:
            return numba.njit(inline="always", fastmath=False)(lambda v: v)
        return numba.njit(inline="always", fastmath=False)(lambda v: v.astype(dtype))

    @register_funcify_default_op_cache_key(Corr2dValid)
    def numba_funcify_corr2d_valid(op, node, **kwargs):
        numba_kernel_threads()  # sets the parts the function reads when it runs
        cast_x, cast_k = caster(node, 0), caster(node, 1)

        @numba_basic.numba_njit(fastmath=False)
        def corr2d_valid_nb(x, k):
            return corr2d_nb(cast_x(x), cast_k(k), _kernel_parts_nb())

        return corr2d_valid_nb, _NUMBA_KERNEL_VERSION

    @register_funcify_default_op_cache_key(Corr2dWeights)
    def numba_funcify_corr2d_weights(op, node, **kwargs):
        numba_kernel_threads()  # sets the parts the function reads when it runs
        cast_x, cast_g = caster(node, 0), caster(node, 1)

        @numba_basic.numba_njit(fastmath=False)
        def corr2d_weights_op_nb(x, g):
            return corr2d_weights_nb(cast_x(x), cast_g(g), _kernel_parts_nb())

        return corr2d_weights_op_nb, _NUMBA_KERNEL_VERSION

    @register_funcify_default_op_cache_key(Corr2dInputGrad)
    def numba_funcify_corr2d_input_grad(op, node, **kwargs):
        numba_kernel_threads()  # sets the parts the function reads when it runs
        cast_g, cast_k = caster(node, 1), caster(node, 2)

        @numba_basic.numba_njit(fastmath=False)
        def corr2d_input_grad_op_nb(x, g, k):
            return corr2d_input_grad_nb(cast_g(g), cast_k(k), x.shape[1], x.shape[2], _kernel_parts_nb())

        return corr2d_input_grad_op_nb, _NUMBA_KERNEL_VERSION

    @register_funcify_default_op_cache_key(MaxPool2x2)
    def numba_funcify_max_pool(op, node, **kwargs):
        numba_kernel_threads()  # sets the parts the function reads when it runs
        @numba_basic.numba_njit(fastmath=False)
        def max_pool_op_nb(x):
            return max_pool_nb(x, _kernel_parts_nb())

        return max_pool_op_nb, _NUMBA_KERNEL_VERSION

    @register_funcify_default_op_cache_key(MaxPool2x2Grad)
    def numba_funcify_max_pool_grad(op, node, **kwargs):
        numba_kernel_threads()  # sets the parts the function reads when it runs
        dtype = np.dtype(node.outputs[0].dtype)

        @numba_basic.numba_njit(fastmath=False)
        def max_pool_grad_nb(x, gz):
            gx = np.empty(x.shape, dtype=dtype)
            max_pool_grad_into_nb(x, gz, gx, _kernel_parts_nb())
            return gx

        return max_pool_grad_nb, _NUMBA_KERNEL_VERSION

    @register_funcify_default_op_cache_key(MatMulInParts)
    def numba_funcify_matmul_in_parts(op, node, **kwargs):
        numba_kernel_threads()  # sets the parts the function reads when it runs
        cast_a, cast_b = caster(node, 0), caster(node, 1)

        @numba_basic.numba_njit(fastmath=False)
        def matmul_nb(a, b):
            return matmul_in_parts_nb(cast_a(a), cast_b(b), _kernel_parts_nb())

        return matmul_nb, _NUMBA_KERNEL_VERSION

    @register_funcify_default_op_cache_key(ZeroPad2d)
    def numba_funcify_zero_pad(op, node, **kwargs):
        rows, cols = op.rows, op.cols

        @numba_basic.numba_njit(fastmath=False)
        def zero_pad_nb(x):
            n, h, w, c = x.shape
            out = np.zeros((n, h + 2 * rows, w + 2 * cols, c), dtype=x.dtype)
            out[:, rows : rows + h, cols : cols + w, :] = x
            return out

        return zero_pad_nb, _NUMBA_KERNEL_VERSION


# --- JAX: the same Ops through XLA ---------------------------------------------------------------------
# The convolution is lax.conv_general_dilated (a cross-correlation, like Corr2dValid; conv2d flips
# the filters in the graph); its two gradients are the forward's vjp, so XLA derives them. Max
# pooling pads odd sizes with -inf (ignore_border=False) and routes each gradient to the first
# maximum of its window in row-major order, exactly as the C and Numba kernels do.


def _register_jax() -> None:
    import jax
    import jax.numpy as jnp
    from jax import lax
    from pytensor.link.jax.dispatch import jax_funcify

    def corr(x, k):  # x (N, H, W, C), k (F, C, kh, kw)
        return lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "OIHW", "NHWC"))

    def as_dtype(node):
        dtype = node.outputs[0].dtype
        return lambda v: jnp.asarray(v, dtype=dtype)

    @jax_funcify.register(Corr2dValid)
    def jax_funcify_corr2d_valid(op, node, **kwargs):
        cast = as_dtype(node)
        return lambda x, k: corr(cast(x), cast(k))

    @jax_funcify.register(Corr2dWeights)
    def jax_funcify_corr2d_weights(op, node, **kwargs):
        cast = as_dtype(node)

        def corr2d_weights_jax(x, g):
            x, g = cast(x), cast(g)
            kh, kw = x.shape[1] - g.shape[1] + 1, x.shape[2] - g.shape[2] + 1
            zero_k = jnp.zeros((g.shape[3], x.shape[3], kh, kw), dtype=x.dtype)  # linear in k: any point
            _, pullback = jax.vjp(lambda k: corr(x, k), zero_k)
            return pullback(g)[0]

        return corr2d_weights_jax

    @jax_funcify.register(Corr2dInputGrad)
    def jax_funcify_corr2d_input_grad(op, node, **kwargs):
        cast = as_dtype(node)

        def corr2d_input_grad_jax(x, g, k):
            g, k = cast(g), cast(k)
            zero_x = jnp.zeros((g.shape[0], x.shape[1], x.shape[2], k.shape[1]), dtype=g.dtype)
            _, pullback = jax.vjp(lambda v: corr(v, k), zero_x)
            return pullback(g)[0]

        return corr2d_input_grad_jax

    def pad_even(x):
        """Pad rows and columns to even counts with -inf: the ceil-mode windows."""
        h, w = x.shape[1], x.shape[2]
        return jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-jnp.inf)

    def corners(x):
        return [x[:, a::2, b::2, :] for a in (0, 1) for b in (0, 1)]  # row-major window order

    def max_pool(x):
        top_left, top_right, bottom_left, bottom_right = corners(pad_even(x))
        return jnp.maximum(jnp.maximum(top_left, top_right), jnp.maximum(bottom_left, bottom_right))

    @jax_funcify.register(MaxPool2x2)
    def jax_funcify_max_pool(op, node, **kwargs):
        return max_pool

    @jax_funcify.register(MaxPool2x2Grad)
    def jax_funcify_max_pool_grad(op, node, **kwargs):
        cast = as_dtype(node)

        def max_pool_grad_jax(x, gz):
            gz = cast(gz)
            padded = pad_even(x)
            pooled = max_pool(x)
            gx = jnp.zeros(padded.shape, dtype=gz.dtype)
            taken = jnp.zeros(pooled.shape, dtype=bool)
            for (a, b), corner in zip(((0, 0), (0, 1), (1, 0), (1, 1)), corners(padded)):
                hit = (corner == pooled) & ~taken
                gx = gx.at[:, a::2, b::2, :].set(jnp.where(hit, gz, 0))
                taken = taken | hit
            return gx[:, : x.shape[1], : x.shape[2], :]

        return max_pool_grad_jax

    @jax_funcify.register(MatMulInParts)
    def jax_funcify_matmul_in_parts(op, node, **kwargs):
        cast = as_dtype(node)
        return lambda a, b: jnp.dot(cast(a), cast(b))

    @jax_funcify.register(ZeroPad2d)
    def jax_funcify_zero_pad(op, node, **kwargs):
        widths = ((0, 0), (op.rows, op.rows), (op.cols, op.cols), (0, 0))
        return lambda x: jnp.pad(x, widths)


_registered: set[str] = set()


def register_backend(name: str) -> None:
    """Teach PyTensor's `name` linker ("numba" or "jax") to run these Ops natively; idempotent."""
    if name in _registered:
        return
    from . import dropout_ops, softmax_ops

    if name == "numba":
        _register_numba()
        softmax_ops.register_numba()
        dropout_ops.register_numba()
    elif name == "jax":
        _register_jax()
        softmax_ops.register_jax()
        dropout_ops.register_jax()
    _registered.add(name)
