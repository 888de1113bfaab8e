"""The C backend's cold compile: every missing module built ahead on a pool of g++ runs, and taken."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from concurrent.futures import Future

import numpy as np
import pytest

from mnistgui.core import backend, parallel_build

pytestmark = pytest.mark.skipif(not backend.compiler_available(), reason="the C backend needs a C++ compiler")

# A graph with several distinct elementwise Ops (each its own C module), a reduction, a transpose and
# a reshape; run from an empty compile cache in a child process, which reports every g++ run.
COLD_CHILD = textwrap.dedent("""
    import json, os, sys, threading, time
    import numpy as np
    import pytensor, pytensor.tensor as pt
    from mnistgui.core import backend, parallel_build

    runs = []
    original = parallel_build._original_compile_str
    def recording(module_name, src_code, location=None, **kwargs):
        start = time.perf_counter()
        try:
            return original(module_name, src_code, location=location, **kwargs)
        finally:
            runs.append({"thread": threading.current_thread().name, "start": start, "end": time.perf_counter(),
                         "module": module_name,
                         "niceness": os.getpriority(os.PRIO_PROCESS, threading.get_native_id())})
    parallel_build._original_compile_str = recording

    x, y = pt.matrix("x"), pt.matrix("y")
    outputs = [pt.exp(x) * y + pt.log1p(x), pt.tanh(x.T).reshape((-1,)), (x / (1 + y)).sum(axis=0),
               pt.maximum(x, y) - pt.sqrt(y)]
    start = time.perf_counter()
    if sys.argv[1] == "serial":  # PyTensor's own linker, one g++ run after another
        mode = pytensor.compile.mode.get_mode("CVM").excluding("BlasOpt", "symbolic_op_recognition")
    else:
        mode = backend.compile_mode("c")
    fn = backend.function([x, y], outputs, mode=mode)
    seconds = time.perf_counter() - start
    rng = np.random.default_rng(0)
    a, b = (rng.uniform(0.1, 1.0, (5, 7)).astype(np.float32) for _ in range(2))
    values = [v.tolist() for v in fn(a, b)]
    kinds = sorted({type(t).__name__ for t in fn.vm.thunks})
    python_ops = sorted({type(n.op).__name__ for n, t in zip(fn.maker.fgraph.toposort(), fn.vm.thunks)
                         if not hasattr(t, "cthunk")})
    print("RESULT " + json.dumps({"runs": runs, "values": values, "seconds": seconds, "python_ops": python_ops,
                                  "workers": parallel_build.build_workers()}))
""")


def _cold_child(compiledir, linker="ours") -> dict:
    """The child's report, compiling in `compiledir`; its temporary files go to compiledir/tmp."""
    (compiledir / "tmp").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTENSOR_FLAGS=f"base_compiledir={compiledir}",
               NUMBA_CACHE_DIR=str(compiledir / "numba"), TMPDIR=str(compiledir / "tmp"))
    result = subprocess.run([sys.executable, "-c", COLD_CHILD, linker], capture_output=True, text=True, env=env,
                            timeout=600)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, result.stderr[-3000:]
    return json.loads(lines[0][7:])


def _reference(a, b):
    return [np.exp(a) * b + np.log1p(a), np.tanh(a.T).reshape(-1), (a / (1 + b)).sum(axis=0),
            np.maximum(a, b) - np.sqrt(b)]


