"""The packaged app's compiled graphs: compiled when the app is built, shipped inside it, and copied
into PyTensor's Numba cache the first time the app compiles a graph.

The packaged app runs the numba backend (a user's machine need not have a C compiler), and Numba
compiles the convnet's training and prediction functions cold in 45-50 s on the reference machine,
once per machine and cached after. So `scripts/build-app.sh` runs the built app's `precompile` command
into an empty cache and ships that cache inside the app (`mnistgui/numba-cache`); the app copies each
function PyTensor's cache lacks into it before it compiles (`seed`), and every model's default
configuration then starts from PyTensor's cache: about a second.

Numba keys a compiled function on the CPU it was compiled for: the CPU's name and its features, which
differ from one machine to the next. The app therefore compiles for a named x86-64 level instead of
the exact host CPU (`choose_cpu_level`, before Numba is imported): the highest of the levels the
build shipped that the CPU runs. A build on an AVX-512 machine ships x86-64-v4 (AVX-512) and x86-64-v3
(AVX2, FMA); a build machine can only compile for levels it runs, and the app lists them in
`levels.txt`. Measured on the reference machine,
Numba convnet epochs of 6,400 images: 2.09-2.26 s for v4 and 2.16-2.19 s for the host CPU in
interleaved runs, 2.15-2.36 s for v3. A CPU below v3 compiles for itself, from scratch, as before.
A graph's cached code does not depend on the core count: the kernels read their parts when they run
(`core/ops.py`). Nothing here imports Numba or PyTensor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

# The features each level adds to the one below, by LLVM's names (llvmlite's host feature map).
_V2 = ("cx16", "popcnt", "sahf", "sse3", "sse4.1", "sse4.2", "ssse3")
_V3 = ("avx", "avx2", "bmi", "bmi2", "f16c", "fma", "lzcnt", "movbe", "xsave")
_V4 = ("avx512bw", "avx512cd", "avx512dq", "avx512f", "avx512vl")
LEVELS = {"x86-64-v4": _V2 + _V3 + _V4, "x86-64-v3": _V2 + _V3}  # highest first
SHIPPED_FOLDER = ("mnistgui", "numba-cache")  # inside the app's bundle (sys._MEIPASS)
LEVELS_FILE = "levels.txt"  # in that folder: the levels the build compiled for, one a line


def cpu_levels(host_features: dict[str, bool] | None = None) -> list[str]:
    """The x86-64 levels this CPU runs, highest first ([] off x86-64, or below v3)."""
    if host_features is None:
        import platform

        if platform.machine().lower() not in ("x86_64", "amd64"):
            return []
        from llvmlite import binding as llvm

        host_features = dict(llvm.get_host_cpu_features())
    return [level for level, needs in LEVELS.items() if all(host_features.get(name) for name in needs)]


def choose_cpu_level(environ: os._Environ | dict = os.environ, host_features: dict[str, bool] | None = None,
                     shipped: list[str] | None = None) -> str:
    """Have Numba compile for the highest x86-64 level this CPU runs among those the app ships
    (`shipped`; by default the app's own list), by NUMBA_CPU_NAME with no extra features; call it
    before Numba is imported. The CPU name Numba will compile for ("" for the host CPU: nothing shipped
    fits, or not the packaged app). A NUMBA_CPU_NAME or NUMBA_CPU_FEATURES the user set wins."""
    if environ.get("NUMBA_CPU_NAME") or "NUMBA_CPU_FEATURES" in environ:
        return environ.get("NUMBA_CPU_NAME", "")
    if shipped is None:
        folder = shipped_folder()
        shipped = shipped_levels(folder) if folder is not None else []
    if not shipped:
        return ""
    if "numba" in sys.modules:
        log.warning("Numba was imported before the CPU level was chosen; it compiles for this CPU alone")
        return ""
    try:
        levels = [level for level in cpu_levels(host_features) if level in shipped]
    except Exception as exc:  # llvmlite missing or broken: the backend reports that itself
        log.warning("could not read this CPU's features (%s); Numba compiles for this CPU alone", exc)
        return ""
    if not levels:
        return ""
    environ["NUMBA_CPU_NAME"] = levels[0]
    environ["NUMBA_CPU_FEATURES"] = ""
    return levels[0]


def shipped_levels(folder: Path) -> list[str]:
    """The CPU levels a shipped cache was compiled for ([] when it does not say)."""
    try:
        return (folder / LEVELS_FILE).read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        return []


def shipped_folder() -> Path | None:
    """The cache inside the packaged app, or None (not frozen, or built without one)."""
    bundle = getattr(sys, "_MEIPASS", None)
    if not getattr(sys, "frozen", False) or bundle is None:
        return None
    folder = Path(bundle).joinpath(*SHIPPED_FOLDER)
    return folder if folder.is_dir() else None


def seed(shipped: Path, cache: Path) -> int:
    """Copy into `cache` each function of `shipped` whose index `cache` lacks: its data files, then its
    index (Numba reads the index first, so a half-done copy is a miss, not an error). An index already
    in `cache` is kept (the user's own compile, or an earlier copy). The number of functions copied."""
    names = sorted(entry.name for entry in os.scandir(shipped) if entry.is_file())
    data = {}
    for name in names:
        if name.endswith(".nbc"):  # "<function>.py311.<n>.nbc" beside its index "<function>.py311.nbi"
            data.setdefault(name.rsplit(".", 2)[0], []).append(name)
    cache.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_copies(cache)
    copied = 0
    for name in names:
        if not name.endswith(".nbi") or (cache / name).exists():
            continue
        for part in [*data.get(name[: -len(".nbi")], []), name]:
            _copy_into(shipped / part, cache)
        copied += 1
    return copied


_TEMPORARY_PREFIX = ".seeding-"


def _remove_abandoned_copies(folder: Path, older_than_s: float = 3600.0) -> None:
    """Temporary files a copy killed midway left behind (an hour old: no copy takes that long)."""
    now = time.time()
    for entry in os.scandir(folder):
        if entry.name.startswith(_TEMPORARY_PREFIX):
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime > older_than_s:
                    os.unlink(entry.path)


def _copy_into(source: Path, folder: Path) -> None:
    """Copy under a temporary name, then rename: another process never reads a partial file."""
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=_TEMPORARY_PREFIX)
    try:
        with os.fdopen(handle, "wb") as out, open(source, "rb") as data:
            shutil.copyfileobj(data, out)
        os.chmod(temporary, 0o644)  # as Numba's own cache files, not mkstemp's 0600
        os.replace(temporary, folder / source.name)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def seed_pytensor_cache() -> int:
    """In the packaged app, copy its shipped graphs into PyTensor's Numba cache (once per process is
    enough; later calls find the indexes there and copy nothing). A failure to copy is logged and
    costs only the compile it would have saved."""
    shipped = shipped_folder()
    if shipped is None:
        return 0
    try:
        from pytensor.link.numba.cache import NUMBA_CACHE_PATH as cache
    except ImportError:  # where PyTensor 3.0-3.3 keep it, should it move
        from pytensor import config

        cache = Path(config.base_compiledir) / "numba"
    try:
        copied = seed(shipped, Path(cache))
    except OSError as exc:
        log.warning("could not copy the app's compiled graphs into %s (%s): they compile anew", cache, exc)
        return 0
    if copied:
        log.info("copied %d compiled functions from the app into %s", copied, cache)
    return copied
