import gzip
import http.server
import shutil
import threading

import numpy as np
import pytest

from mnistgui.core import data
from mnistgui.core.errors import DataError, DataNotFoundError

from .conftest import MNIST_DIR

FILES = [data.FILE_STEMS[r] + ".gz" for r in data.ROLES]


def _copy_mnist(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copy(MNIST_DIR / name, folder / name)
    return folder


def _tiny_mnist(folder, n_train=5, n_test=3, label_shift=0):
    """A valid IDX set with a recognisable first label, so tests can tell copies apart."""
    folder.mkdir(parents=True, exist_ok=True)
    import struct

    def write(name, magic, dims, payload):
        header = struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims)
        (folder / name).write_bytes(gzip.compress(header + payload))

    write(FILES[0], 2051, [n_train, 28, 28], bytes(n_train * 784))
    write(FILES[1], 2049, [n_train], bytes([(i + label_shift) % 10 for i in range(n_train)]))
    write(FILES[2], 2051, [n_test, 28, 28], bytes(n_test * 784))
    write(FILES[3], 2049, [n_test], bytes(n_test))
    return folder


def test_load_real_mnist_scaled_to_unit_floats(mnist):
    assert mnist.train_images.dtype == np.uint8 and mnist.train_images.shape == (60000, 28, 28)
    pixels = data.to_float(mnist.test_images[:100])
    assert pixels.dtype == np.float32 and pixels.shape == (100, 784)
    assert pixels.min() == 0.0 and pixels.max() == 1.0
    assert mnist.file_digests == data.MNIST_SHA256


def test_subset_takes_the_first_examples(mnist):
    small = mnist.subset(300, 50)
    assert len(small.train_images) == 300 and len(small.test_labels) == 50
    assert np.array_equal(small.train_labels, mnist.train_labels[:300])


def test_explicit_folder_beats_environment_beats_user_folder(tmp_path, isolated_home, monkeypatch):
    explicit = _tiny_mnist(tmp_path / "explicit", label_shift=1)
    env = _tiny_mnist(tmp_path / "env", label_shift=2)
    _tiny_mnist(data.user_data_dir() / "mnist", label_shift=3)
    assert data.load_dataset("mnist").train_labels[0] == 3
    monkeypatch.setenv("MNISTGUI_DATA", str(env))
    assert data.load_dataset("mnist").train_labels[0] == 2
    assert data.load_dataset("mnist", explicit).train_labels[0] == 1


def test_finds_keras_and_torchvision_caches(isolated_home, mnist):
    keras = isolated_home / ".keras" / "datasets"
    keras.mkdir(parents=True)
    np.savez(keras / "mnist.npz", x_train=mnist.train_images[:20], y_train=mnist.train_labels[:20],
             x_test=mnist.test_images[:10], y_test=mnist.test_labels[:10])
    found = data.load_dataset("mnist")
    assert found.source.endswith("mnist.npz") and len(found.train_images) == 20
    (keras / "mnist.npz").unlink()
    _tiny_mnist(isolated_home / "data" / "MNIST" / "raw")
    assert data.load_dataset("mnist").source.endswith("MNIST/raw")


def test_fashion_is_found_in_its_own_folder(isolated_home, tmp_path):
    _tiny_mnist(tmp_path / "d" / "fashion")
    dataset = data.load_dataset("fashion", tmp_path / "d")
    assert dataset.name == "fashion" and dataset.class_names[9] == "Ankle boot"


def test_not_found_lists_every_place_and_the_way_out(isolated_home):
    with pytest.raises(DataNotFoundError) as info:
        data.load_dataset("mnist")
    message = str(info.value)
    assert ".keras/datasets/mnist.npz" in message and "MNIST/raw" in message
    assert "--data" in message and "MNISTGUI_DATA" in message


def test_explicit_folder_without_files_is_an_error_even_if_data_exists(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match="empty: no MNIST files there"):
        data.load_dataset("mnist", tmp_path / "empty")


