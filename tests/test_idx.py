import gzip
import struct

import numpy as np
import pytest

from mnistgui.core.data import MNIST_SHA256
from mnistgui.core.errors import DataError
from mnistgui.core.idx import read_images, read_labels

from .conftest import MNIST_DIR


def _write_idx(path, magic, dims, payload: bytes, compress=False):
    header = struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims)
    data = header + payload
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def test_real_files_have_the_documented_counts_labels_and_digests():
    images = read_images(MNIST_DIR / "train-images-idx3-ubyte.gz")
    labels = read_labels(MNIST_DIR / "train-labels-idx1-ubyte.gz")
    test_labels = read_labels(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    assert images.array.shape == (60000, 28, 28) and images.array.dtype == np.uint8
    assert labels.array[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test_labels.array[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(labels.array).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert images.sha256 == MNIST_SHA256["train_images"]
    assert labels.sha256 == MNIST_SHA256["train_labels"]


def test_raw_and_gzip_files_read_the_same(tmp_path):
    raw = tmp_path / "t10k-labels-idx1-ubyte"
    raw.write_bytes(gzip.decompress((MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    from_raw = read_labels(raw)
    from_gz = read_labels(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    assert np.array_equal(from_raw.array, from_gz.array)
    assert from_raw.sha256 == from_gz.sha256 == MNIST_SHA256["test_labels"]


@pytest.mark.parametrize("compress", [False, True])
def test_bad_magic_is_named(tmp_path, compress):
    path = _write_idx(tmp_path / "x", 2049, [2, 28, 28], bytes(2 * 784), compress)
    with pytest.raises(DataError, match=r"x: bad magic number 2049, expected 2051"):
        read_images(path)


def test_truncated_payload_is_reported(tmp_path):
    path = _write_idx(tmp_path / "short", 2051, [3, 28, 28], bytes(2 * 784))
    with pytest.raises(DataError, match="short: truncated"):
        read_images(path)


def test_truncated_gzip_stream_is_reported(tmp_path):
    path = tmp_path / "cut.gz"
    full = (MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes()
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match="cut.gz: .*(truncated|corrupt)"):
        read_labels(path)


def test_trailing_bytes_are_rejected(tmp_path):
    path = _write_idx(tmp_path / "long", 2049, [3], bytes([1, 2, 3, 4]))
    with pytest.raises(DataError, match="trailing bytes"):
        read_labels(path)


def test_a_header_claiming_a_trillion_images_allocates_nothing(tmp_path):
    path = _write_idx(tmp_path / "huge", 2051, [10**9, 28, 28], bytes(784))
    with pytest.raises(DataError, match="not a plausible MNIST file"):
        read_images(path)


def test_label_out_of_range_names_index(tmp_path):
    path = _write_idx(tmp_path / "labels", 2049, [4], bytes([1, 2, 12, 3]))
    with pytest.raises(DataError, match="label 12 at index 2 is outside 0..9"):
        read_labels(path)


def test_wrong_image_size(tmp_path):
    path = _write_idx(tmp_path / "img", 2051, [2, 32, 32], bytes(2 * 1024))
    with pytest.raises(DataError, match="must be N x 28 x 28"):
        read_images(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nothere: no such file"):
        read_images(tmp_path / "nothere")
