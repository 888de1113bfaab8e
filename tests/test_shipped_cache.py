"""The packaged app's shipped graphs (mnistgui/shipped_cache.py): the CPU level Numba compiles for, the
copy into PyTensor's cache, and the Numba Ops' parts read when they run, so that one cached graph
serves every core count. The packaged app itself, built with its graphs and run from an empty cache,
is tested in test_frozen.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnistgui import shipped_cache

ROOT = Path(__file__).resolve().parent.parent

AVX512_MACHINE = dict.fromkeys(shipped_cache.LEVELS["x86-64-v4"] + ("sse2", "avx512vnni"), True)


def test_cpu_levels_from_the_features_each_level_needs():
    assert shipped_cache.cpu_levels(AVX512_MACHINE) == ["x86-64-v4", "x86-64-v3"]
    avx2_machine = {**AVX512_MACHINE, "avx512f": False, "avx512vl": False}
    assert shipped_cache.cpu_levels(avx2_machine) == ["x86-64-v3"]
    assert shipped_cache.cpu_levels({**avx2_machine, "fma": False}) == []  # below v3: no shipped graphs fit
    assert shipped_cache.cpu_levels({}) == []


def test_cpu_level_is_the_highest_shipped_one_and_the_users_choice_wins(caplog, monkeypatch):
    shipped = ["x86-64-v4", "x86-64-v3"]
    environ = {"NUMBA_CPU_NAME": "skylake"}
    assert shipped_cache.choose_cpu_level(environ, AVX512_MACHINE, shipped) == "skylake"
    assert environ == {"NUMBA_CPU_NAME": "skylake"}
    environ = {"NUMBA_CPU_FEATURES": "+avx2"}  # features alone: the user's too
    assert shipped_cache.choose_cpu_level(environ, AVX512_MACHINE, shipped) == ""
    assert environ == {"NUMBA_CPU_FEATURES": "+avx2"}
    environ = {}  # nothing shipped (not the packaged app): the host CPU
    assert shipped_cache.choose_cpu_level(environ, AVX512_MACHINE, []) == "" and environ == {}
    avx2_machine = {**AVX512_MACHINE, "avx512bw": False}
    assert shipped_cache.choose_cpu_level(environ, avx2_machine, ["x86-64-v4"]) == "" and environ == {}
    # Once Numba is imported it is too late to change what it compiles for, and it says so.
    monkeypatch.setitem(sys.modules, "numba", sys.modules.get("numba") or object())
    assert shipped_cache.choose_cpu_level(environ, AVX512_MACHINE, shipped) == "" and environ == {}
    assert "Numba was imported before" in caplog.text


def test_the_shipped_levels_are_read_from_the_cache_folder(tmp_path):
    assert shipped_cache.shipped_levels(tmp_path) == []
    (tmp_path / shipped_cache.LEVELS_FILE).write_text("x86-64-v4\nx86-64-v3\n")
    assert shipped_cache.shipped_levels(tmp_path) == ["x86-64-v4", "x86-64-v3"]


def test_numba_compiles_for_the_chosen_level_in_a_fresh_process():
    """As the packaged app's entry point does it: the level first, then Numba, whose code generator
    (the key of every cached function) then names the level and no host features. An AVX-512 CPU
    with only v3 shipped takes v3."""
    script = (
        "import os, sys, json\n"
        "from mnistgui import shipped_cache\n"
        f"level = shipped_cache.choose_cpu_level(os.environ, {AVX512_MACHINE!r}, ['x86-64-v3'])\n"
        "from numba.core.registry import cpu_target\n"
        "print(json.dumps([level, *cpu_target.target_context.codegen().magic_tuple()[1:]]))\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("NUMBA_CPU")}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1]) == ["x86-64-v3", "x86-64-v3", ""]


def _write(folder: Path, name: str, content: bytes) -> None:
    (folder / name).write_bytes(content)


def test_seed_copies_each_missing_function_whole_and_keeps_what_the_cache_has(tmp_path):
    shipped, cache = tmp_path / "shipped", tmp_path / "cache"
    shipped.mkdir()
    cache.mkdir()
    for name, content in {
        "ops.conv-ab12.py311.nbi": b"conv index", "ops.conv-ab12.py311.1.nbc": b"conv v4",
        "ops.conv-ab12.py311.2.nbc": b"conv v3", "ops.pool-cd34.py311.nbi": b"pool index",
        "ops.pool-cd34.py311.1.nbc": b"pool v4", "ops.pool-cd34.py311.10.nbc": b"pool 10",
    }.items():
        _write(shipped, name, content)
    _write(cache, "ops.pool-cd34.py311.nbi", b"the user's own index")
    _write(cache, "ops.pool-cd34.py311.1.nbc", b"the user's own code")

    assert shipped_cache.seed(shipped, cache) == 1
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == {
        "ops.conv-ab12.py311.nbi": b"conv index", "ops.conv-ab12.py311.1.nbc": b"conv v4",
        "ops.conv-ab12.py311.2.nbc": b"conv v3",
        "ops.pool-cd34.py311.nbi": b"the user's own index", "ops.pool-cd34.py311.1.nbc": b"the user's own code",
    }  # no temporary files left behind either
    assert shipped_cache.seed(shipped, cache) == 0
    assert shipped_cache.seed(shipped, tmp_path / "new" / "cache") == 2  # a cache folder not made yet


def test_a_cache_that_cannot_be_written_costs_only_the_compile(tmp_path, monkeypatch, caplog):
    from pytensor.link.numba import cache as pytensor_numba_cache

    shipped = tmp_path / "shipped"
    shipped.mkdir()
    _write(shipped, "f-1.py311.nbi", b"index")
    not_a_folder = tmp_path / "numba"
    not_a_folder.write_text("a file where the cache folder should be")
    monkeypatch.setattr(shipped_cache, "shipped_folder", lambda: shipped)
    monkeypatch.setattr(pytensor_numba_cache, "NUMBA_CACHE_PATH", not_a_folder)
    assert shipped_cache.seed_pytensor_cache() == 0
    assert "could not copy the app's compiled graphs" in caplog.text


def test_not_frozen_there_is_nothing_shipped():
    assert shipped_cache.shipped_folder() is None
    assert shipped_cache.seed_pytensor_cache() == 0


_GRAPH = """
import json, sys
import numpy as np
import pytensor, pytensor.tensor as pt
from pytensor.link.numba.cache import NUMBA_CACHE_PATH
from mnistgui.core import backend, ops

