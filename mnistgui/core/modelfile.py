"""Model files: one self-describing HDF5 file per model, written atomically, read defensively.

Layout (format 1):
    /                attrs: format="mnistgui-model", format_version, config (JSON), model,
                     epochs_done, dataset, dataset_digest, rng_state (JSON), versions (JSON), saved_at
    /params/<name>   float32 weights, by the notebook's names (w, w_h, w_o, ...)
    /optimizer/<n>   optimizer state (e.g. "w_h.acc" for RMSprop's running mean of g^2)
    /history/<col>   epoch, train_error, test_error, cost, seconds, images_per_second, eval_seconds,
                     and (optional, NaN when absent) val_error, learning_rate, and class_accuracy (n, 10)
                     attrs (optional): training_state (JSON: config_changes, schedule_horizon, best_epoch,
                     attack_rng: the adversarial-training attack's generator state)
    /knn/images, /knn/labels   kNN only: the stored training set (gzip-compressed uint8)

Nothing is ever unpickled: only numeric datasets and string attributes are read. A model file is
untrusted input: every dataset's shape, type and storage, and every attribute's size, is checked from
the file's metadata against what the configuration and the dataset allow before anything is read, so
a file that lies about its sizes, or a compression bomb, costs no more memory than an honest file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import h5py
import numpy as np

from .. import __version__
from .config import Config
from .errors import ConfigError, ModelFileError
from .models import MAX_PARAMETERS, parameter_count
from .training import EpochResult, KnnModel, Model, NeuralModel, create_model

FORMAT_NAME = "mnistgui-model"
FORMAT_VERSION = 1
HISTORY_COLUMNS = [f.name for f in fields(EpochResult) if f.name != "class_accuracy"]
# Columns added after the first release: a file without them reads as NaN.
OPTIONAL_HISTORY_COLUMNS = ("val_error", "learning_rate", "robust_accuracy")

# Bounds on what a file may ask us to allocate, checked from metadata before reading.
TRAIN_SET_ROWS = {"mnist": 60000, "fashion": 60000}  # a kNN store holds at most its training set
IMAGE_PIXELS = 784
MAX_HISTORY_ROWS = 100_000  # ten runs of Config's 10,000 epochs at most, resumed one after another
MAX_ATTRIBUTE_BYTES = 1 << 20  # configuration, versions, RNG state: a few hundred bytes each
MAX_CHUNK_BYTES = 64 << 20  # HDF5 decompresses whole chunks: an honest file's are well under a MiB


def _versions() -> dict:
    import pytensor

    return {"mnistgui": __version__, "pytensor": pytensor.__version__, "numpy": np.__version__,
            "h5py": h5py.__version__}


def save_model(model: Model, path: str | os.PathLike, dataset_name: str = "", dataset_digest: str = "") -> Path:
    """Write `model` to `path` atomically: a temporary file in the same folder, fsync, then rename.

    On any failure (full disk, no permission) the previous file at `path` is untouched, no
    temporary file is left, and ModelFileError says why.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise ModelFileError(f"cannot write to {folder}: {exc.strerror or exc}") from None
    os.close(fd)
    temp = Path(temp_name)
    try:
        with h5py.File(temp, "w") as f:
            _write(f, model, dataset_name, dataset_digest)
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except OSError as exc:
        raise ModelFileError(f"cannot save {path}: {exc.strerror or exc}") from None
    finally:
        temp.unlink(missing_ok=True)
    return path


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _write(f: h5py.File, model: Model, dataset_name: str, dataset_digest: str) -> None:
    f.attrs["format"] = FORMAT_NAME
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["config"] = model.config.to_json()
    f.attrs["model"] = model.config.model
    f.attrs["epochs_done"] = model.epochs_done
    f.attrs["dataset"] = dataset_name or model.config.dataset
    f.attrs["dataset_digest"] = dataset_digest
    f.attrs["versions"] = json.dumps(_versions())
    f.attrs["saved_at"] = _now()
    history = f.create_group("history")
    for column in HISTORY_COLUMNS:
        history.create_dataset(column, data=np.array([getattr(r, column) for r in model.history], dtype=np.float64))
    history.create_dataset("class_accuracy", data=np.array([r.class_accuracy for r in model.history],
                                                             dtype=np.float64).reshape(-1, 10))
    if isinstance(model, NeuralModel):
        history.attrs["training_state"] = json.dumps(model.get_state()["training"])
    if isinstance(model, KnnModel):
        group = f.create_group("knn")
        group.create_dataset("images", data=model.train_images, compression="gzip", compression_opts=4)
        group.create_dataset("labels", data=model.train_labels)
        f.attrs["rng_state"] = "null"
        return
    state = model.get_state()
    f.attrs["rng_state"] = json.dumps(state["rng"])
    params = f.create_group("params")
    for name, value in state["params"].items():
        params.create_dataset(name, data=value)
    optimizer = f.create_group("optimizer")
    for name, value in state["optimizer"].items():
        optimizer.create_dataset(name, data=value)


