"""Finding, verifying and (when asked) downloading MNIST and Fashion-MNIST.

Search order: an explicit folder (`--data`: only that folder), else a preferred folder (the one the
window remembers: searched first, not exclusively), the MNISTGUI_DATA variable, the per-user data
folder, then the caches other tools leave behind (Keras, torchvision) and Debian's Fashion-MNIST
package. If nothing is found, `fetch_dataset` downloads into the per-user folder, verifying each file.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError, DataNotFoundError
from .idx import check_pair, read_images, read_labels

ROLES = ("train_images", "train_labels", "test_images", "test_labels")
FILE_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# SHA-256 of each decompressed file: any faithful copy of MNIST has these, whichever gzip made it.
MNIST_SHA256 = {
    "train_images": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train_labels": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "test_images": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "test_labels": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
# Fashion-MNIST publishes MD5 digests of its compressed files, so those are what a download checks.
FASHION_GZ_MD5 = {
    "train_images": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train_labels": "25c81989df183df01b3e8a0aad5dffbe",
    "test_images": "bef4ecab320f06d8554ea6380940ec79",
    "test_labels": "bb300cfdad3c16e7a12a480ee83cd310",
}

MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
    ),
}

CLASS_NAMES = {
    "mnist": tuple(str(digit) for digit in range(10)),
    "fashion": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
}
DATASET_TITLES = {"mnist": "MNIST", "fashion": "Fashion-MNIST"}

# Folder names a dataset may sit in below a data folder, ours first, then torchvision's.
_SUBFOLDERS = {
    "mnist": ("", "mnist", "MNIST/raw"),
    "fashion": ("", "fashion", "fashion-mnist", "FashionMNIST/raw"),
}

ProgressCallback = Callable[[str, int, int], bool | None]  # (file, bytes done, bytes total) -> False cancels


@dataclass
class Dataset:
    """The four arrays, as uint8 images (N, 28, 28) and uint8 labels, plus where they came from."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str
    digest: str  # SHA-256 over the four files' payload digests
    file_digests: dict[str, str] = field(default_factory=dict)

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES[self.name]

    @property
    def title(self) -> str:
        return DATASET_TITLES[self.name]

    def subset(self, train_size: int = 0, test_size: int = 0) -> Dataset:
        """The first `train_size` training and `test_size` test examples (0 keeps all)."""
        def first(array, n):
            return array if not n or n >= len(array) else array[:n]

        return Dataset(
            name=self.name,
            train_images=first(self.train_images, train_size),
            train_labels=first(self.train_labels, train_size),
            test_images=first(self.test_images, test_size),
            test_labels=first(self.test_labels, test_size),
            source=self.source,
            digest=self.digest,
            file_digests=self.file_digests,
        )


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 pixels to float32 in [0, 1], flattened to rows of 784."""
    return images.reshape(len(images), -1).astype(np.float32) * np.float32(1.0 / 255.0)


def combined_digest(file_digests: dict[str, str]) -> str:
    joined = "\n".join(f"{role}:{file_digests[role]}" for role in ROLES)
    return hashlib.sha256(joined.encode()).hexdigest()


def user_data_dir() -> Path:
    """The platform's per-user data folder for mnistgui."""
    home = Path.home()
    if sys.platform.startswith("win"):
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = home / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    return base / "mnistgui"


def default_download_dir(name: str) -> Path:
    return user_data_dir() / name


