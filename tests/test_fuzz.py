"""Hostile files: mutated and truncated IDX files and model files may only raise the documented errors.

Every example is a real file on disk, read by the same functions the app uses. A crash, a hang (each
read is bounded by pytest-timeout), an undocumented exception or a huge allocation fails the test.
"""

from __future__ import annotations

import gzip
import struct
import tracemalloc

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnistgui.core.config import Config
from mnistgui.core.errors import DataError, ModelFileError
from mnistgui.core.idx import read_images, read_labels
from mnistgui.core.modelfile import load_model, read_header, save_model
from mnistgui.core.training import create_model

from .conftest import MNIST_DIR

FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
MEMORY_LIMIT = 64 << 20  # no single read may allocate more than this, whatever its header claims


def _small_idx(kind: str) -> bytes:
    if kind == "images":
        return struct.pack(">IIII", 2051, 3, 28, 28) + bytes(range(256)) * 9 + bytes(3 * 784 - 256 * 9)
    return struct.pack(">II", 2049, 5) + bytes([1, 2, 3, 4, 5])


def _mutate(data: bytes, edits, cut: int | None, compress: bool) -> bytes:
    buffer = bytearray(data)
    for position, value in edits:
        if buffer:
            buffer[position % len(buffer)] = value
    if cut is not None:
        buffer = buffer[: cut % (len(buffer) + 1)]
    return gzip.compress(bytes(buffer)) if compress else bytes(buffer)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(kind=st.sampled_from(["images", "labels"]),
       edits=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=6),
       cut=st.none() | st.integers(0, 5000), compress=st.booleans())
def test_mutated_idx_files_raise_only_data_errors(fuzz_dir, kind, edits, cut, compress):
    path = fuzz_dir / "file"
    path.write_bytes(_mutate(_small_idx(kind), edits, cut, compress))
    reader = read_images if kind == "images" else read_labels
    tracemalloc.start()
    try:
        payload = reader(path)
    except DataError:
        payload = None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < MEMORY_LIMIT
    if payload is not None:
        assert payload.array.dtype == np.uint8 and payload.array.shape[0] >= 0


@FUZZ
@given(count=st.integers(0, 2**32 - 1), rows=st.integers(0, 2**32 - 1), cols=st.integers(0, 2**32 - 1),
       compress=st.booleans())
def test_idx_headers_claiming_anything_allocate_nothing_big(fuzz_dir, count, rows, cols, compress):
    data = struct.pack(">IIII", 2051, count, rows, cols) + bytes(1000)
    path = fuzz_dir / "header"
    path.write_bytes(gzip.compress(data) if compress else data)
    tracemalloc.start()
    try:
        read_images(path)
    except DataError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < MEMORY_LIMIT


def test_real_file_truncated_everywhere(tmp_path):
    data = gzip.decompress((MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes())
    path = tmp_path / "cut"
    for cut in range(0, len(data), 97):
        path.write_bytes(data[:cut])
        with pytest.raises(DataError):
            read_labels(path)


# --- model files ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory):
    model = create_model(Config.for_model("dropout_mlp", hidden_sizes=(8, 4)))
    path = tmp_path_factory.mktemp("model") / "m.h5"
    save_model(model, path)
    return path.read_bytes()


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.none() | st.integers(0, 10**6))
def test_mutated_model_files_raise_only_model_file_errors(fuzz_dir, model_bytes, edits, cut):
    path = fuzz_dir / "model.h5"
    path.write_bytes(_mutate(model_bytes, edits, cut, compress=False))
    try:
        model, header = load_model(path)
    except ModelFileError:
        return
    # A mutation that still loads must give a usable model of the declared kind.
    assert model.config.model == header["config"].model
    assert all(np.all(np.isfinite(v)) for v in model.weights().values())


@FUZZ
@given(attribute=st.sampled_from(["format", "format_version", "config", "epochs_done", "rng_state", "versions",
                                  "dataset", "saved_at"]),
       value=st.one_of(st.integers(-2**40, 2**40),
                       st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=50),
                       st.floats(allow_nan=True),
                       st.binary(max_size=20)))
def test_model_file_attributes_of_any_type_are_refused_cleanly(fuzz_dir, model_bytes, attribute, value):
    path = fuzz_dir / "attr.h5"
    path.write_bytes(model_bytes)
    with h5py.File(path, "r+") as f:
        if isinstance(value, bytes):
            value = np.void(value) if value else np.void(b"\0")
        f.attrs[attribute] = value
    try:
        read_header(path)
        load_model(path)
    except ModelFileError:
        pass


def test_model_files_are_never_unpickled(tmp_path, model_bytes):
    """An object-typed (pickle-capable) dataset is refused, not loaded."""
    path = tmp_path / "pickled.h5"
    path.write_bytes(model_bytes)
    with h5py.File(path, "r+") as f:
        del f["params/w_o"]
        f.create_dataset("params/w_o", data=np.array(["__import__('os').system('echo owned')"], dtype=h5py.string_dtype()))
    with pytest.raises(ModelFileError, match="w_o"):
        load_model(path)
