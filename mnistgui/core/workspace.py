"""The session's runs, their predictions and weight snapshots, and the datasets they use: Qt-free.

The window and the command line share it: `open_model`, `evaluate` and `resume` are the same code
for `mnistgui evaluate`, `mnistgui train --resume` and the window's Open and Resume training.

Threads: methods that load or compute (`dataset`, `load_run`, `predict`, `evaluate`, `save`,
`layer_function`, and a `TrainingJob`'s `compile` and `train`) run in the caller's thread, so the
window calls them from a worker. Methods that change the registry (`add_run`, `record_epoch`,
`set_predictions`, `resume`, ...) are called from one thread (the window's GUI thread) and notify
the subscribers synchronously, with small immutable events. A model object never leaves the thread
that built it: a run keeps its state as arrays, and a `TrainingJob` builds its own model.
"""

from __future__ import annotations

import csv
import itertools
import shutil
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import data as data_module
from .config import MODEL_TITLES, Config, config_changes, resume_config
from .data import Dataset
from .errors import ConfigError, MnistguiError, ModelFileError
from .training import (BatchProgress, EpochResult, Evaluation, KnnModel, Model, NeuralModel, Trainer,
                       TrainingControl, create_model)

LayerFunction = Callable[[dict, np.ndarray], "OrderedDict[str, np.ndarray]"]


# --- snapshots -------------------------------------------------------------------------------------


class SnapshotStore:
    """A run's weights after each epoch, on disk (one HDF5 group per epoch), one set in memory.

    A sequence of (epoch, weights). `append` may be called from a worker thread while the GUI
    thread reads: a lock serialises file access. The set last appended or read stays in memory,
    the one the epoch slider shows.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.epochs: list[int] = []
        self._lock = threading.Lock()
        self._cached: tuple[int, dict[str, np.ndarray]] | None = None  # (index, weights)

    def append(self, epoch: int, weights: dict[str, np.ndarray]) -> None:
        import h5py

        weights = OrderedDict((name, np.asarray(value)) for name, value in weights.items())
        with self._lock, h5py.File(self.path, "a") as f:
            name = str(len(self.epochs))
            if name in f:  # left by an append that failed half-way
                del f[name]
            group = f.create_group(name)
            group.attrs["epoch"] = epoch
            group.attrs["order"] = list(weights)
            for key, value in weights.items():
                group.create_dataset(key, data=value)
            self.epochs.append(epoch)
            self._cached = (len(self.epochs) - 1, weights)

    def __len__(self) -> int:
        return len(self.epochs)

    def __getitem__(self, index: int) -> tuple[int, dict[str, np.ndarray]]:
        import h5py

        with self._lock:
            count = len(self.epochs)
            if not -count <= index < count:
                raise IndexError(f"snapshot {index} of {count}")
            index %= count
            if self._cached is None or self._cached[0] != index:
                with h5py.File(self.path, "r") as f:
                    group = f[str(index)]
                    order = [str(n) for n in group.attrs["order"]]
                    self._cached = (index, OrderedDict((n, group[n][()]) for n in order))
            return self.epochs[index], self._cached[1]

    @property
    def bytes_in_memory(self) -> int:
        return sum(v.nbytes for v in self._cached[1].values()) if self._cached else 0

    def remove(self) -> None:
        with self._lock:
            self._cached = None
            self.path.unlink(missing_ok=True)


# --- runs and events -------------------------------------------------------------------------------


@dataclass(eq=False)
class Run:
    """One training run of the session, or a model opened from a file.

    `state` is the model at its latest epoch as arrays (parameters, optimizer state, RNG; for kNN
    its training set): what a model file stores and what resuming starts from.
    """

    config: Config
    dataset: Dataset  # the subset it trains and is evaluated on
    snapshots: SnapshotStore
    history: list[EpochResult] = field(default_factory=list)
    state: dict | None = None
    test_probs: np.ndarray | None = None
    path: str | None = None
    key: int = 0  # given when the run joins a workspace
    color_index: int = 0
    backend: str = "numpy"
    _built: tuple[int, Model] | None = field(default=None, repr=False)  # (thread, model) from load_run

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    @property
    def name(self) -> str:
        label = Path(self.path).name if self.path else f"run {self.key}"
        return f"{label}: {MODEL_TITLES[self.config.model]}"

    def evaluation(self) -> Evaluation | None:
        if self.test_probs is None:
            return None
        return Evaluation(self.test_probs, np.asarray(self.dataset.test_labels, dtype=np.int64))


@dataclass(frozen=True)
class RunAdded:
    run: Run


@dataclass(frozen=True)
class RunChanged:
    """The run's name, path or configuration changed."""

    run: Run


