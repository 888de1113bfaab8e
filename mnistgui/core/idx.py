"""Reader for the IDX files MNIST ships in (LeCun's format), gzip-compressed or raw.

Memory stays bounded whatever the header claims: the size a header implies is checked against a cap
before anything is allocated, and the payload is read in chunks, so a lying header or a gzip bomb
costs at most the cap.
"""

from __future__ import annotations

import gzip
import math
import hashlib
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError

IMAGES_MAGIC = 2051  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # unsigned bytes, 1 dimension
MAX_PAYLOAD_BYTES = 1 << 30  # far above MNIST's 47 MB; a larger claim is a corrupt header
_CHUNK = 1 << 20


@dataclass(frozen=True)
class IdxPayload:
    array: np.ndarray
    sha256: str  # of the decompressed file, header included: the digest MNIST's copies agree on


def _open(path: Path):
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _read_exactly(stream, count: int, path: Path, what: str, digest) -> bytes:
    parts = []
    remaining = count
    while remaining:
        part = stream.read(min(remaining, _CHUNK))
        if not part:
            raise DataError(f"{path}: truncated: {what} ends {remaining} bytes early")
        digest.update(part)
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def read_idx(path: str | Path, expected_magic: int) -> IdxPayload:
    """Read one IDX file whose magic number must be `expected_magic`, validating its structure."""
    path = Path(path)
    kind = "images" if expected_magic == IMAGES_MAGIC else "labels"
    try:
        with _open(path) as stream:
            digest = hashlib.sha256()
            header = _read_exactly(stream, 4, path, "the header", digest)
            magic = struct.unpack(">I", header)[0]
            if magic != expected_magic:
                raise DataError(
                    f"{path}: bad magic number {magic}, expected {expected_magic} for an IDX {kind} file"
                )
            ndim = header[3]
            dims = struct.unpack(f">{ndim}I", _read_exactly(stream, 4 * ndim, path, "the header", digest))
            size = math.prod(dims)  # Python integers: a lying header cannot overflow
            if size > MAX_PAYLOAD_BYTES:
                raise DataError(f"{path}: header claims {dims}, {size} bytes: not a plausible MNIST file")
            payload = _read_exactly(stream, size, path, f"the {kind}", digest)
            if stream.read(1):
                raise DataError(f"{path}: {kind} file has trailing bytes after the {dims} declared in its header")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (gzip.BadGzipFile, zlib.error, EOFError) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip stream ({exc})") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not an IDX file") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None
    array = np.frombuffer(payload, dtype=np.uint8).reshape(dims)
    return IdxPayload(array=array, sha256=digest.hexdigest())


def read_images(path: str | Path) -> IdxPayload:
    payload = read_idx(path, IMAGES_MAGIC)
    shape = payload.array.shape
    if len(shape) != 3 or shape[1:] != (28, 28):
        raise DataError(f"{path}: images must be N x 28 x 28, the header says {' x '.join(map(str, shape))}")
    if shape[0] == 0:
        raise DataError(f"{path}: holds no images")
    return payload


def read_labels(path: str | Path) -> IdxPayload:
    payload = read_idx(path, LABELS_MAGIC)
    labels = payload.array
    if labels.ndim != 1:
        raise DataError(f"{path}: labels must be one-dimensional, the header says {labels.shape}")
    if labels.size and labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise DataError(f"{path}: label {labels[bad]} at index {bad} is outside 0..9")
    return payload


def check_pair(images: IdxPayload, labels: IdxPayload, images_path, labels_path) -> None:
    if images.array.shape[0] != labels.array.shape[0]:
        raise DataError(
            f"{images_path} has {images.array.shape[0]} images but {labels_path} "
            f"has {labels.array.shape[0]} labels"
        )
