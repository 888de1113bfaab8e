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


def test_preferred_folder_is_searched_first_then_the_usual_places(tmp_path, isolated_home, monkeypatch):
    preferred = _tiny_mnist(tmp_path / "remembered", label_shift=1)
    _tiny_mnist(data.user_data_dir() / "mnist", label_shift=3)
    assert data.load_dataset("mnist", preferred_dir=preferred).train_labels[0] == 1
    monkeypatch.setenv("MNISTGUI_DATA", str(_tiny_mnist(tmp_path / "env", label_shift=2)))
    assert data.load_dataset("mnist", preferred_dir=preferred).train_labels[0] == 1
    # A preferred folder without the files, or gone, is a preference, not a command: the search goes on.
    (tmp_path / "empty").mkdir()
    assert data.load_dataset("mnist", preferred_dir=tmp_path / "empty").train_labels[0] == 2
    assert data.load_dataset("mnist", preferred_dir=tmp_path / "gone").train_labels[0] == 2
    found = data.find_dataset("mnist", preferred_dir=tmp_path / "empty")
    assert found.path == tmp_path / "env" and found.why == "MNISTGUI_DATA"


def test_the_other_dataset_is_found_beyond_a_preferred_folder(tmp_path, isolated_home):
    """A remembered MNIST folder must not hide Fashion-MNIST found elsewhere ("Use Fashion-MNIST")."""
    preferred = _copy_mnist(tmp_path / "remembered")  # the real MNIST: Fashion-MNIST's files have its names
    assert data.find_dataset("fashion", preferred_dir=preferred) is None  # MNIST is not taken for Fashion
    _tiny_mnist(data.user_data_dir() / "fashion", label_shift=4)
    assert data.find_dataset("fashion", preferred_dir=preferred).why == "per-user data folder"
    fashion = data.load_dataset("fashion", preferred_dir=preferred)
    assert fashion.name == "fashion" and fashion.train_labels[0] == 4
    assert data.load_dataset("mnist", preferred_dir=preferred).file_digests == data.MNIST_SHA256
    with pytest.raises(DataNotFoundError, match="remembered: holds MNIST, not Fashion-MNIST"):
        data.load_dataset("fashion", preferred)


def test_preferred_folder_not_found_message_names_it_without_blaming_data_option(tmp_path, isolated_home):
    (tmp_path / "remembered").mkdir()
    with pytest.raises(DataNotFoundError) as info:
        data.load_dataset("mnist", preferred_dir=tmp_path / "remembered")
    message = str(info.value)
    assert message.startswith("MNIST not found. Looked in: " + str(tmp_path / "remembered"))
    assert ".keras/datasets/mnist.npz" in message and "given with --data" not in message
    with pytest.raises(DataNotFoundError, match=r"gone: no such folder \(given with --data\)"):
        data.load_dataset("mnist", tmp_path / "gone")  # the explicit folder, and only that, is the command's


def test_preferred_keras_archive_is_read(tmp_path, isolated_home, mnist):
    archive = tmp_path / "mine.npz"
    np.savez(archive, x_train=mnist.train_images[:7], y_train=mnist.train_labels[:7],
             x_test=mnist.test_images[:3], y_test=mnist.test_labels[:3])
    assert len(data.load_dataset("mnist", preferred_dir=archive).train_images) == 7


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


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client that stops reading mid-file (a cancelled download) is expected here


class _Server:
    def __init__(self, routes):
        self.routes = routes  # path -> bytes, or ("cut", bytes) to drop the connection mid-file
        self.requests: list[str] = []  # every path asked for, in order: proof a mirror was contacted
        handler = self._handler()
        self.httpd = _QuietServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def _handler(self):
        routes, requests = self.routes, self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                requests.append(self.path)
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
    assert server.requests == [f"/a/{FILES[0]}", f"/a/{FILES[1]}"]


def test_first_mirror_404_falls_back_to_second(serve, tmp_path):
    server = serve(_real_routes("/good"))
    target = data.fetch_dataset("mnist", tmp_path / "dl", mirrors=[server.base + "/missing/", server.base + "/good/"])
    assert len(list(target.iterdir())) == 4
    assert server.requests == [path for name in FILES for path in (f"/missing/{name}", f"/good/{name}")]


def test_connection_cut_mid_file_then_next_mirror(serve, tmp_path):
    routes = _real_routes("/good")
    routes.update({f"/cut/{name}": ("cut", body) for name, body in
                   ((n, (MNIST_DIR / n).read_bytes()) for n in FILES)})
    server = serve(routes)
    target = data.fetch_dataset("mnist", tmp_path / "dl", mirrors=[server.base + "/cut/", server.base + "/good/"])
    assert sorted(p.name for p in target.iterdir()) == sorted(FILES)
    assert server.requests == [path for name in FILES for path in (f"/cut/{name}", f"/good/{name}")]


def test_every_mirror_failing_leaves_no_partial_file(serve, tmp_path):
    routes = {f"/cut/{n}": ("cut", (MNIST_DIR / n).read_bytes()) for n in FILES}
    server = serve(routes)
    with pytest.raises(DataError, match="could not download train-images"):
        data.fetch_dataset("mnist", tmp_path / "dl", mirrors=[server.base + "/cut/", server.base + "/none/"])
    assert list((tmp_path / "dl").iterdir()) == []
    assert server.requests == [f"/cut/{FILES[0]}", f"/none/{FILES[0]}"]  # both tried, then it gave up


def test_cancelling_from_progress_leaves_nothing(serve, tmp_path):
    server = serve(_real_routes("/a"))
    with pytest.raises(data.DownloadCancelled):
        data.fetch_dataset("mnist", tmp_path / "dl", progress=lambda f, d, t: False, mirrors=[server.base + "/a/"])
    assert list((tmp_path / "dl").iterdir()) == []


def test_offline_train_says_where_it_looked_after_the_mirrors_fail(serve, isolated_home, monkeypatch, capsys):
    """The default path (no --data, no --no-download) ends with the way out, not with mirror errors only."""
    from mnistgui import cli

    server = serve({})  # every file 404s, as an offline proxy or a dead mirror would
    monkeypatch.setitem(data.MIRRORS, "mnist", (server.base + "/one/", server.base + "/two/"))
    assert cli.main(["train", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert server.requests == [f"/one/{FILES[0]}", f"/two/{FILES[0]}"]
    assert err[0].startswith("MNIST not found locally; downloading into")
    assert len(err) == 2 and err[1].startswith("mnistgui: error: MNIST not found, and downloading it failed")
    assert "/two/: Not Found" in err[1] and "Looked in: " in err[1] and ".keras/datasets/mnist.npz" in err[1]
    assert "--data DIR or the MNISTGUI_DATA variable" in err[1]
    assert list((data.user_data_dir() / "mnist").iterdir()) == []
