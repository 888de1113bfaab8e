"""PyTensor set-up: float32 everywhere, and the choice of compilation backend.

A pip-installed PyTensor finds no BLAS for its C backend, and its BLAS rewrites then fall back to
slow loops through NumPy's C API. mnistgui's "c" backend therefore compiles the C linker (CVM) with
the BLAS rewrites left out: elementwise work is fused into compiled C, and every matrix product stays
a `Dot` that NumPy runs with its own bundled, multithreaded OpenBLAS. Measured on the 2-core
reference machine, one MNIST epoch (see the README for the command):

    backend                          logreg   mlp     convnet compile (cold)
    c (CVM, NumPy BLAS)              0.07 s   0.93 s  seconds
    numba (PyTensor's default)       0.08 s   0.93 s  minutes
    CVM with PyTensor's BLAS rewrites 0.13 s  3.5 s

So "auto" means "c" where a C++ compiler exists, else "numba", which needs none. The "c" mode links
with `parallel_build.ParallelBuildVMLinker`: a cold compile builds the graph's C modules on every core
at once, and shapes and views run in Python without a module of their own. A frozen app
(PyInstaller) always takes "numba": compiling C there would need Python's headers, which it lacks.
Under Numba every Op of ours runs natively (ops.register_backend, and the dropout draw below): no
object-mode round trips through the interpreter.

"jax" (never chosen by "auto") runs the graphs through JAX and XLA, on the CPU or, with a CUDA
jaxlib (pip install -U "jax[cuda12]"), on an NVIDIA GPU. JAX needs static shapes; `_jax_mode`
keeps them so, and the trainer feeds JAX whole batches instead of slicing by a traced index.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import warnings

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile.mode import Mode

from .. import shipped_cache
from . import c_rewrites, ops

try:
    from . import parallel_build
except ImportError:  # a PyTensor whose C-linker internals moved: its own serial linker, as before
    parallel_build = None
from .config import BACKENDS
from .errors import ConfigError

pytensor.config.floatX = "float32"
# With no BLAS to link, PyTensor's probe for one warns on every start, and we never call BLAS from
# C anyway (see above). Setting the flag before its first read skips the probe; a user's own
# PYTENSOR_FLAGS setting wins.
if "blas__ldflags" not in os.environ.get("PYTENSOR_FLAGS", ""):
    pytensor.config.blas__ldflags = ""

# PyTensor reports, harmlessly, when a fused loop would have too many arguments.
warnings.filterwarnings("ignore", message=r"Loop fusion failed because the resulting node would exceed")

BACKEND_TITLES = {"c": "C (CVM) + NumPy BLAS", "numba": "Numba (LLVM)", "jax": "JAX (XLA)"}

JAX_MISSING = (
    "the jax backend needs the jax package, which does not import here: install it with "
    "pip install \"jax[cpu]\" (or \"jax[cuda12]\" for an NVIDIA GPU), or use --backend c or numba"
)


def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except Exception:  # a broken numba install raises more than ImportError
        return False
    return True


def jax_available() -> bool:
    try:
        import jax  # noqa: F401
    except Exception:  # a broken jax or jaxlib install raises more than ImportError
        return False
    return True


# Read once, at import, before any thread can be inside one of PyTensor's moments without a
# compiler (see _hold_compile_lock_while_the_compiler_is_off); the GUI thread asks too, and may not wait.
_COMPILER = pytensor.config.cxx


def compiler_available() -> bool:
    return bool(_COMPILER) and not getattr(sys, "frozen", False)


def resolve_backend(name: str) -> str:
    """Turn 'auto' into a concrete backend available here."""
    if name not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, not {name!r}")
    if name == "auto":
        return "c" if compiler_available() else "numba"
    if name == "numba" and not numba_available():
        raise ConfigError("the numba backend needs the numba package, which does not import here")
    if name == "jax" and not jax_available():
        raise ConfigError(JAX_MISSING)
    if name == "c" and not compiler_available():
        raise ConfigError("the c backend needs a C++ compiler (g++ or clang++); none was found: use --backend numba")
    return name


_numba_random_registered = False


def _register_numba_random() -> None:
    """The float32 dropout draw in nopython mode, the same stream as NumPy's Generator.random.

    PyTensor's Numba RandomVariable code vectorises a scalar core over the distribution's
    parameters and needs at least one; the draw has none. So the dispatch for the wrapper Op
    (RandomVariableWithCoreShape) is replaced by one that handles the draw itself and hands every
    other random variable to PyTensor's own implementation.
    """
    global _numba_random_registered
    if _numba_random_registered:
        return
    import numba.np.unsafe.ndarray as numba_ndarray
    from pytensor.link.numba.dispatch import basic as numba_basic
    from pytensor.link.numba.dispatch import random as numba_random
    from pytensor.link.numba.dispatch.basic import register_funcify_and_cache_key
    from pytensor.link.numba.dispatch.compile_ops import numba_deepcopy
    from pytensor.tensor import get_vector_length
    from pytensor.tensor.random.op import RandomVariableWithCoreShape

    from .layers import RandomFloat32

    pytensors_own = numba_random.numba_funcify_RandomVariable

    @register_funcify_and_cache_key(RandomVariableWithCoreShape)
    def numba_funcify_random_variable(op, node, **kwargs):
        [rv_node] = op.fgraph.apply_nodes
        rv_op = rv_node.op
        if not isinstance(rv_op, RandomFloat32):
            return pytensors_own(op, node, **kwargs)
        size_len = get_vector_length(rv_op.size_param(rv_node))
        inplace = rv_op.inplace

        @numba_basic.numba_njit(fastmath=False)
        def random_float32(core_shape, rng, size):
            if not inplace:
                rng = numba_deepcopy(rng)
            return rng, rng.random(size=numba_ndarray.to_fixed_tuple(size, size_len), dtype=np.float32)

        return random_float32, f"mnistgui-random-float32-v2-{size_len}-{inplace}"

    _numba_random_registered = True


def _register_jax_random() -> None:
    """The float32 dropout draw in JAX: jax.random.uniform, from the key PyTensor derives from the
    shared NumPy generator. A different stream from NumPy's, so JAX's masks differ from C's."""
    import jax
    import jax.numpy as jnp
    from pytensor.link.jax.dispatch.random import jax_sample_fn

    from .layers import RandomFloat32

    if RandomFloat32 in jax_sample_fn.registry:
        return

    @jax_sample_fn.register(RandomFloat32)
    def jax_sample_random_float32(op, node):
        def sample_fn(rng_key, size, dtype):
            return jax.random.uniform(rng_key, shape=tuple(size), dtype=jnp.float32)

        return sample_fn


