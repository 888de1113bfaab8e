"""Hostile files: mutated and truncated IDX files and model files may only raise the documented errors.

Every example is a real file on disk, read by the same functions the app uses. A crash, a hang (each
test is bounded by pytest-timeout, configured in pyproject.toml), an undocumented exception or a huge
allocation fails the test. Memory is measured twice: tracemalloc sees Python's and NumPy's
allocations, and on Linux the process's peak resident set also sees HDF5's and zlib's own buffers.
"""

from __future__ import annotations

import contextlib
import faulthandler
import gzip
import json
import os
import re
import signal
import struct
import tempfile
import time
import traceback
import tracemalloc

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from mnistgui.core.config import Config
from mnistgui.core.errors import DataError, ModelFileError
from mnistgui.core.idx import read_images, read_labels
from mnistgui.core.modelfile import load_model, read_header, save_model
from mnistgui.core.training import create_model

from .conftest import MNIST_DIR

FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
MEMORY_LIMIT = 64 << 20  # no single read may allocate more than this, whatever its header claims


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.M).group(1))


def _can_reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # Linux >= 4.0: VmHWM restarts from the current resident set
        return True
    except OSError:
        return False


RSS_MEASURABLE = _can_reset_peak_rss()


@contextlib.contextmanager
def memory_peak():
    """Yields a dict that holds, after the block, its peak new allocation in bytes ("python", "rss")."""
    peaks = {"python": 0, "rss": 0}
    if RSS_MEASURABLE:
        _can_reset_peak_rss()
        rss_before = _status_kib("VmRSS")
    tracemalloc.start()
    try:
        yield peaks
    finally:
        peaks["python"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        if RSS_MEASURABLE:
            peaks["rss"] = (_status_kib("VmHWM") - rss_before) << 10


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
    """The same bytes in every run (the save time fixed), so that the derandomized mutations are the same:
    libhdf5 itself crashes on some corrupt files (see the model-file note in the README), and a base
    file that changed with the clock made this test pass or crash from one run to the next."""
    import mnistgui.core.modelfile as modelfile

    model = create_model(Config.for_model("dropout_mlp", hidden_sizes=(8, 4)))
    path = tmp_path_factory.mktemp("model") / "m.h5"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(modelfile, "_now", lambda: "2026-01-01T00:00:00+0000")
        save_model(model, path)
    return path.read_bytes()


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.none() | st.integers(0, 10**6))
def test_mutated_model_files_raise_only_model_file_errors(fuzz_dir, model_bytes, edits, cut):
    path = fuzz_dir / "model.h5"
    path.write_bytes(_mutate(model_bytes, edits, cut, compress=False))
    outcome = _in_child(_load_mutated, path)
    event(f"outcome: {outcome}")
    # Anything but a ModelFileError or a usable model is a failure; libhdf5 crashing or looping inside
    # h5py on a corrupted file (before any of our checks can run) is the README's known limit, counted.
    assert outcome in ("refused or loaded", "libhdf5 crashed", "libhdf5 hung"), outcome


def _load_mutated(path) -> None:
    try:
        model, header = load_model(path)
    except ModelFileError:
        return
    # A mutation that still loads must give a usable model of the declared kind.
    assert model.config.model == header["config"].model
    assert all(np.all(np.isfinite(v)) for v in model.weights().values())


def _in_child(function, *args, timeout: float = 5.0) -> str:
    """Run `function(*args)` in a forked child: libhdf5 may segfault or loop forever on a corrupt file.

    Only a crash or a hang whose stack (the child's faulthandler dump) is inside h5py counts as
    libhdf5's; one anywhere else (our loader, NumPy, a memory blow-up) is reported as a failure.
    """
    with tempfile.TemporaryFile() as dump:
        pid = os.fork()
        if pid == 0:  # the child: report through the exit status and the dump only
            code = 0
            try:
                faulthandler.enable(file=dump, all_threads=False)
                faulthandler.dump_traceback_later(timeout * 0.8, file=dump)
                function(*args)
            except BaseException:
                traceback.print_exc()
                code = 1
            os._exit(code)
        deadline = time.monotonic() + timeout
        hung = False
        while True:
            finished, status = os.waitpid(pid, os.WNOHANG)
            if finished:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                hung = True
                break
            time.sleep(0.002)
        dump.seek(0)
        stack = dump.read().decode(errors="replace")
    in_h5py = "/h5py/" in stack
    if hung:
        return "libhdf5 hung" if in_h5py else f"hung outside h5py:\n{stack}"
    if os.WIFSIGNALED(status):
        crashed_in_h5py = os.WTERMSIG(status) in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT) and in_h5py
        return "libhdf5 crashed" if crashed_in_h5py else f"signal {os.WTERMSIG(status)} outside h5py:\n{stack}"
    return "refused or loaded" if os.WEXITSTATUS(status) == 0 else "another exception (traceback above)"