def _attribute(f: h5py.File, name: str, path: Path):
    """The attribute's value, or None if absent; refused before reading if it is implausibly large."""
    if name not in f.attrs:
        return None
    attribute = f.attrs.get_id(name)
    # Every attribute is one value; many variable-length strings could all point at one big string.
    if attribute.shape not in ((), (1,)):
        raise ModelFileError(f"{path}: attribute '{name}' holds an array of shape {attribute.shape}, not one value")
    size = attribute.get_storage_size()
    if size > MAX_ATTRIBUTE_BYTES:
        raise ModelFileError(f"{path}: attribute '{name}' holds {size} bytes, more than a model file's ever do")
    return f.attrs[name]


def _attr_str(f: h5py.File, name: str, path: Path) -> str:
    value = _attribute(f, name, path)
    if value is None:
        raise ModelFileError(f"{path}: missing attribute '{name}'")
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        raise ModelFileError(f"{path}: attribute '{name}' is not text")
    return value


def _attr_int(f: h5py.File, name: str, path: Path) -> int:
    value = _attribute(f, name, path)
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise ModelFileError(f"{path}: attribute '{name}' is missing or not an integer")
    return int(value)


def _dataset(f: h5py.File, key: str, path: Path, kind: str = "f") -> h5py.Dataset:
    """The dataset at `key`, its type and storage checked from metadata; nothing is read yet."""
    item = f.get(key)
    if not isinstance(item, h5py.Dataset):
        raise ModelFileError(f"{path}: missing dataset '{key}'")
    if item.dtype.kind not in kind or item.dtype.itemsize > 8:
        expected = "unsigned bytes" if kind == "u" else "numbers"
        raise ModelFileError(f"{path}: dataset '{key}' has type {item.dtype}, expected {expected}")
    if item.file != f or item.is_virtual or item.external:
        # An external link, a virtual dataset or external storage: its values would come from other
        # files on this machine, named by the model file.
        raise ModelFileError(f"{path}: dataset '{key}' refers to data outside the model file")
    if item.chunks is not None and math.prod(item.chunks) * item.dtype.itemsize > MAX_CHUNK_BYTES:
        raise ModelFileError(f"{path}: dataset '{key}' is stored in chunks of {item.chunks}, too large to read")
    return item


def _read_array(f: h5py.File, key: str, path: Path, shape, kind="f") -> np.ndarray:
    """Read `key` after checking, from metadata, that it has exactly `shape` and the right type."""
    item = _dataset(f, key, path, kind)
    if item.shape != tuple(shape):
        raise ModelFileError(
            f"{path}: '{key}' has shape {item.shape}, but the configuration needs {tuple(shape)}"
        )
    return item[()]


# What h5py raises for damaged internals (bad B-tree, truncated chunk, wrong types, ...).
_DAMAGE = (OSError, KeyError, ValueError, TypeError, RuntimeError, AttributeError, IndexError)


def read_header(path: str | os.PathLike) -> dict:
    """The file's metadata without building the model: what `mnistgui info` prints."""
    path = Path(path)
    try:
        with _open(path) as f:
            return _header(f, path)
    except ModelFileError:
        raise
    except _DAMAGE as exc:
        raise ModelFileError(f"{path}: damaged or truncated model file ({exc})") from None


def _open(path: Path) -> h5py.File:
    if not path.exists():
        raise ModelFileError(f"{path}: no such file")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder, not a model file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ModelFileError(f"{path}: not an HDF5 model file, or truncated ({exc})") from None