def _jax_mode() -> Mode:
    """PyTensor's JAX mode, keeping shapes concrete.

    JAX traces with static shapes: `Shape(x)` of a traced x is a concrete tuple, but arithmetic on
    shapes is traced, and an allocation or a draw sized by traced values cannot compile. PyTensor's
    ShapeOpt replaces the shapes of our Ops' outputs by their infer_shape arithmetic ((h + 1) // 2
    after pooling), so the JAX mode leaves it out and instead turns `x.shape[i]` into `Shape_i`,
    which JAX's arange (the cross-entropy's label index) needs.
    """
    from pytensor.graph.rewriting.basic import in2out, node_rewriter
    from pytensor.graph.basic import Constant
    from pytensor.tensor.basic import ARange
    from pytensor.tensor.elemwise import DimShuffle
    from pytensor.tensor.shape import Shape, Shape_i
    from pytensor.tensor.subtensor import Subtensor, get_constant_idx

    @node_rewriter([Subtensor, DimShuffle])
    def shape_entry_to_shape_i(fgraph, node):
        """x.shape[i] as Shape_i(i)(x); for a vector x PyTensor writes x.shape[0] as a squeeze."""
        shape = node.inputs[0]
        if node.outputs[0].ndim != 0 or shape.owner is None or not isinstance(shape.owner.op, Shape):
            return None
        x = shape.owner.inputs[0]
        if isinstance(node.op, DimShuffle):
            return [Shape_i(0)(x)] if x.ndim == 1 else None
        try:
            (index,) = get_constant_idx(node.op.idx_list, node.inputs)
        except Exception:  # not a constant index
            return None
        if not isinstance(index, int | np.integer) or not -x.ndim <= index < x.ndim:
            return None
        return [Shape_i(int(index) % x.ndim)(x)]

    @node_rewriter([ARange])
    def arange_with_wide_constants(fgraph, node):
        """PyTensor stores arange(0, n) with an int8 0, and JAX then checks n against int8: 128 fails."""
        narrow = [isinstance(v, Constant) and v.dtype != "int64" for v in node.inputs]
        if not any(narrow):
            return None
        wide = [pt.constant(np.int64(v.data)) if is_narrow else v for v, is_narrow in zip(node.inputs, narrow)]
        return [ARange(node.op.dtype)(*wide)]

    # JAX computes in 32 bits unless told otherwise, and says so for every int64 or float64 in a
    # graph (label indices, a mean's accumulator): as intended here. The dropout generator is
    # copied into the compiled function, which advances its own copy.
    warnings.filterwarnings("ignore", message=r"Explicitly requested dtype (int64|float64) requested in")
    warnings.filterwarnings("ignore", message=r"The RandomType SharedVariables \[dropout_rng\] will not be used")
    mode = pytensor.compile.mode.get_mode("JAX").excluding("ShapeOpt")
    return mode.register((in2out(shape_entry_to_shape_i, arange_with_wide_constants, name="jax_static_shapes"), 48.0))


