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

So "auto" means "c" where a C++ compiler exists, else "numba", which needs none. A frozen app
(PyInstaller) always takes "numba": compiling C there would need Python's headers, which it lacks.
"""

from __future__ import annotations

import os
import sys
import warnings

import pytensor
from pytensor.compile.mode import Mode

from .config import BACKENDS
from .errors import ConfigError

pytensor.config.floatX = "float32"
# With no BLAS to link, PyTensor's probe for one warns on every start, and we never call BLAS from
# C anyway (see above). Setting the flag before its first read skips the probe; a user's own
# PYTENSOR_FLAGS setting wins.
if "blas__ldflags" not in os.environ.get("PYTENSOR_FLAGS", ""):
    pytensor.config.blas__ldflags = ""

# Under Numba, our conv, pooling and dropout-draw Ops run their NumPy kernels through object mode,
# by design; and PyTensor reports, harmlessly, when a fused loop would have too many arguments.
warnings.filterwarnings("ignore", message=r"Numba will use object mode to run (Corr2d|MaxPool2x2|random_float32)")
warnings.filterwarnings("ignore", message=r"Loop fusion failed because the resulting node would exceed")

BACKEND_TITLES = {"c": "C (CVM) + NumPy BLAS", "numba": "Numba (LLVM)"}


def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except Exception:  # a broken numba install raises more than ImportError
        return False
    return True


def compiler_available() -> bool:
    return bool(pytensor.config.cxx) and not getattr(sys, "frozen", False)


def resolve_backend(name: str) -> str:
    """Turn 'auto' into a concrete backend available here."""
    if name not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, not {name!r}")
    if name == "auto":
        return "c" if compiler_available() else "numba"
    if name == "numba" and not numba_available():
        raise ConfigError("the numba backend needs the numba package, which does not import here")
    if name == "c" and not compiler_available():
        raise ConfigError("the c backend needs a C++ compiler (g++ or clang++); none was found: use --backend numba")
    return name


def compile_mode(backend: str) -> Mode:
    if resolve_backend(backend) == "numba":
        return pytensor.compile.mode.get_mode("NUMBA")
    return pytensor.compile.mode.get_mode("CVM").excluding("BlasOpt")