def _attribute_is_acceptable(attribute: str, value, original) -> bool | None:
    """Whether a file with `attribute` set to `value` must load (True), be refused (False), or either (None)."""
    is_text = isinstance(value, str)
    if attribute == "format":
        return is_text and value == "mnistgui-model"
    if attribute in ("format_version",):
        return isinstance(value, int) and value == 1
    if attribute == "epochs_done":
        return isinstance(value, int) and value == 0  # the fixture's model has trained no epochs
    if attribute == "config":
        if not is_text:
            return False
        try:
            return Config.from_json(value) == original  # another valid configuration meets other weights
        except ValueError:
            return False
    if attribute == "rng_state":
        if not is_text:
            return False
        try:
            np.random.default_rng().bit_generator.state = json.loads(value)
        except (TypeError, ValueError, KeyError):
            return False
        return None  # a valid PCG64 state: accepted
    return is_text  # versions, dataset, saved_at: any text


@settings(FUZZ, max_examples=800)
@given(attribute=st.sampled_from(["format", "format_version", "config", "epochs_done", "rng_state", "versions",
                                  "dataset", "saved_at"]),
       value=st.one_of(st.integers(-2**40, 2**40),
                       st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=50),
                       st.sampled_from(["mnistgui-model", "{}", '{"model": "dropout_mlp", "hidden_sizes": [8, 4]}',
                                        "null", "[1, 2]", '{"bit_generator": "PCG64"}']),
                       st.integers(-1, 2),
                       st.floats(allow_nan=True),
                       st.binary(max_size=20)))
def test_model_file_attributes_of_any_type_are_refused_cleanly(fuzz_dir, model_bytes, attribute, value):
    path = fuzz_dir / "attr.h5"
    path.write_bytes(model_bytes)
    with h5py.File(path, "r+") as f:
        original = Config.from_json(f.attrs["config"])
        stored = (np.void(value) if value else np.void(b"\0")) if isinstance(value, bytes) else value
        f.attrs[attribute] = stored
    try:
        header = read_header(path)
        model, _ = load_model(path)
    except ModelFileError as exc:
        loaded, message = False, str(exc)
    else:
        loaded, message = True, ""
    expected = _attribute_is_acceptable(attribute, value, original)
    if expected is not None:
        assert loaded == expected, f"{attribute}={value!r}: {'loaded' if loaded else message}"
    if loaded:
        assert model.config == original and header["epochs_done"] == 0
        if attribute in ("dataset", "saved_at"):
            assert header[attribute] == value
    else:
        assert message.startswith(f"{path}: ") and "\n" not in message


# --- model files whose datasets lie about their size ------------------------------------------------------

LIE_TARGETS = {
    "knn": ("knn/images", "knn/labels", "history/test_error", "history/epoch"),
    "dropout_mlp": ("params/w_h", "params/w_o", "optimizer/w_h2.acc", "history/cost"),
}
DIMENSIONS = st.sampled_from([0, 1, 4, 8, 10, 300, 784, 60000, 2**20, 2**31, 2**40])


@pytest.fixture(scope="module")
def lie_bases(tmp_path_factory, mnist):
    """A small kNN file (its configuration: 300 training images) and a small dropout MLP file."""
    folder = tmp_path_factory.mktemp("lies")
    knn = create_model(Config.for_model("knn", train_size=300, test_size=10))
    knn.fit(mnist.train_images[:300], mnist.train_labels[:300])
    mlp = create_model(Config.for_model("dropout_mlp", hidden_sizes=(8, 4)))
    for name, model in (("knn", knn), ("dropout_mlp", mlp)):
        save_model(model, folder / f"{name}.h5")
    return {name: (folder / f"{name}.h5").read_bytes() for name in LIE_TARGETS}


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(model=st.sampled_from(sorted(LIE_TARGETS)), target=st.integers(0, 3),
       shape=st.lists(DIMENSIONS, max_size=3).map(tuple), dtype=st.sampled_from(["u1", "f4", "f8", "i8", "u8"]),
       chunk_sides=st.none() | st.lists(st.sampled_from([1, 64, 4096, 2**20, 2**26]), min_size=3, max_size=3),
       epochs_done=st.none() | DIMENSIONS)
