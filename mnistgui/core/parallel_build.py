"""The C backend's cold compile on every core: a graph's C modules built side by side, and fewer of them.

PyTensor links a function node by node: each node whose C code is not yet in the compile cache waits
for its own `g++` run (0.3-1.4 s each here), one after the other, under the cache's lock. A cold
convnet built 44 of them, 30 of its 35 seconds, on one core of two.

`ParallelBuildVMLinker` is PyTensor's CVM linker with two changes:

- Nodes that only make views or move shapes (transposes, reshapes, slices, shape lookups) run their
  Python implementation: microseconds a call, and no module to compile. A test trains bit for bit as
  under PyTensor's own linker. The convnet's modules: 44 to 32.
- Before linking, it generates each missing module's source (cheap, on the calling thread) and starts
  `g++` for all of them in a pool of threads, one a core (`g++` is a child process, so they overlap),
  each into a folder of its own outside the cache and without the cache's lock. PyTensor then links as
  always, and where it would run `g++` for a module under its lock, `compile_str` takes the module
  already built instead (same name, same source, same arguments; else it compiles as before), copies
  it into the folder PyTensor chose and imports it from there. The cache ends as after a serial
  compile, module for module. A failure in the head start (an Op whose code cannot be generated, a
  `g++` error, a folder that cannot be made or copied) only means PyTensor compiles that module itself,
  and reports any error its own way. At exit, Python waits for the builds a compile left queued.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import pytensor
from pytensor.graph.fg import FunctionGraph
from pytensor.link.c.basic import CLinker, get_module_cache
from pytensor.link.c.cmodule import GCC_compiler, dlimport, get_lib_extension, get_module_hash
from pytensor.link.c.op import COp
from pytensor.link.vm import VMLinker
from pytensor.tensor.basic import ARange, MakeVector, ScalarFromTensor, TensorFromScalar
from pytensor.tensor.elemwise import DimShuffle
from pytensor.tensor.shape import Reshape, Shape, Shape_i, SpecifyShape
from pytensor.tensor.subtensor import Subtensor

from .ops import kernel_threads

_original_compile_str = GCC_compiler.compile_str
_built: dict[tuple, Future] = {}  # build key -> future of the folder holding the built module
_built_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def build_workers() -> int:
    """g++ runs at once: the kernels' thread count (MNISTGUI_THREADS, else OMP_NUM_THREADS, else the
    usable cores, at most 8: a container's CPU quota is not in its affinity mask)."""
    return kernel_threads()


def _build_key(module_name, src_code, include_dirs, lib_dirs, libs, preargs) -> tuple:
    digest = hashlib.sha256(src_code.encode()).hexdigest()
    return (module_name, digest, *(tuple(x or ()) for x in (include_dirs, lib_dirs, libs, preargs)))


def _compile_str(module_name, src_code, location=None, include_dirs=None, lib_dirs=None, libs=None,
                 preargs=None, py_module=True, hide_symbols=True):
    """GCC_compiler.compile_str, taking a module built ahead where there is one."""
    future = None
    if location is not None and py_module and hide_symbols:
        with _built_lock:
            future = _built.pop(_build_key(module_name, src_code, include_dirs, lib_dirs, libs, preargs), None)
    if future is not None:
        try:
            folder = future.result()
        except Exception:  # compile it again below, so that PyTensor reports the error its own way
            folder = None
        if folder is not None:
            filename = f"{module_name}.{get_lib_extension()}"
            try:
                shutil.copyfile(os.path.join(folder, filename), os.path.join(location, filename))
                shutil.copyfile(os.path.join(folder, "mod.cpp"), os.path.join(location, "mod.cpp"))
                with open(os.path.join(location, "__init__.py"), "w"):
                    pass
                return dlimport(os.path.join(location, filename))
            except (OSError, ImportError):  # a full disk, a folder gone: compile it where PyTensor asked
                pass
    return _original_compile_str(module_name, src_code, location=location, include_dirs=include_dirs,
                                 lib_dirs=lib_dirs, libs=libs, preargs=preargs, py_module=py_module,
                                 hide_symbols=hide_symbols)


GCC_compiler.compile_str = staticmethod(_compile_str)


# The builds take every core; at a lower priority (a thread's niceness passes to the g++ it starts) they
# leave the window's thread the core it needs: the worst event-loop gap of a cold compile under the
# window was 93 ms at equal priority, against a bound of 100.
BUILD_NICENESS = 10