@dataclass(frozen=True)
class EpochAdded:
    run: Run
    result: EpochResult


@dataclass(frozen=True)
class PredictionsReady:
    run: Run


@dataclass(frozen=True)
class EpochOutcome:
    """What one finished epoch hands back from the training thread: arrays and results only."""

    result: EpochResult
    test_probs: np.ndarray
    state: dict | None


def model_state(model: Model) -> dict:
    if isinstance(model, KnnModel):
        return {"knn_images": model.train_images, "knn_labels": model.train_labels}
    return model.get_state()


def build_model(config: Config, history: list[EpochResult], state: dict | None) -> Model:
    """A fresh model in the caller's thread (graph, gradient), at `state`."""
    model = create_model(config)
    model.history = list(history)
    if state is not None:
        if isinstance(model, KnnModel):
            model.fit(state["knn_images"], state["knn_labels"])
        else:
            model.set_state(state)
    return model


def precompile(config: Config) -> float:
    """Compile `config`'s training and prediction functions over a few blank images, in the caller's
    thread, and throw them away: PyTensor keeps the compiled C modules, and Numba's code, in its on-disk
    cache, so a run of this configuration started later compiles warm (the convnet from empty caches:
    6-11 s under c, 40-50 s under numba; warm: about 1 s). The Trainer hands compiled functions read-only
    data, these blank images included, so Numba compiles the very versions a run calls. The seconds it
    took; nearest neighbours has nothing to compile.
    """
    if not config.is_trainable:
        return 0.0
    n = config.batch_size
    blank_images, blank_labels = np.zeros((n, 28, 28), dtype=np.uint8), np.zeros(n, dtype=np.uint8)
    blank = Dataset(config.dataset, blank_images, blank_labels, blank_images[:1], blank_labels[:1],
                    source="blank images, for compiling", digest="")
    unsized = config.replace(train_size=0, test_size=0, val_size=0, early_stop=0)
    return Trainer(create_model(unsized), blank).compile()


class TrainingJob:
    """Trains a run for some epochs. Everything runs in the caller's thread, model building included.

    `train` yields BatchProgress and EpochOutcome; whoever owns the workspace applies each outcome
    with `Workspace.record_epoch` (the window in its GUI thread; `Workspace.train` does both at once).
    """

    def __init__(self, run: Run, epochs: int, model: Model | None = None):
        self.run = run
        self.epochs = epochs
        self.config = run.config
        self.history = list(run.history)
        self.state = run.state
        self.dataset = run.dataset
        self.snapshots = run.snapshots
        self._model = model
        self.trainer: Trainer | None = None

    def compile(self) -> float:
        """Build the model and compile its functions; the seconds that took."""
        if self.trainer is None:
            model = self._model or build_model(self.config, self.history, self.state)
            self._model = None
            self.trainer = Trainer(model, self.dataset)
        return self.trainer.compile()

    def train(self, control: TrainingControl | None = None) -> Iterator[BatchProgress | EpochOutcome]:
        self.compile()
        model = self.trainer.model
        for item in self.trainer.train(self.epochs, control):
            if isinstance(item, EpochResult):
                if isinstance(model, NeuralModel):
                    self.snapshots.append(item.epoch, model.weights())
                probs = self.trainer.last_test_evaluation.probs.copy()
                yield EpochOutcome(item, probs, model_state(model))
            else:
                yield item


def warm_up() -> None:
    """Import and initialise now what a first compilation would (the compiler's module cache and
    its lazily imported modules, Numba's typing of the pooling kernels), in the caller's thread.

    The window calls it once before it shows, so that a worker's first compilation creates no
    long-lived objects for the garbage collector to scan while the window is up.
    """
    import pytensor.tensor as pt

    from . import backend
    from .ops import max_pool_grad_nhwc, max_pool_nhwc

    x = pt.vector("x", dtype="float32")
    backend.function([x], pt.exp(x) * np.float32(2), mode=backend.compile_mode(backend.resolve_backend("auto")))
    images = np.zeros((1, 2, 2, 1), dtype=np.float32)
    max_pool_grad_nhwc(images, max_pool_nhwc(images))


# --- the workspace ---------------------------------------------------------------------------------