def _header(f: h5py.File, path: Path) -> dict:
    if _attribute(f, "format", path) not in (FORMAT_NAME, FORMAT_NAME.encode()):
        raise ModelFileError(f"{path}: an HDF5 file, but not an mnistgui model file")
    version = _attr_int(f, "format_version", path)
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: written in model format {version} by a newer mnistgui; this version reads "
            f"format {FORMAT_VERSION} and older"
        )
    if version < 1:
        raise ModelFileError(f"{path}: invalid format version {version}")
    try:
        config = Config.from_json(_attr_str(f, "config", path))
    except ConfigError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    try:
        versions = json.loads(_attr_str(f, "versions", path))
    except ValueError:
        versions = {}
    history_group = f.get("history")
    if not isinstance(history_group, h5py.Group):
        raise ModelFileError(f"{path}: missing group 'history'")
    epochs_done = _attr_int(f, "epochs_done", path)
    if not 0 <= epochs_done <= MAX_HISTORY_ROWS:
        raise ModelFileError(f"{path}: says {epochs_done} epochs done; a model file holds 0 to {MAX_HISTORY_ROWS}")
    present = [c for c in HISTORY_COLUMNS if c not in OPTIONAL_HISTORY_COLUMNS or f"history/{c}" in f]
    shapes = {c: _dataset(f, f"history/{c}", path).shape for c in present}
    if any(shape != (epochs_done,) for shape in shapes.values()):
        if len(set(shapes.values())) != 1:
            raise ModelFileError(f"{path}: history columns disagree in length")
        raise ModelFileError(
            f"{path}: says {epochs_done} epochs done but holds history of shape {shapes[HISTORY_COLUMNS[0]]}"
        )
    columns = {c: _read_array(f, f"history/{c}", path, (epochs_done,)) for c in present}
    per_class = (_read_array(f, "history/class_accuracy", path, (epochs_done, 10))
                 if "history/class_accuracy" in f else np.full((epochs_done, 10), np.nan))
    history = [
        EpochResult(**{c: float(columns[c][i]) for c in present}, class_accuracy=tuple(map(float, per_class[i])))
        for i in range(epochs_done)
    ]
    for result in history:
        result.epoch = int(result.epoch)
    training_state = _training_state(history_group, epochs_done, path)
    return {
        "config": config,
        "format_version": version,
        "epochs_done": epochs_done,
        "history": history,
        "dataset": _attr_str(f, "dataset", path),
        "dataset_digest": _attr_str(f, "dataset_digest", path),
        "versions": versions if isinstance(versions, dict) else {},
        "saved_at": _attr_str(f, "saved_at", path),
        "training_state": training_state,
    }


def _training_state(history_group, epochs_done: int, path: Path) -> dict:
    """Resumes' setting changes, the schedule's horizon and the best epoch; defaults for older files."""
    state = {"config_changes": [], "schedule_horizon": 0, "best_epoch": 0, "attack_rng": None}
    value = _attribute(history_group, "training_state", path)
    if value is None:
        return state
    try:
        stored = json.loads(value.decode() if isinstance(value, bytes) else value)
    except (ValueError, AttributeError):
        raise ModelFileError(f"{path}: history attribute 'training_state' is not valid JSON") from None
    if not isinstance(stored, dict) or not isinstance(stored.get("config_changes", []), list):
        raise ModelFileError(f"{path}: history attribute 'training_state' is not a JSON object of the right form")
    for key in ("schedule_horizon", "best_epoch"):
        number = stored.get(key, 0)
        if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number <= MAX_HISTORY_ROWS:
            raise ModelFileError(f"{path}: training_state's {key} is {number!r}, not an epoch count")
        state[key] = number
    if state["best_epoch"] > epochs_done:
        raise ModelFileError(f"{path}: best epoch {state['best_epoch']} is beyond the {epochs_done} epochs done")
    state["config_changes"] = stored.get("config_changes", [])
    attack_rng = stored.get("attack_rng")
    if attack_rng is not None:
        try:
            np.random.default_rng().bit_generator.state = attack_rng
        except (TypeError, ValueError, KeyError) as exc:
            raise ModelFileError(f"{path}: invalid training-attack RNG state ({exc})") from None
        state["attack_rng"] = attack_rng
    return state