def test_datasets_that_lie_about_their_size_are_refused_before_reading(
        fuzz_dir, lie_bases, model, target, shape, dtype, chunk_sides, epochs_done):
    """Shapes claiming gigabytes, stored as a tiny file (unwritten, compressed chunks read back as fill)."""
    key = LIE_TARGETS[model][target]
    path = fuzz_dir / "lie.h5"
    path.write_bytes(lie_bases[model])
    with h5py.File(path, "r+") as f:
        honest_shape, honest_dtype = f[key].shape, f[key].dtype
        del f[key]
        options = {}
        if chunk_sides is not None:
            assume(shape and 0 not in shape)
            options = dict(chunks=tuple(chunk_sides[: len(shape)]), maxshape=(None,) * len(shape), compression="gzip")
        try:
            f.create_dataset(key, shape=shape, dtype=dtype, fillvalue=1, **options)
        except (ValueError, TypeError, OSError, OverflowError):
            assume(False)  # HDF5 itself will not describe it (chunks over 4 GiB, sizes over 2**64 bytes)
        if epochs_done is not None:
            f.attrs["epochs_done"] = epochs_done
    with memory_peak() as peak:
        try:
            loaded = load_model(path)
        except ModelFileError:
            loaded = None
    event("loaded" if loaded is not None else "refused")
    assert peak["python"] < MEMORY_LIMIT and peak["rss"] < MEMORY_LIMIT, peak
    if loaded is not None:  # only a harmless change may load: the honest shape, a numeric type
        assert shape == honest_shape, (key, shape, honest_shape)
        assert np.dtype(dtype).kind == honest_dtype.kind or not key.startswith("knn/")


@pytest.mark.parametrize("rows", [20_000_000, 200_000_000])
def test_knn_store_claiming_millions_of_images_is_refused_unread(tmp_path, rows):
    """The issue's file: 197 KB on disk, a gzip-compressed knn/images claiming `rows` x 784 pixels."""
    model = create_model(Config.for_model("knn"))  # train_size 0: the whole training set, 60,000 rows
    model.fit(np.zeros((10, 784), np.uint8), np.arange(10, dtype=np.uint8))
    path = tmp_path / "bomb.h5"
    save_model(model, path)
    with h5py.File(path, "r+") as f:
        del f["knn/images"], f["knn/labels"]
        f.create_dataset("knn/images", shape=(rows, 784), dtype="u1", chunks=(4096, 784), compression="gzip",
                         fillvalue=255)
        f.create_dataset("knn/labels", shape=(rows,), dtype="u1", chunks=(65536,), compression="gzip")
    assert path.stat().st_size < 256 << 10
    with memory_peak() as peak, pytest.raises(ModelFileError, match=rf"stores {rows} kNN training images; "
                                                                   r"its configuration allows 1 to 60000"):
        load_model(path)
    assert peak["python"] < MEMORY_LIMIT and peak["rss"] < MEMORY_LIMIT, peak


def test_compression_bomb_of_real_zeros_is_bounded_by_the_configuration(tmp_path, lie_bases):
    """60,000 written images of zeros compress to a small file; a store for 300 images may not hold them."""
    path = tmp_path / "zeros.h5"
    path.write_bytes(lie_bases["knn"])
    with h5py.File(path, "r+") as f:
        del f["knn/images"], f["knn/labels"]
        f.create_dataset("knn/images", data=np.zeros((60000, 784), np.uint8), chunks=(4096, 784),
                         compression="gzip", compression_opts=9)
        f.create_dataset("knn/labels", data=np.zeros(60000, np.uint8))
    assert path.stat().st_size < 1 << 20
    with memory_peak() as peak, pytest.raises(ModelFileError, match="stores 60000 kNN training images; "
                                                                   r"its configuration allows 1 to 300"):
        load_model(path)
    assert peak["python"] < MEMORY_LIMIT and peak["rss"] < MEMORY_LIMIT, peak


def test_model_files_are_never_unpickled(tmp_path, model_bytes):
    """An object-typed (pickle-capable) dataset is refused, not loaded."""
    path = tmp_path / "pickled.h5"
    path.write_bytes(model_bytes)
    with h5py.File(path, "r+") as f:
        del f["params/w_o"]
        f.create_dataset("params/w_o", data=np.array(["__import__('os').system('echo owned')"], dtype=h5py.string_dtype()))
    with pytest.raises(ModelFileError, match="w_o"):
        load_model(path)