x, g = pt.tensor4(dtype="float32"), pt.tensor4(dtype="float32")
fn = pytensor.function([x, g], ops.corr2d_weights(x, g), mode=backend.compile_mode("numba"))
rng = np.random.default_rng(5)
images = rng.standard_normal((96, 10, 10, 1)).astype(np.float32)  # a first layer: direct loops, no BLAS
grads = rng.standard_normal((96, 8, 8, 4)).astype(np.float32)
parts = ops._numba_kernel_parts.value  # what the function reads when it runs, set as it was compiled
result = fn(images, grads)
files = sorted(p.name for p in NUMBA_CACHE_PATH.iterdir())
same_as_the_kernel = bool(np.array_equal(result, ops.corr2d_weights_nb(images, grads, parts)))
print(json.dumps({"parts": parts, "files": files, "same_as_the_kernel": same_as_the_kernel,
                  "result": result.ravel().tolist()}))
"""


def test_a_cached_numba_graph_cuts_its_batch_for_the_cores_of_the_process_that_runs_it(tmp_path):
    """One cached graph for every core count: compiled on 2 threads, then loaded (nothing compiled
    anew) on 3 threads, where its filter gradient sums 3 parts (other bits than 2 parts' sums), and on
    2 threads again, where it gives the first process's bits."""
    def run(threads):
        env = {**os.environ, "MNISTGUI_THREADS": str(threads), "PYTENSOR_FLAGS": f"base_compiledir={tmp_path}",
               "NUMBA_CACHE_DIR": str(tmp_path / "kernels")}
        result = subprocess.run([sys.executable, "-c", _GRAPH], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.splitlines()[-1])

    first = run(2)
    if first["parts"] != 2:
        pytest.skip(f"Numba's kernels run in {first['parts']} part(s) here (a threading layer without OpenMP or TBB)")
    on_three, again = run(3), run(2)
    assert on_three["parts"] == 3
    assert on_three["files"] == first["files"] == again["files"]  # loaded from the cache, nothing compiled
    # each the kernel's own sum over that many parts, bit for bit; and 3 parts' sums are other bits than 2's
    assert first["same_as_the_kernel"] and on_three["same_as_the_kernel"] and again["same_as_the_kernel"]
    assert again["result"] == first["result"]
    assert on_three["result"] != first["result"]
    np.testing.assert_allclose(on_three["result"], first["result"], rtol=1e-4, atol=1e-4)


def test_precompile_covers_a_run_of_the_default_configuration(tmp_path):
    """`mnistgui precompile` (what the app build ships) compiles every graph a default run then uses,
    shuffled epochs and the test set's evaluation included: the run adds nothing to Numba's cache."""
    env = {**os.environ, "PYTENSOR_FLAGS": f"base_compiledir={tmp_path}", "NUMBA_CACHE_DIR": str(tmp_path / "kernels")}

    def mnistgui(*args):
        result = subprocess.run([sys.executable, "-m", "mnistgui", *args], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        return result.stdout

    assert "logreg: compiled in" in mnistgui("precompile", "--models", "logreg", "--backend", "numba")
    compiled = sorted(p.name for p in (tmp_path / "numba").iterdir())
    assert any(name.endswith(".nbi") for name in compiled)
    out = mnistgui("train", "--model", "logreg", "--backend", "numba", "--train-size", "1000", "--test-size", "300",
                   "--epochs", "2", "--shuffle")
    assert "epoch   2" in out
    assert sorted(p.name for p in (tmp_path / "numba").iterdir()) == compiled
