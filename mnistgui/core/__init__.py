"""The Qt-free core: data, models as PyTensor graphs, training, model files.

Importing any part of it configures PyTensor first (float32, no BLAS probe): see backend.py.
"""

from . import backend as _backend  # noqa: F401