def test_a_cold_compile_builds_every_module_ahead_on_the_pool_and_leaves_a_warm_cache(tmp_path):
    cold = _cold_child(tmp_path)
    graph_modules = [run for run in cold["runs"] if run["thread"].startswith("mnistgui-g++")]
    # Every module of the graph was built on the pool; PyTensor's own serial g++ ran only for its
    # runtime (lazylinker, cutils: compiled by PyTensor outside any graph).
    assert len(graph_modules) >= 3  # fusion leaves three elementwise loops and a sum
    main_thread_modules = {run["module"] for run in cold["runs"] if not run["thread"].startswith("mnistgui-g++")}
    assert main_thread_modules <= {"lazylinker_ext", "cutils_ext"}
    # At a lower priority than the window's thread (g++ inherits it from the thread that starts it).
    assert all(run["niceness"] >= parallel_build.BUILD_NICENESS for run in graph_modules)
    if cold["workers"] >= 2:  # two g++ runs at the same time, at least once
        spans = sorted((run["start"], run["end"]) for run in graph_modules)
        assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))
    rng = np.random.default_rng(0)
    a, b = (rng.uniform(0.1, 1.0, (5, 7)).astype(np.float32) for _ in range(2))
    for got, want in zip(cold["values"], _reference(a, b)):
        np.testing.assert_allclose(np.asarray(got, dtype=np.float32), want, rtol=2e-6, atol=1e-6)
    # Shapes and views run in Python (no module); the arithmetic stays compiled C.
    assert {"DimShuffle", "Reshape"} <= set(cold["python_ops"])
    assert "Elemwise" not in cold["python_ops"]
    # The modules built ahead went into PyTensor's cache as its own would: a second process compiles none.
    warm = _cold_child(tmp_path)
    assert warm["runs"] == []
    assert warm["values"] == cold["values"]
    assert not [p for p in os.listdir(tmp_path / "tmp") if p.startswith("mnistgui-build-")]
    # PyTensor's own serial linker, from its own empty cache: the same numbers, bit for bit.
    serial = _cold_child(tmp_path / "serial", linker="serial")
    assert not [run for run in serial["runs"] if run["thread"].startswith("mnistgui-g++")]
    assert serial["values"] == cold["values"]


def test_a_module_whose_build_failed_is_compiled_again_by_pytensor(tmp_path):
    """A build ahead that failed leaves the module to PyTensor's own g++ run, which then succeeds."""
    name = "m_mnistgui_fallback_probe"
    source = textwrap.dedent(f"""
        #include <Python.h>
        static struct PyModuleDef moduledef = {{PyModuleDef_HEAD_INIT, "{name}", NULL, -1, NULL}};
        PyMODINIT_FUNC PyInit_{name}(void) {{ return PyModule_Create(&moduledef); }}
    """)
    from pytensor.link.c.cmodule import GCC_compiler

    failed: Future = Future()
    failed.set_exception(RuntimeError("g++ was killed"))
    arguments = dict(include_dirs=[], lib_dirs=[], libs=[], preargs=["-fPIC"])
    key = parallel_build._build_key(name, source, *arguments.values())
    with parallel_build._built_lock:
        parallel_build._built[key] = failed
    location = tmp_path / f"probe_{uuid.uuid4().hex}"  # the package name it is imported under, once a process
    location.mkdir()
    module = GCC_compiler.compile_str(name, source, location=str(location), **arguments)
    assert module.__name__.endswith(name)
    assert key not in parallel_build._built
    assert (location / f"{name}.so").is_file()


@pytest.mark.parametrize("name", ["convnet", "dropout_mlp"])
def test_the_c_backend_trains_the_same_as_pytensors_serial_linker(mnist, name):
    """Shapes and views in Python change no number: the same run, bit for bit (weights, RMSprop state,
    cost, errors), as under PyTensor's own CVM linker. (Modules built ahead: the cold-cache test.)"""
    import pytensor

    from mnistgui.core.config import Config
    from mnistgui.core.training import EpochResult, Trainer, create_model

    data = mnist.subset(512, 200)
    runs = []
    for linker in ("ours", "pytensor"):
        model = create_model(Config.for_model(name, backend="c", seed=5))
        if linker == "pytensor":
            serial = pytensor.compile.mode.get_mode("CVM").excluding("BlasOpt", "symbolic_op_recognition")
            model._mode = lambda serial=serial: serial
        trainer = Trainer(model, data)
        trainer.compile()
        assert isinstance(trainer._train_fn.maker.linker, parallel_build.ParallelBuildVMLinker) == (linker == "ours")
        epoch = [item for item in trainer.train(1) if isinstance(item, EpochResult)][0]
        runs.append((model.get_state(), (epoch.cost, epoch.train_error, epoch.test_error)))
    (ours, our_figures), (theirs, their_figures) = runs
    assert our_figures == their_figures
    for group in ("params", "optimizer"):
        for key in ours[group]:
            np.testing.assert_array_equal(ours[group][key], theirs[group][key])