def _find_role_file(folder: Path, role: str) -> Path | None:
    stem = FILE_STEMS[role]
    candidates = (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx"))
    for candidate in candidates:
        path = folder / candidate
        if path.is_file():
            return path
    return None


def _idx_folder(folder: Path) -> dict[str, Path] | None:
    files = {role: _find_role_file(folder, role) for role in ROLES}
    return files if all(files.values()) else None


@dataclass(frozen=True)
class Candidate:
    """One place that may hold the dataset: a folder of IDX files or a Keras .npz."""

    path: Path
    why: str  # how this place came to be searched, for the not-found message


def candidate_places(
    name: str, data_dir: str | os.PathLike | None = None, preferred_dir: str | os.PathLike | None = None
) -> list[Candidate]:
    """Every place searched for `name`, in order: `data_dir`, `preferred_dir`, then the usual places."""
    places: list[Candidate] = []

    def folders(root: Path, why: str):
        if root.suffix == ".npz":  # a Keras archive named directly
            places.append(Candidate(root, why))
            return
        for sub in _SUBFOLDERS[name]:
            places.append(Candidate(root / sub if sub else root, why))

    if data_dir is not None:
        folders(Path(data_dir).expanduser(), "--data")
    if preferred_dir is not None:
        folders(Path(preferred_dir).expanduser(), "preferred data folder")
    env = os.environ.get("MNISTGUI_DATA")
    if env:
        folders(Path(env).expanduser(), "MNISTGUI_DATA")
    folders(user_data_dir(), "per-user data folder")
    home = Path.home()
    if name == "mnist":
        places.append(Candidate(home / ".keras" / "datasets" / "mnist.npz", "Keras cache"))
        raw = "MNIST/raw"
    else:
        places.append(Candidate(home / ".keras" / "datasets" / "fashion-mnist", "Keras cache"))
        places.append(Candidate(Path("/usr/share/datasets/fashion-mnist"), "Debian dataset-fashion-mnist"))
        raw = "FashionMNIST/raw"
    for root in (Path.cwd() / "data", home / "data", home / ".torch" / "datasets", home / ".cache" / "torchvision"):
        places.append(Candidate(root / raw, "torchvision cache"))
    return places


def load_idx_folder(name: str, folder: Path) -> Dataset:
    files = _idx_folder(folder)
    if files is None:
        missing = [FILE_STEMS[r] for r in ROLES if _find_role_file(folder, r) is None]
        raise DataError(f"{folder}: missing {', '.join(missing)}")
    train_images = read_images(files["train_images"])
    train_labels = read_labels(files["train_labels"])
    test_images = read_images(files["test_images"])
    test_labels = read_labels(files["test_labels"])
    check_pair(train_images, train_labels, files["train_images"], files["train_labels"])
    check_pair(test_images, test_labels, files["test_images"], files["test_labels"])
    digests = {
        "train_images": train_images.sha256,
        "train_labels": train_labels.sha256,
        "test_images": test_images.sha256,
        "test_labels": test_labels.sha256,
    }
    return Dataset(
        name=name,
        train_images=train_images.array,
        train_labels=train_labels.array,
        test_images=test_images.array,
        test_labels=test_labels.array,
        source=str(folder),
        digest=combined_digest(digests),
        file_digests=digests,
    )


def load_keras_npz(name: str, path: Path) -> Dataset:
    """Keras' mnist.npz: four arrays, read without unpickling anything."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in ("x_train", "y_train", "x_test", "y_test")}
    except KeyError as exc:
        raise DataError(f"{path}: not a Keras MNIST archive (no array {exc})") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: unreadable .npz archive ({exc})") from None
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataError(f"{path}: x_{split} must be uint8 N x 28 x 28, is {images.dtype} {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(f"{path}: y_{split} does not match x_{split}")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise DataError(f"{path}: y_{split} has labels outside 0..9")
    digests = {
        role: hashlib.sha256(np.ascontiguousarray(arrays[key]).tobytes()).hexdigest()
        for role, key in zip(ROLES, ("x_train", "y_train", "x_test", "y_test"))
    }
    return Dataset(
        name=name,
        train_images=arrays["x_train"],
        train_labels=arrays["y_train"].astype(np.uint8),
        test_images=arrays["x_test"],
        test_labels=arrays["y_test"].astype(np.uint8),
        source=str(path),
        digest=combined_digest(digests),
        file_digests=digests,
    )


def _holds_mnist_instead(name: str, folder: Path) -> bool:
    """True if `folder` is asked for as Fashion-MNIST but holds MNIST (their files share names).

    MNIST's tiny test-labels file identifies it by its digest; an unreadable one is left for the
    loader to report.
    """
    if name != "fashion":
        return False
    path = _find_role_file(folder, "test_labels")
    try:
        return path is not None and read_labels(path).sha256 == MNIST_SHA256["test_labels"]
    except DataError:
        return False


def _looks_like_dataset(name: str, candidate: Path) -> bool:
    if candidate.suffix == ".npz":
        return candidate.is_file()
    return candidate.is_dir() and _idx_folder(candidate) is not None and not _holds_mnist_instead(name, candidate)


def find_dataset(
    name: str, data_dir: str | os.PathLike | None = None, preferred_dir: str | os.PathLike | None = None
) -> Candidate | None:
    """The first place, in search order, that holds all four files of `name`."""
    for candidate in candidate_places(name, data_dir, preferred_dir):
        if _looks_like_dataset(name, candidate.path):
            return candidate
    return None


def not_found_message(
    name: str,
    data_dir: str | os.PathLike | None = None,
    preferred_dir: str | os.PathLike | None = None,
    download_error: str | None = None,
) -> str:
    """Where mnistgui looked and how to point it at the files; `download_error` if a download failed too."""
    looked = ", ".join(dict.fromkeys(str(c.path) for c in candidate_places(name, data_dir, preferred_dir)))
    title = DATASET_TITLES[name]
    if download_error is None:
        return (
            f"{title} not found. Looked in: {looked}. "
            f"Point mnistgui at the four IDX files with --data DIR or the MNISTGUI_DATA variable, "
            f"or let it download them into {default_download_dir(name)}."
        )
    return (
        f"{title} not found, and downloading it failed ({download_error}). Looked in: {looked}. "
        f"Point mnistgui at the four IDX files with --data DIR or the MNISTGUI_DATA variable, "
        f"or put them into {default_download_dir(name)}."
    )


def load_dataset(
    name: str = "mnist",
    data_dir: str | os.PathLike | None = None,
    preferred_dir: str | os.PathLike | None = None,
) -> Dataset:
    """Load `name` from the first place that has it. Raises DataNotFoundError naming every place tried.

    An explicit `data_dir` (the command line's --data) that lacks the files is an error even if the
    data exists elsewhere: the user asked for that folder. A `preferred_dir` (a folder the window
    remembers or the user chose there) is only searched first: if it lacks the files, the usual
    places are searched after it.
    """
    if name not in DATASET_TITLES:
        raise DataError(f"unknown dataset {name!r}; choose mnist or fashion")
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not root.exists():
            raise DataNotFoundError(f"{root}: no such folder (given with --data)")
        for sub in _SUBFOLDERS[name]:
            folder = root / sub if sub else root
            if _looks_like_dataset(name, folder):
                return load_idx_folder(name, folder)
        if root.suffix == ".npz" and root.is_file():
            return load_keras_npz(name, root)
        if _holds_mnist_instead(name, root):
            raise DataNotFoundError(f"{root}: holds MNIST, not {DATASET_TITLES[name]}")
        missing = [FILE_STEMS[r] for r in ROLES if _find_role_file(root, r) is None]
        raise DataNotFoundError(f"{root}: no {DATASET_TITLES[name]} files there (missing {', '.join(missing)})")
    found = find_dataset(name, preferred_dir=preferred_dir)
    if found is None:
        raise DataNotFoundError(not_found_message(name, preferred_dir=preferred_dir))
    if found.path.suffix == ".npz":
        return load_keras_npz(name, found.path)
    return load_idx_folder(name, found.path)


# --- Downloading ---------------------------------------------------------------------------------


class DownloadCancelled(DataError):
    """The progress callback asked to stop; nothing partial was left behind."""


def _verify(name: str, role: str, gz_path: Path) -> str | None:
    """None if the downloaded file is the expected one, else what is wrong with it."""
    if name == "fashion":
        digest = hashlib.md5(gz_path.read_bytes(), usedforsecurity=False).hexdigest()
        expected = FASHION_GZ_MD5[role]
    else:
        sha = hashlib.sha256()
        try:
            with gzip.open(gz_path, "rb") as stream:
                for chunk in iter(lambda: stream.read(1 << 20), b""):
                    sha.update(chunk)
        except (OSError, EOFError) as exc:
            return f"not a valid gzip file ({exc})"
        digest, expected = sha.hexdigest(), MNIST_SHA256[role]
    return None if digest == expected else f"digest mismatch (got {digest[:12]}..., expected {expected[:12]}...)"


def _fetch_one(url: str, target: Path, progress: ProgressCallback | None, label: str, timeout: float) -> None:
    """Stream `url` into `target` (a temporary path); raises on any failure or cancellation."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0)
        done = 0
        while True:
            chunk = response.read(1 << 16)
            if not chunk:
                break
            out.write(chunk)
            done += len(chunk)
            if progress is not None and progress(label, done, total) is False:
                raise DownloadCancelled("download cancelled")
        if total and done != total:
            raise OSError(f"connection closed after {done} of {total} bytes")
        out.flush()
        os.fsync(out.fileno())


def fetch_dataset(
    name: str = "mnist",
    target_dir: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
    mirrors: Sequence[str] | None = None,
    timeout: float = 30.0,
) -> Path:
    """Download the four files of `name` into `target_dir`, verified, atomically, mirror by mirror.

    Files already present and valid are kept. On failure no partial file is left in `target_dir`.
    """
    target = Path(target_dir) if target_dir is not None else default_download_dir(name)
    mirrors = tuple(mirrors) if mirrors is not None else MIRRORS[name]
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {target}: {exc.strerror or exc}") from None
    for role in ROLES:
        filename = FILE_STEMS[role] + ".gz"
        final = target / filename
        if final.is_file() and _verify(name, role, final) is None:
            continue
        failures = []
        for mirror in mirrors:
            fd, temp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=target)
            os.close(fd)
            temp = Path(temp_name)
            try:
                _fetch_one(mirror + filename, temp, progress, filename, timeout)
                problem = _verify(name, role, temp)
                if problem is not None:
                    failures.append(f"{mirror}: {problem}")
                    continue
                os.replace(temp, final)
                break
            except DownloadCancelled:
                raise
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", None) or exc
                failures.append(f"{mirror}: {reason}")
            finally:
                temp.unlink(missing_ok=True)
        else:
            raise DataError(f"could not download {filename}: " + "; ".join(failures))
    return target