def _lower_priority() -> None:
    try:
        thread = threading.get_native_id()  # Linux: PRIO_PROCESS with a thread's id sets that thread's
        os.setpriority(os.PRIO_PROCESS, thread, max(os.getpriority(os.PRIO_PROCESS, thread), BUILD_NICENESS))
    except (AttributeError, OSError):  # no per-thread priority here: the builds compete evenly
        pass


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _built_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=build_workers(), thread_name_prefix="mnistgui-g++",
                                       initializer=_lower_priority)
        return _pool


def _build(folder, module_name, src_code, include_dirs, lib_dirs, libs, preargs) -> str:
    _original_compile_str(module_name, src_code, location=folder, include_dirs=include_dirs, lib_dirs=lib_dirs,
                          libs=libs, preargs=preargs, py_module=False)
    return folder


def _missing_module(node):
    """The build arguments of a node's C module when the cache lacks it: name, source, folders, libraries and
    compiler flags, as `CLinker.compile_cmodule` passes them to `compile_str`; else None."""
    if not isinstance(node.op, COp):
        return None
    try:
        node.op.prepare_node(node, storage_map=None, compute_map=None, impl="c")
        linker = CLinker().accept(FunctionGraph(node.inputs, node.outputs), no_recycling=[])
        key = linker.cmodule_key()
        cache = get_module_cache()
        if cache._get_from_key(key) is not None:
            return None
        module = linker.get_dynamic_module()
        src_code = module.code()
        if cache._get_from_hash(get_module_hash(src_code, key), key) is not None:
            return None
        return (module.code_hash, src_code, linker.header_dirs(), linker.lib_dirs(), linker.libraries(),
                linker.compile_args())
    except Exception:  # no C code for this node (or not for these types): PyTensor decides, as before
        return None


def start_builds(nodes) -> list[tuple]:
    """Start g++ for every node's missing module; what it started, for `finish_builds`."""
    started = []
    seen = set()
    if not pytensor.config.cxx:
        return started
    for node in nodes:
        found = _missing_module(node)
        if found is None:
            continue
        key = _build_key(*found)
        with _built_lock:
            building = key in _built  # by another link (one not holding mnistgui's compile lock)
        if key in seen or building:
            continue
        seen.add(key)
        try:
            folder = tempfile.mkdtemp(prefix="mnistgui-build-")
        except OSError:  # no temporary folder: PyTensor compiles the rest itself
            break
        try:
            future = _executor().submit(_build, folder, *found)
        except RuntimeError:  # the interpreter is shutting down
            shutil.rmtree(folder, ignore_errors=True)
            break
        with _built_lock:
            _built[key] = future
        started.append((key, folder, future))
    return started


def finish_builds(started) -> None:
    """Drop what was built ahead and not taken, once every build has ended (none outlives its link)."""
    for key, folder, future in started:
        with _built_lock:
            if _built.get(key) is future:
                del _built[key]
        future.cancel()
        try:
            future.result()
        except Exception:
            pass
        shutil.rmtree(folder, ignore_errors=True)


# Ops that only make a view or move a few numbers (shapes, slices, transposes): in Python they cost
# microseconds a call, and their C modules were a quarter of a cold convnet's g++ runs.
PYTHON_OPS = (DimShuffle, Shape, Shape_i, SpecifyShape, Reshape, Subtensor, MakeVector, ScalarFromTensor,
              TensorFromScalar, ARange)
# Not elementwise arithmetic, even on a few numbers: PyTensor's Python loops follow NumPy's rules
# where its C follows C's (seen: a shape computation that C widens overflowed an int8 in Python).
_linking = threading.local()  # the nodes the linker on this thread runs in Python
_original_make_thunk = COp.make_thunk


def _make_thunk(self, node, storage_map, compute_map, no_recycling, impl=None):
    if impl is None and node in getattr(_linking, "python_nodes", ()):
        impl = "py"
    return _original_make_thunk(self, node, storage_map, compute_map, no_recycling, impl=impl)


COp.make_thunk = _make_thunk


def _after_fork_in_child() -> None:
    """A forked child has none of the pool's threads: start afresh (the fork may come mid-build)."""
    global _pool, _built_lock
    _pool, _built_lock = None, threading.Lock()
    _built.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class ParallelBuildVMLinker(VMLinker):
    """PyTensor's CVM linker: the graph's missing C modules built on every core at once, and the Ops
    that only shuffle shapes and views run in Python, where they need no module at all."""

    def make_all(self, *args, **kwargs):
        order = self.schedule(self.fgraph)
        python_nodes = {node for node in order if isinstance(node.op, PYTHON_OPS)}
        started = []
        outer, _linking.python_nodes = getattr(_linking, "python_nodes", ()), python_nodes
        try:
            if self.c_thunks:
                started = start_builds(node for node in order if node not in python_nodes)
            return super().make_all(*args, **kwargs)
        finally:
            _linking.python_nodes = outer
            finish_builds(started)