def test_mismatched_counts_are_named(tmp_path):
    folder = _copy_mnist(tmp_path / "m")
    (folder / FILES[3]).write_bytes((MNIST_DIR / FILES[1]).read_bytes())  # 60000 labels for 10000 images
    with pytest.raises(DataError, match="10000 images but .* has 60000 labels"):
        data.load_dataset("mnist", folder)


def test_corrupt_keras_archive(isolated_home):
    keras = isolated_home / ".keras" / "datasets"
    keras.mkdir(parents=True)
    (keras / "mnist.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="mnist.npz: unreadable"):
        data.load_dataset("mnist")


# --- downloads, from a real HTTP server on loopback ------------------------------------------------


class _Server:
    def __init__(self, routes):
        self.routes = routes  # path -> bytes, or ("cut", bytes) to drop the connection mid-file
        handler = self._handler()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def _handler(self):
        routes = self.routes

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                cut = isinstance(body, tuple)
                payload = body[1] if cut else body
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload[: len(payload) // 2] if cut else payload)
                if cut:
                    self.wfile.flush()
                    self.connection.close()

        return Handler

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(routes):
        server = _Server(routes)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def _real_routes(prefix):
    return {f"{prefix}/{name}": (MNIST_DIR / name).read_bytes() for name in FILES}


def test_download_succeeds_verifies_and_reports_progress(serve, tmp_path):
    server = serve(_real_routes("/a"))
    seen = []
    target = data.fetch_dataset("mnist", tmp_path / "dl", progress=lambda f, d, t: seen.append((f, d, t)),
                                mirrors=[server.base + "/a/"])
    assert sorted(p.name for p in target.iterdir()) == sorted(FILES)
    assert data.load_dataset("mnist", target).file_digests == data.MNIST_SHA256
    last = {f: (d, t) for f, d, t in seen}
    assert last == {n: ((MNIST_DIR / n).stat().st_size,) * 2 for n in FILES}


def test_corrupt_payload_is_rejected_and_nothing_is_left(serve, tmp_path):
    routes = _real_routes("/a")
    bad = bytearray(gzip.decompress(routes["/a/" + FILES[1]]))
    bad[100] ^= 1
    routes["/a/" + FILES[1]] = gzip.compress(bytes(bad))
    server = serve(routes)
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: .*digest mismatch"):
        data.fetch_dataset("mnist", tmp_path / "dl", mirrors=[server.base + "/a/"])
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == [FILES[0]]  # only the verified file


def test_first_mirror_404_falls_back_to_second(serve, tmp_path):
    server = serve(_real_routes("/good"))
    target = data.fetch_dataset("mnist", tmp_path / "dl", mirrors=[server.base + "/missing/", server.base + "/good/"])
    assert len(list(target.iterdir())) == 4


def test_connection_cut_mid_file_then_next_mirror(serve, tmp_path):
    routes = _real_routes("/good")
    routes.update({f"/cut/{name}": ("cut", body) for name, body in
                   ((n, (MNIST_DIR / n).read_bytes()) for n in FILES)})
    server = serve(routes)
    target = data.fetch_dataset("mnist", tmp_path / "dl", mirrors=[server.base + "/cut/", server.base + "/good/"])
    assert sorted(p.name for p in target.iterdir()) == sorted(FILES)


def test_every_mirror_failing_leaves_no_partial_file(serve, tmp_path):
    routes = {f"/cut/{n}": ("cut", (MNIST_DIR / n).read_bytes()) for n in FILES}
    server = serve(routes)
    with pytest.raises(DataError, match="could not download train-images"):
        data.fetch_dataset("mnist", tmp_path / "dl", mirrors=[server.base + "/cut/", server.base + "/none/"])
    assert list((tmp_path / "dl").iterdir()) == []


def test_cancelling_from_progress_leaves_nothing(serve, tmp_path):
    server = serve(_real_routes("/a"))
    with pytest.raises(data.DownloadCancelled):
        data.fetch_dataset("mnist", tmp_path / "dl", progress=lambda f, d, t: False, mirrors=[server.base + "/a/"])
    assert list((tmp_path / "dl").iterdir()) == []