# PyTensor's compilation is not thread-safe: compiler detection, the module cache and the compile
# folder's lock are process-wide state. Two threads compiling at once (the lab's model service and an
# attack curve) were seen to print "`pytensor.config.cxx` is not an identifiable `g++` compiler" and
# to leave a curve that never finished. Every compilation in mnistgui goes through `function`.
COMPILE_LOCK = threading.RLock()


def function(*args, **kwargs):
    """`pytensor.function`, one thread at a time."""
    with COMPILE_LOCK:
        return pytensor.function(*args, **kwargs)


def _hold_compile_lock_while_the_compiler_is_off() -> None:
    """Make PyTensor's moments without a C compiler exclusive to one thread.

    PyTensor folds a static shape (an allocation, a random draw: any thread building a graph) under
    `config.change_flags(cxx="")`, and its config is process-wide. Two threads doing so at once can
    restore each other's "" for good: every later "c" request then fails ("needs a C++ compiler")
    and "auto" quietly means Numba; a thread compiling meanwhile finds no compiler. Seen in the test
    suite, with the lab's model service and a training worker building graphs together. Blocks that
    change `cxx` therefore hold COMPILE_LOCK (reentrant: PyTensor folds shapes inside compilations too).
    """
    try:
        from pytensor.configparser import _ChangeFlagsDecorator
    except ImportError:  # PyTensor reorganised: the test of this behaviour says whether it still holds
        return
    if getattr(_ChangeFlagsDecorator, "_mnistgui_locked", False):
        return
    enter, exit_ = _ChangeFlagsDecorator.__enter__, _ChangeFlagsDecorator.__exit__

    # A count a block object: one decorator object may be entered again, inside, by the same thread.
    def __enter__(self):
        if "cxx" not in getattr(self, "confs", ()):
            return enter(self)
        COMPILE_LOCK.acquire()
        held = getattr(self, "_mnistgui_held", 0)
        self._mnistgui_held = held + 1
        try:
            return enter(self)
        except BaseException:
            if self._mnistgui_held > held:  # PyTensor's enter may have called __exit__ already
                self._mnistgui_held -= 1
                COMPILE_LOCK.release()
            raise

    def __exit__(self, *args):
        try:
            return exit_(self, *args)
        finally:
            if getattr(self, "_mnistgui_held", 0) > 0:
                self._mnistgui_held -= 1
                COMPILE_LOCK.release()

    _ChangeFlagsDecorator.__enter__, _ChangeFlagsDecorator.__exit__ = __enter__, __exit__
    _ChangeFlagsDecorator._mnistgui_locked = True