def load_model(path: str | os.PathLike) -> tuple[Model, dict]:
    """Rebuild the model from `path`, checking every name, shape and type; returns (model, header)."""
    path = Path(path)
    try:
        with _open(path) as f:
            header = _header(f, path)
            config = header["config"]
            if config.model == "knn":
                images, labels = _read_knn_store(f, config, path)
                model = create_model(config)
                model.history = header["history"]
                model.fit(images, labels)
                return model, header
            _check_parameter_count(config, path)
            model = create_model(config)
            model.history = header["history"]
            _load_neural_state(f, model, path)
            model.set_training_state(header["training_state"])
    except ModelFileError:
        raise
    except _DAMAGE as exc:
        raise ModelFileError(f"{path}: damaged or truncated model file ({exc})") from None
    return model, header


def _read_knn_store(f: h5py.File, config: Config, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The stored training set, its size bounded by the training set the configuration names."""
    limit = TRAIN_SET_ROWS[config.dataset]
    if config.train_size:
        limit = min(limit, config.train_size)
    images = _dataset(f, "knn/images", path, kind="u")
    labels = _dataset(f, "knn/labels", path, kind="u")
    if images.ndim != 2 or images.shape[1] != IMAGE_PIXELS or images.dtype != np.uint8:
        raise ModelFileError(
            f"{path}: stored kNN images are {images.dtype} {images.shape}, expected uint8 N x {IMAGE_PIXELS}"
        )
    rows = images.shape[0]
    if not 1 <= rows <= limit:
        raise ModelFileError(
            f"{path}: stores {rows} kNN training images; its configuration allows 1 to {limit} "
            f"({config.dataset}, train_size {config.train_size or 'all'})"
        )
    if labels.shape != (rows,) or labels.dtype != np.uint8:
        raise ModelFileError(f"{path}: stored kNN labels are {labels.dtype} {labels.shape}, expected uint8 ({rows},)")
    images_array, labels_array = images[()], labels[()]
    if labels_array.max() > 9:
        raise ModelFileError(f"{path}: stored kNN labels outside 0..9")
    return images_array, labels_array


def _check_parameter_count(config: Config, path: Path) -> None:
    """Refuse a configuration whose weights alone would be too large to build, before building them."""
    count = parameter_count(config)
    if count > MAX_PARAMETERS:
        raise ModelFileError(
            f"{path}: its configuration needs {count:,} parameters; mnistgui loads at most {MAX_PARAMETERS:,}"
        )


def _check_names(group, expected: list[str], what: str, path: Path, model_name: str) -> None:
    present = sorted(group.keys()) if isinstance(group, h5py.Group) else []
    missing = [n for n in expected if n not in present]
    extra = [n for n in present if n not in expected]
    if missing:
        raise ModelFileError(f"{path}: missing {what} {', '.join(missing)}")
    if extra:
        raise ModelFileError(f"{path}: unexpected {what} {', '.join(extra)} for a {model_name} model")


def _load_neural_state(f: h5py.File, model: NeuralModel, path: Path) -> None:
    name = model.config.model
    _check_names(f.get("params"), list(model.params), "parameter", path, name)
    _check_names(f.get("optimizer"), list(model.optimizer_state), "optimizer state", path, name)
    state = {"params": {}, "optimizer": {}, "rng": None}
    for name, shared in model.params.items():
        value = _read_array(f, f"params/{name}", path, shared.get_value().shape)
        if not np.all(np.isfinite(value)):
            raise ModelFileError(f"{path}: parameter {name} holds NaN or infinite values")
        state["params"][name] = value
    for name, shared in model.optimizer_state.items():
        state["optimizer"][name] = _read_array(f, f"optimizer/{name}", path, np.shape(shared.get_value()))
    try:
        rng_state = json.loads(_attr_str(f, "rng_state", path))
    except ValueError:
        raise ModelFileError(f"{path}: attribute 'rng_state' is not valid JSON") from None
    if model.rng is not None:
        if not isinstance(rng_state, dict):
            raise ModelFileError(f"{path}: missing the dropout RNG state")
        try:
            np.random.default_rng().bit_generator.state = rng_state
        except (TypeError, ValueError, KeyError) as exc:
            raise ModelFileError(f"{path}: invalid dropout RNG state ({exc})") from None
        state["rng"] = rng_state
    model.set_state(state)