class Workspace:
    """The session's runs and datasets. See the module docstring for which thread calls what."""

    def __init__(self, data_dir: str | None = None, preferred_data_dir: str | None = None,
                 allow_download: bool = False, download_progress=None, on_download=None):
        self.data_dir = data_dir  # a command (--data, tests): only this folder
        self.preferred_data_dir = preferred_data_dir  # a preference (the window's remembered folder)
        self.allow_download = allow_download  # when nothing is found where mnistgui looks
        self.download_progress = download_progress  # progress(file name, done, total)
        self.on_download = on_download  # on_download(dataset name, target folder), before it starts
        self.runs: list[Run] = []
        self._subscribers: list[Callable] = []
        self._datasets: dict[str, Dataset] = {}
        self._data_lock = threading.Lock()
        self._layer_functions: dict[str, LayerFunction] = {}
        self._store_numbers = itertools.count(1)
        self._folder = Path(tempfile.mkdtemp(prefix="mnistgui-snapshots-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self._folder), True)

    # --- events -------------------------------------------------------------------------------

    def subscribe(self, callback: Callable) -> Callable[[], None]:
        """Call `callback(event)` on every change; returns the function that unsubscribes."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    def _emit(self, event) -> None:
        for callback in list(self._subscribers):
            callback(event)

    # --- data (caller's thread) ---------------------------------------------------------------

    def cached_dataset(self, name: str) -> Dataset | None:
        return self._datasets.get(name)

    def dataset(self, name: str) -> Dataset:
        """The full dataset, loaded once. Raises DataNotFoundError or DataError."""
        with self._data_lock:
            if name not in self._datasets:
                try:
                    self._datasets[name] = self._load(name)
                except data_module.DataNotFoundError as exc:
                    exc.dataset_name = name  # for whoever offers to find it
                    raise
            return self._datasets[name]

    def _load(self, name: str) -> Dataset:
        try:
            return data_module.load_dataset(name, self.data_dir, preferred_dir=self.preferred_data_dir)
        except data_module.DataNotFoundError:
            if self.data_dir is not None or not self.allow_download:
                raise
        target = data_module.default_download_dir(name)
        if self.on_download is not None:
            self.on_download(name, target)
        try:
            data_module.fetch_dataset(name, target, progress=self.download_progress)
        except data_module.DownloadCancelled:
            raise
        except data_module.DataError as exc:  # offline: the mirrors' errors alone would not say what to do
            raise data_module.DataNotFoundError(
                data_module.not_found_message(name, self.data_dir, self.preferred_data_dir, download_error=str(exc))
            ) from None
        return data_module.load_dataset(name, target)

    def set_data_folders(self, data_dir: str | None = None, preferred_data_dir: str | None = None) -> None:
        with self._data_lock:
            self.data_dir = data_dir
            self.preferred_data_dir = preferred_data_dir
            self._datasets.clear()

    # --- runs -----------------------------------------------------------------------------------

    def _store(self) -> SnapshotStore:
        return SnapshotStore(self._folder / f"run-{next(self._store_numbers)}.h5")

    def new_run(self, config: Config) -> Run:
        """A new run of `config`, added. Loads the dataset if needed (caller's thread)."""
        return self.add_run(self.prepare_run(config))

    def prepare_run(self, config: Config) -> Run:
        """A new run of `config`, not yet added: for a worker thread."""
        from .backend import resolve_backend

        config.validate()
        dataset = self.dataset(config.dataset).subset(config.train_size, config.test_size)
        backend = resolve_backend(config.backend) if config.is_trainable else "numpy"
        return Run(config, dataset, self._store(), backend=backend)

    def load_run(self, path: str) -> Run:
        """The run stored in the model file at `path`, not yet added: for a worker thread."""
        from .modelfile import load_model

        model, _header = load_model(path)
        config = model.config
        dataset = self.dataset(config.dataset).subset(config.train_size, config.test_size)
        run = Run(config, dataset, self._store(), history=list(model.history), state=model_state(model),
                  path=str(path), backend=getattr(model, "backend", "numpy"))
        if isinstance(model, NeuralModel):
            run.snapshots.append(model.epochs_done, model.weights())
        run._built = (threading.get_ident(), model)
        return run

    def add_run(self, run: Run) -> Run:
        run.key = len(self.runs) + 1
        run.color_index = run.key - 1
        self.runs.append(run)
        self._emit(RunAdded(run))
        return run

    def open_model(self, path: str) -> Run:
        """Read a model file and add its run (caller's thread)."""
        return self.add_run(self.load_run(path))

    def _take_model(self, run: Run) -> Model:
        """The model `load_run` built in this thread, once; else a fresh one."""
        built, run._built = run._built, None
        if built is not None and built[0] == threading.get_ident():
            return built[1]
        return build_model(run.config, run.history, run.state)

    def predict(self, run: Run, images: np.ndarray | None = None) -> np.ndarray:
        """Class probabilities for the run's test images (or `images`), in the caller's thread."""
        model = self._take_model(run)
        return model.predict_proba(run.dataset.test_images if images is None else images)

    def evaluate(self, run: Run, test_size: int | None = None) -> Evaluation:
        """The run's model on its test subset, or on the first `test_size` test images (0: all)."""
        dataset = run.dataset
        if test_size is not None:
            dataset = self.dataset(run.config.dataset).subset(0, test_size)
        probs = self.predict(run, dataset.test_images)
        return Evaluation(probs, np.asarray(dataset.test_labels, dtype=np.int64))

    def set_predictions(self, run: Run, probs: np.ndarray) -> None:
        run.test_probs = probs
        self._emit(PredictionsReady(run))

    # --- training ---------------------------------------------------------------------------------

    def training_job(self, run: Run, epochs: int | None = None) -> TrainingJob:
        """A job that trains `run` for `epochs` more epochs (default: its configuration's)."""
        built, run._built = run._built, None
        model = built[1] if built is not None and built[0] == threading.get_ident() else None
        return TrainingJob(run, run.config.epochs if epochs is None else epochs, model)

    def resume(self, run: Run, epochs: int, changes: dict | None = None) -> TrainingJob:
        """Apply the settings that may change between runs, then a job for `epochs` more epochs.

        Raises ConfigError naming any setting that may not change.
        """
        if not run.config.is_trainable:
            raise ConfigError("nearest neighbours has no epochs to resume")
        config = resume_config(run.config, {**(changes or {}), "epochs": epochs})
        changed = config_changes(run.config, config)
        if changed and run.state is not None:
            training = run.state.setdefault("training", {})
            training["config_changes"] = [*training.get("config_changes", []),
                                          {"after_epoch": run.epochs_done, "changes": changed}]
        if config != run.config:
            if (config.train_size, config.test_size) != (run.config.train_size, run.config.test_size):
                run.dataset = self.dataset(config.dataset).subset(config.train_size, config.test_size)
            if config.backend != run.config.backend:
                from .backend import resolve_backend

                run.backend = resolve_backend(config.backend)
            run.config = config
            run._built = None  # built for the old configuration
            self._emit(RunChanged(run))
        return self.training_job(run, epochs)

    def record_epoch(self, run: Run, outcome: EpochOutcome) -> None:
        """Apply one epoch a job finished: history, state, predictions."""
        if run.config.is_trainable:
            run.history.append(outcome.result)
        else:
            run.history = [outcome.result]
        run.state = outcome.state
        run.test_probs = outcome.test_probs
        self._emit(EpochAdded(run, outcome.result))
        self._emit(PredictionsReady(run))

    def train(self, job: TrainingJob, control: TrainingControl | None = None) -> Iterator[BatchProgress | EpochResult]:
        """Run `job` in this thread, recording each epoch; yields progress and results (the CLI's loop)."""
        for item in job.train(control):
            if isinstance(item, EpochOutcome):
                self.record_epoch(job.run, item)
                yield item.result
            else:
                yield item

    # --- files ------------------------------------------------------------------------------------

    def save(self, run: Run, path: str) -> Path:
        """Write the run's model file (caller's thread); the run then belongs to `path`."""
        from .modelfile import save_model

        if run.state is None:
            raise ModelFileError("nothing to save yet: the run has not finished an epoch")
        model = build_model(run.config, run.history, run.state)
        saved = save_model(model, path, run.dataset.name, run.dataset.digest)
        return saved

    def export_histories(self, path: str) -> None:
        """Every run's history as one CSV file."""
        try:
            with open(path, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["run", "model", "epoch", "train_error", "test_error", "cost", "seconds"])
                for run in self.runs:
                    for r in run.history:
                        writer.writerow([run.key, run.config.model, r.epoch, r.train_error, r.test_error, r.cost,
                                         r.seconds])
        except OSError as exc:
            raise MnistguiError(f"cannot write {path}: {exc.strerror or exc}") from None

    def set_path(self, run: Run, path: str) -> None:
        run.path = str(path)
        self._emit(RunChanged(run))

    # --- feature maps -------------------------------------------------------------------------------

    def cached_layer_function(self, config: Config) -> LayerFunction | None:
        return self._layer_functions.get(config.to_json())

    def layer_function(self, config: Config) -> LayerFunction:
        """`f(weights, images uint8 (n, 784)) -> OrderedDict of every named layer`, per configuration.

        May take a while (the caller's thread); cached.
        """
        key = config.to_json()
        if key not in self._layer_functions:
            from .models import LayerFunction

            self._layer_functions[key] = LayerFunction(config)
        return self._layer_functions[key]

    # --- closing ------------------------------------------------------------------------------------

    @property
    def snapshot_folder(self) -> Path:
        """Where the runs' snapshot files are kept until `close`."""
        return self._folder

    def close(self) -> None:
        """Remove the snapshot files."""
        self._cleanup()