def _after_fork_in_child() -> None:
    """A forked child has only the forking thread: a lock another thread held is held for ever there,
    and that thread's moment without a compiler never ends. Start the child with neither."""
    global COMPILE_LOCK
    COMPILE_LOCK = threading.RLock()
    if _COMPILER and not pytensor.config.cxx:
        pytensor.config.cxx = _COMPILER


_hold_compile_lock_while_the_compiler_is_off()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


_numba_cache_seeded = False
_numba_cache_seeding = threading.Lock()


def _seed_numba_cache_once() -> None:
    """The packaged app's shipped graphs into PyTensor's Numba cache, before its first Numba compile
    (a second thread compiling meanwhile waits for the copy, rather than miss and compile cold)."""
    global _numba_cache_seeded
    with _numba_cache_seeding:
        if not _numba_cache_seeded:
            shipped_cache.seed_pytensor_cache()
            _numba_cache_seeded = True


def read_only(array: np.ndarray) -> np.ndarray:
    """`array`, or a read-only view of it. Numba types a read-only array apart from a writable one and
    compiles a function anew for each: the data compiled functions take is read-only throughout (a
    dataset's files are; the Trainer's labels, shuffled epochs and the attacks' classes are made so), so
    that one compile serves a whole run and the packaged app's shipped graphs, compiled over read-only
    blank images, serve every run."""
    if array.flags.writeable:
        array = array.view()
        array.flags.writeable = False
    return array


def compile_mode(backend: str) -> Mode:
    backend = resolve_backend(backend)
    if backend == "numba":
        ops.register_backend("numba")
        _register_numba_random()
        _seed_numba_cache_once()
        return pytensor.compile.mode.get_mode("NUMBA")
    if backend == "jax":
        ops.register_backend("jax")
        _register_jax_random()
        return _jax_mode()
    # symbolic_op_recognition turns patterns of primitives into PyTensor's own Softmax and friends,
    # OpFromGraphs whose inner functions compile with the default (Numba) mode: slower, and native memory
    # per model. mnistgui's head is its own Ops (softmax_ops) and left alone; the rewrite stays out.
    # The CVM linker, building a graph's missing C modules on every core at once (parallel_build). C
    # thunks said outright: left unset, the linker reads config.cxx now, outside the compile lock, where
    # another thread may be folding a shape without a compiler, and would then link all in Python.
    cvm = pytensor.compile.mode.get_mode("CVM")
    if parallel_build is not None:
        cvm = Mode(linker=parallel_build.ParallelBuildVMLinker(use_cloop=True, c_thunks=True),
                   optimizer=cvm.provided_optimizer)
    return c_rewrites.register_c_rewrites(cvm.excluding("BlasOpt", "symbolic_op_recognition"))


def kernel_cores(model):
    """A context for running `model`'s compiled functions: where the convnet's kernels split each batch
    over the cores themselves (the C backend's threads, Numba's under `prange`), BLAS keeps to one thread
    meanwhile, else each part's products would start BLAS threads of their own. JAX's kernels do not split.
    So where the pixel products' threads split theirs (pixel_products; under `c`, the sigmoid MLP): the
    products left to BLAS there are small, and OpenBLAS's threads, spinning after each, took the cores
    from the kernels' (the forward product 0.54 ms with them, 0.41 ms without, measured)."""
    name = getattr(model, "backend", None)
    splits = model.config.model == "convnet" and (name == "c" or (name == "numba" and ops.numba_kernel_threads() > 1))
    splits = splits or getattr(model, "runs_pixel_products", False)
    return ops.single_threaded_blas() if splits else contextlib.nullcontext()


def on_kernel_cores(method):
    """Run a method of an object with a `model` attribute under `kernel_cores(self.model)`."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with kernel_cores(self.model):
            return method(self, *args, **kwargs)

    return wrapper
