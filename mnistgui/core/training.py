"""Models with their state, and the Qt-free training loop.

`NeuralModel` holds a configured network: shared parameters, optimizer state, the dropout RNG and
the history. `train()` is a generator: it yields throttled `BatchProgress` and one `EpochResult`
per epoch, and honours pause and stop requests between batches. The CLI prints what it yields, the
GUI's worker thread emits it as signals.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytensor
import pytensor.tensor as pt

from . import backend, dropout_ops, pixel_products, softmax_ops
from .attacks import AdversarialTraining, Attacker, adversarial_training_cost
from .augment import Augmentation, augment
from .config import Config, config_changes
from .data import Dataset
from .errors import ConfigError, TrainingDiverged
from .knn import iter_nearest, nearest_neighbours, vote
from .layers import RngChain
from .memory import reuse_large_blocks
from .models import N_CLASSES, ExistingParameters, build_layers, check_size, init_parameters
from .ops import start_kernel_compilation
from .optimizers import make_updates
from .schedules import learning_rate_at

EVAL_CHUNK = 256  # images per prediction call: small enough to stay in cache (convnet: 2.0 s for 10k, 2.5 s at 1000)
PROGRESS_INTERVAL = 0.1  # seconds between BatchProgress reports
# Cross-entropy over 10 classes starts at ln 10 = 2.3. A stable log-sum-exp keeps a blown-up run's
# cost finite for a long time (1e16 is typical at a learning rate of 10), so past this the run is
# treated as diverged too, not only at NaN or infinity.
DIVERGED_COST = 1e4
AUGMENT_STREAM = 7  # keeps the augmentation's draws apart from the shuffling's, which use [seed, epoch]
# Adversarial training's guard against catastrophic overfitting (Wong et al. 2020: an FGSM-trained
# model can lose all robustness to PGD within one epoch while its FGSM accuracy soars). After each
# epoch, PGD attacks a fixed check batch; a fall of COLLAPSE_DROP below the best epoch's accuracy
# stops the run and restores that epoch's weights.
ROBUST_CHECK_SIZE = 500
ROBUST_CHECK_STEPS = 10
COLLAPSE_DROP = 0.3
# Settings that change what the check measures.
ROBUST_CHECK_SETTINGS = frozenset({"adv_eps", "adv_training", "val_size", "dataset"})
ROBUST_CHECK_STREAM = 11


@dataclass
class BatchProgress:
    epoch: int  # 1-based, counting every epoch the model has trained
    batch: int  # batches done in this epoch
    n_batches: int
    cost: float  # mean cost so far this epoch
    seconds: float  # training time so far this epoch, pauses excluded
    images_per_second: float

    @property
    def fraction(self) -> float:
        return self.batch / self.n_batches if self.n_batches else 1.0

    @property
    def eta_seconds(self) -> float:
        if not self.batch:
            return math.nan
        return self.seconds * (self.n_batches - self.batch) / self.batch


@dataclass
class EpochResult:
    epoch: int
    train_error: float  # fraction misclassified on the training set, dropout off; NaN for kNN
    test_error: float
    cost: float  # mean training cost over the epoch (NaN for kNN)
    seconds: float  # training time, evaluation excluded
    images_per_second: float
    eval_seconds: float = 0.0
    val_error: float = math.nan  # on the held-out validation split, when there is one
    learning_rate: float = math.nan  # at the epoch's last step (schedules change it)
    class_accuracy: tuple[float, ...] = (math.nan,) * 10  # test accuracy of each class
    robust_accuracy: float = math.nan  # adversarial training: PGD accuracy on the check batch


@dataclass
class Evaluation:
    """Predictions on a set of images, with what the gallery and the confusion matrix need."""

    probs: np.ndarray  # (n, 10) float32
    labels: np.ndarray  # (n,) int

    @property
    def predictions(self) -> np.ndarray:
        return np.argmax(self.probs, axis=1)

    @property
    def error(self) -> float:
        return float(np.mean(self.predictions != self.labels)) if len(self.labels) else math.nan

    @property
    def confidence(self) -> np.ndarray:
        return self.probs.max(axis=1)

    @property
    def losses(self) -> np.ndarray:
        """Per-example cross-entropy of the true class."""
        p = self.probs[np.arange(len(self.labels)), self.labels]
        return -np.log(np.clip(p, 1e-12, 1.0))

    def confusion(self) -> np.ndarray:
        """(true, predicted) counts."""
        matrix = np.zeros((N_CLASSES, N_CLASSES), dtype=np.int64)
        np.add.at(matrix, (self.labels, self.predictions), 1)
        return matrix

    def per_class_accuracy(self) -> np.ndarray:
        matrix = self.confusion()
        totals = matrix.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(totals > 0, np.diag(matrix) / np.maximum(totals, 1), np.nan)


class TrainingControl:
    """Requests from another thread, read by the training loop between batches."""

    def __init__(self):
        self._running = threading.Event()
        self._running.set()
        self.stop_requested = False
        self.stop_after_epoch = False

    def pause(self):
        self._running.clear()

    def resume(self):
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def stop(self):
        self.stop_requested = True
        self._running.set()

    def wait_while_paused(self) -> float:
        """Block while paused; returns the seconds spent waiting."""
        if self._running.is_set():
            return 0.0
        start = time.perf_counter()
        self._running.wait()
        return time.perf_counter() - start


def _as_images(images: np.ndarray) -> np.ndarray:
    """(n, 784) uint8, contiguous, read-only."""
    return backend.read_only(np.ascontiguousarray(images.reshape(len(images), -1), dtype=np.uint8))


def _as_labels(labels: np.ndarray) -> np.ndarray:
    return backend.read_only(np.asarray(labels, dtype=np.int32))


class NeuralModel:
    """One of the four trained models: symbolic graph, shared state, history."""

    def __init__(self, config: Config):
        config.validate()
        if not config.is_trainable:
            raise ValueError("use KnnModel for knn")
        check_size(config)
        reuse_large_blocks()
        self.config = config
        self.history: list[EpochResult] = []
        # Each resume that changed settings: {"after_epoch": n, "changes": {name: [old, new]}}.
        self.config_changes: list[dict] = []
        # Epochs the learning-rate schedule spans, fixed when training starts, so a resumed run
        # follows the same rates; and the epoch early stopping restored (0: none).
        self.schedule_horizon = 0
        self.best_epoch = 0
        dropout_used = config.input_dropout or config.hidden_dropout or config.conv_dropout
        self.rng = RngChain(config.seed + 1) if dropout_used else None
        # A shared scalar, so that a schedule or a resumed run changes it without recompiling.
        self.learning_rate = pytensor.shared(np.float32(config.learning_rate), name="learning_rate")

        # Pixels arrive as uint8 and are scaled inside the graph: a quarter of the memory traffic.
        self.images = pt.matrix("images", dtype="uint8")
        self.labels = pt.ivector("labels")
        # Whether the compiled functions multiply the pixels with pixel_products' kernels (backend.kernel_cores).
        self.runs_pixel_products = False
        pixels = pt.cast(self.images, "float32") * np.float32(1.0 / 255.0)
        # The training and prediction graphs are twins over the same shared weights: dropout on, off.
        self.params = init_parameters(config)
        self.layers = build_layers(pixels, ExistingParameters(self.params, config.use_bias), config, None)
        # The training cost, over the batch attacked first when adversarial training is on.
        self.adversarial = AdversarialTraining.from_config(config)
        self.attack_rng = RngChain(config.seed + 2, name="attack_rng") if self.adversarial.active else None
        self.cost = adversarial_training_cost(self, pixels, self.labels, self.adversarial, self.attack_rng, self.rng)
        updates, self.optimizer_state = make_updates(self.cost, self.params, config, self.learning_rate)
        for chain in (self.rng, self.attack_rng):
            if chain is not None and chain.used:
                updates.append(chain.update)
        self.updates = updates
        self._predict = None
        self._layer_fn = None
        self.backend = backend.resolve_backend(config.backend)

    def reconfigured(self, config: Config) -> NeuralModel:
        """This model, its weights, optimizer state, dropout stream and history, under `config`.

        `config` comes from `resume_config`, which allows only the settings that may change between
        runs; the graph is rebuilt, since dropout rates and optimizer constants are part of it.
        """
        changes = config_changes(self.config, config)
        if not changes:
            self.config = config
            return self
        model = NeuralModel(config)
        model.set_state(self.get_state())
        model.history = list(self.history)
        model.config_changes = [*self.config_changes, {"after_epoch": self.epochs_done, "changes": changes}]
        return model

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    # --- state: what a model file stores and a rollback restores -------------------------------

    def get_state(self) -> dict:
        return {
            "params": OrderedDict((k, np.asarray(v.get_value())) for k, v in self.params.items()),  # JAX: not NumPy
            "optimizer": OrderedDict((k, np.asarray(v.get_value())) for k, v in self.optimizer_state.items()),
            "rng": self.rng.shared.get_value().bit_generator.state if self.rng else None,
            "training": {"config_changes": list(self.config_changes), "schedule_horizon": self.schedule_horizon,
                         "best_epoch": self.best_epoch,
                         "attack_rng": self.attack_rng.shared.get_value().bit_generator.state if self.attack_rng else None},
        }

    def set_state(self, state: dict) -> None:
        for name, value in state["params"].items():
            self.params[name].set_value(np.array(value, dtype=np.float32))
        for name, value in state["optimizer"].items():
            self.optimizer_state[name].set_value(np.array(value, dtype=np.float32))
        if self.rng is not None and state.get("rng") is not None:
            generator = np.random.default_rng()
            generator.bit_generator.state = state["rng"]
            self.rng.shared.set_value(generator)
        if "training" in state:
            self.set_training_state(state["training"])

    def set_training_state(self, training: dict) -> None:
        """Resumes' setting changes, the schedule's horizon, the best epoch, the training attack's draws."""
        self.config_changes = list(training.get("config_changes", []))
        self.schedule_horizon = training.get("schedule_horizon", 0)
        self.best_epoch = training.get("best_epoch", 0)
        if self.attack_rng is not None and training.get("attack_rng") is not None:
            generator = np.random.default_rng()
            generator.bit_generator.state = training["attack_rng"]
            self.attack_rng.shared.set_value(generator)

    # --- prediction ---------------------------------------------------------------------------

    def _mode(self):
        return backend.compile_mode(self.backend)

    def compile_predict(self) -> float:
        start = time.perf_counter()
        if self._predict is None:
            self._predict = backend.function([self.images], self.layers["probs"], mode=self._mode())
            self.runs_pixel_products |= pixel_products.used_by(self._predict)
        return time.perf_counter() - start

    def predict_proba(self, images: np.ndarray, chunk: int = EVAL_CHUNK) -> np.ndarray:
        self.compile_predict()
        images = _as_images(images)
        out = np.empty((len(images), N_CLASSES), dtype=np.float32)
        with backend.kernel_cores(self):
            for start in range(0, len(images), chunk):
                out[start : start + chunk] = self._predict(images[start : start + chunk])
        return out

    def evaluate(self, images: np.ndarray, labels: np.ndarray) -> Evaluation:
        return Evaluation(self.predict_proba(images), np.asarray(labels, dtype=np.int64))

    def layer_outputs(self, images: np.ndarray) -> OrderedDict[str, np.ndarray]:
        """Every named layer for a few images: what the feature-map viewer shows."""
        if self._layer_fn is None:
            names = list(self.layers)
            fn = backend.function([self.images], [self.layers[n] for n in names], mode=self._mode())
            self._layer_fn = (names, fn)
        names, fn = self._layer_fn
        return OrderedDict(zip(names, fn(_as_images(images))))

    def weights(self) -> OrderedDict[str, np.ndarray]:
        return OrderedDict((k, np.asarray(v.get_value())) for k, v in self.params.items())


class KnnModel:
    """Exact k-nearest-neighbours: 'training' stores the training set."""

    def __init__(self, config: Config):
        config.validate()
        self.config = config
        self.history: list[EpochResult] = []
        self.train_images = np.zeros((0, 784), dtype=np.uint8)
        self.train_labels = np.zeros(0, dtype=np.uint8)
        self.backend = "numpy"

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    def fit(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.train_images = _as_images(images)
        self.train_labels = np.asarray(labels, dtype=np.uint8)

    def _check_fitted(self):
        if not len(self.train_images):
            raise ValueError("the kNN model has no training set yet")

    def probs_from_neighbours(self, indices: np.ndarray) -> np.ndarray:
        return vote(self.train_labels[indices].astype(np.int64))[0]

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        self._check_fitted()
        indices, _ = nearest_neighbours(_as_images(images), self.train_images, self.config.k)
        return self.probs_from_neighbours(indices)

    def iter_predict_proba(self, images: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """(start, probs) chunk by chunk, so a caller can report progress and stop early."""
        self._check_fitted()
        for start, indices, _ in iter_nearest(_as_images(images), self.train_images, self.config.k):
            yield start, self.probs_from_neighbours(indices)

    def evaluate(self, images: np.ndarray, labels: np.ndarray) -> Evaluation:
        return Evaluation(self.predict_proba(images), np.asarray(labels, dtype=np.int64))


Model = NeuralModel | KnnModel


def create_model(config: Config) -> Model:
    return KnnModel(config) if config.model == "knn" else NeuralModel(config)


class Trainer:
    """Binds a model to a dataset, compiles once, and trains epoch by epoch."""

    def __init__(self, model: Model, dataset: Dataset):
        self.model = model
        self.dataset = dataset
        self.train_images = _as_images(dataset.train_images)
        self.train_labels = _as_labels(dataset.train_labels)
        held_out = model.config.val_size if model.config.is_trainable else 0
        if held_out >= len(self.train_images):
            raise ConfigError(f"val_size ({held_out}) leaves no training images out of {len(self.train_images)}")
        # The validation split is the end of the training set, so it never depends on the seed.
        split = len(self.train_images) - held_out
        self.val_images, self.val_labels = self.train_images[split:], self.train_labels[split:]
        self.train_images, self.train_labels = self.train_images[:split], self.train_labels[:split]
        self.augmentation = Augmentation.from_config(model.config) if model.config.is_trainable else Augmentation()
        self.test_images = _as_images(dataset.test_images)
        self.test_labels = _as_labels(dataset.test_labels)
        self._train_fn = None
        self._epoch_data_changed = False
        self.early_stopped = False
        self.stop_note = ""  # why the run stopped before its last epoch, when it did, for the user
        self._attacker: Attacker | None = None
        self.compile_seconds = math.nan
        self.last_test_evaluation: Evaluation | None = None  # of the latest epoch, for viewers

    @property
    def n_batches(self) -> int:
        return math.ceil(len(self.train_images) / self.model.config.batch_size)

    def compile(self) -> float:
        """Compile the training and prediction functions once; returns the seconds it took."""
        if isinstance(self.model, KnnModel) or self._train_fn is not None:
            return 0.0 if isinstance(self.model, KnnModel) else self.compile_seconds
        model = self.model
        start = time.perf_counter()
        if model.backend == "c":  # the Numba kernels the c backend's Ops call
            softmax_ops.start_kernel_compilation()
            if model.config.model == "convnet":
                start_kernel_compilation()
            if dropout_ops.used_by([model.cost]):
                dropout_ops.start_kernel_compilation()
        # Data lives in shared variables and batches are slices by index: no per-step copies.
        self._images_shared = pytensor.shared(self.train_images, name="train_images", borrow=True)
        self._labels_shared = pytensor.shared(self.train_labels, name="train_labels", borrow=True)
        index = pt.iscalar("batch")
        size = model.config.batch_size
        batch = slice(index * size, (index + 1) * size)  # the last batch is simply shorter
        if model.backend == "jax":  # JAX traces static shapes: a slice by a traced index has none
            step = backend.function([model.images, model.labels], model.cost, updates=model.updates,
                                     mode=model._mode())
            self._train_fn = lambda b: step(*(v.get_value(borrow=True)[b * size : (b + 1) * size]
                                              for v in (self._images_shared, self._labels_shared)))
        else:
            self._train_fn = backend.function(
                [index],
                model.cost,
                updates=model.updates,
                givens={model.images: self._images_shared[batch], model.labels: self._labels_shared[batch]},
                mode=model._mode(),
            )
            model.runs_pixel_products |= pixel_products.used_by(self._train_fn)
        # The prediction graph's few modules of its own build while the kernels may still compile.
        model.compile_predict()
        # Numba compiles on the first call: make one step now and undo it, so that compile time
        # is reported as such and the first epoch's timing is the training alone.
        snapshot = model.get_state()
        self._train_fn(0)
        model.set_state(snapshot)
        model.predict_proba(self.test_images[:1])
        self.compile_seconds = time.perf_counter() - start
        return self.compile_seconds

    def _prepare_epoch(self, epoch: int) -> None:
        """Shuffle and augment the epoch's training images, from draws that depend on seed and epoch alone."""
        config = self.model.config
        images, labels = self.train_images, self.train_labels
        if config.shuffle:
            order = np.random.default_rng([config.seed, epoch]).permutation(len(images))
            images, labels = images[order], labels[order]
        if self.augmentation.active:
            images = augment(images, self.augmentation, np.random.default_rng([config.seed, epoch, AUGMENT_STREAM]))
        if config.shuffle or self.augmentation.active or self._epoch_data_changed:
            self._images_shared.set_value(backend.read_only(images), borrow=True)
            self._labels_shared.set_value(backend.read_only(labels), borrow=True)
        self._epoch_data_changed = config.shuffle or self.augmentation.active

    def evaluate_test(self) -> Evaluation:
        return self.model.evaluate(self.test_images, self.test_labels)

    def robust_check_batch(self) -> tuple[np.ndarray, np.ndarray, str]:
        """The images the guard attacks: from the validation split when there is one, else the first
        training images (Wong et al. check a training batch); never the test set."""
        if len(self.val_images):
            return self.val_images[:ROBUST_CHECK_SIZE], self.val_labels[:ROBUST_CHECK_SIZE], "validation"
        return self.train_images[:ROBUST_CHECK_SIZE], self.train_labels[:ROBUST_CHECK_SIZE], "training"

    def robust_accuracy(self, epoch: int) -> float:
        """PGD accuracy (ROBUST_CHECK_STEPS steps at the training eps, random start) on the check batch."""
        model = self.model
        if self._attacker is None:
            self._attacker = Attacker(model)
        images, labels, _ = self.robust_check_batch()
        attacked = self._attacker.pgd(images, labels, model.adversarial.eps, steps=ROBUST_CHECK_STEPS,
                                      rng=np.random.default_rng([model.config.seed, epoch, ROBUST_CHECK_STREAM]))
        return float(np.mean(self._attacker.predict(attacked) == labels))

    def train(self, epochs: int | None = None, control: TrainingControl | None = None,
              evaluate: bool = True) -> Iterator:
        """Train `epochs` more epochs (default: the configuration's), yielding progress and results.

        With `evaluate` False the epoch's errors are NaN: for timing the training alone.

        A stop request mid-epoch rolls the model back to the end of its last finished epoch, so a
        saved model is always at an epoch boundary and resumes exactly. A NaN or infinite cost does
        the same, then raises TrainingDiverged.
        """
        self.compile()  # first: kernel_cores asks which kernels the compiled functions run
        with backend.kernel_cores(self.model):
            yield from self._train(epochs, control, evaluate)

    def _train(self, epochs: int | None, control: TrainingControl | None, evaluate: bool) -> Iterator:
        control = control or TrainingControl()
        self.early_stopped, self.stop_note = False, ""
        if isinstance(self.model, KnnModel):
            yield from self._fit_knn(control)
            return
        self.compile()
        model = self.model
        config = model.config
        epochs = config.epochs if epochs is None else epochs
        if not model.schedule_horizon:
            model.schedule_horizon = model.epochs_done + epochs
        n_train = len(self.train_images)
        size = config.batch_size
        best_error = min((r.val_error for r in model.history if not math.isnan(r.val_error)), default=math.inf)
        best_state = None
        guarding = model.adversarial.active and evaluate
        # The baseline is the best check since the check last changed (its budget, its images): a PGD
        # accuracy at eps 0.3 is no collapse from one measured at 0.1.
        since = max((c["after_epoch"] for c in model.config_changes if ROBUST_CHECK_SETTINGS & set(c["changes"])),
                    default=0)
        best_robust = max(((r.robust_accuracy, r.epoch) for r in model.history[since:] if not math.isnan(r.robust_accuracy)),
                          default=(-math.inf, 0))
        best_robust_state = None
        for _ in range(epochs):
            epoch = model.epochs_done + 1
            snapshot = model.get_state()
            self._prepare_epoch(epoch)
            cost_sum, seen, seconds = 0.0, 0, 0.0
            last_report = time.perf_counter()
            first_step = (epoch - 1) * self.n_batches
            learning_rate = config.learning_rate
            for batch in range(self.n_batches):
                if control.stop_requested:
                    model.set_state(snapshot)
                    return
                control.wait_while_paused()
                if control.stop_requested:
                    model.set_state(snapshot)
                    return
                learning_rate = learning_rate_at(config, first_step + batch, self.n_batches, model.schedule_horizon)
                model.learning_rate.set_value(np.float32(learning_rate))
                started = time.perf_counter()
                with np.errstate(all="ignore"):  # a diverging run is reported below, not warned about
                    cost = float(self._train_fn(batch))
                seconds += time.perf_counter() - started
                if not math.isfinite(cost) or cost > DIVERGED_COST:
                    model.set_state(snapshot)
                    raise TrainingDiverged(
                        f"training diverged: the cost became {cost:.4g} at epoch {epoch}, batch {batch + 1} "
                        f"of {self.n_batches}; the model was rolled back to the end of epoch {epoch - 1}. "
                        f"Try a smaller learning rate (now {learning_rate:.4g})."
                    )
                batch_len = min(size, n_train - batch * size)
                cost_sum += cost * batch_len
                seen += batch_len
                now = time.perf_counter()
                if now - last_report >= PROGRESS_INTERVAL or batch + 1 == self.n_batches:
                    last_report = now
                    yield BatchProgress(epoch, batch + 1, self.n_batches, cost_sum / seen, seconds, seen / seconds)
            eval_start = time.perf_counter()
            train_error = test_error = val_error = math.nan
            class_accuracy = (math.nan,) * N_CLASSES
            if evaluate:
                train_error = model.evaluate(self.train_images, self.train_labels).error
                if len(self.val_images):
                    val_error = model.evaluate(self.val_images, self.val_labels).error
                self.last_test_evaluation = self.evaluate_test()
                test_error = self.last_test_evaluation.error
                class_accuracy = tuple(float(v) for v in self.last_test_evaluation.per_class_accuracy())
            robust_accuracy = self.robust_accuracy(epoch) if guarding else math.nan
            result = EpochResult(
                epoch=epoch,
                train_error=train_error,
                test_error=test_error,
                cost=cost_sum / seen,
                seconds=seconds,
                images_per_second=seen / seconds,
                eval_seconds=time.perf_counter() - eval_start,
                val_error=val_error,
                learning_rate=learning_rate,
                class_accuracy=class_accuracy,
                robust_accuracy=robust_accuracy,
            )
            model.history.append(result)
            if not math.isnan(val_error) and val_error < best_error:
                best_error, model.best_epoch = val_error, epoch
                best_state = model.get_state() if config.early_stop else None
            collapsed = guarding and robust_accuracy < best_robust[0] - COLLAPSE_DROP
            if guarding and robust_accuracy > best_robust[0]:
                best_robust = (robust_accuracy, epoch)
                best_robust_state = model.get_state()
            yield result
            if collapsed:
                # Restores the best robust epoch's weights if this run holds them (a resumed run may not).
                if best_robust_state is not None:
                    model.set_state(best_robust_state)  # best_epoch too: the best validation up to there
                self.early_stopped = True
                self.stop_note = (
                    f"catastrophic overfitting: PGD accuracy on the {self.robust_check_batch()[2]} check batch fell to "
                    f"{robust_accuracy:.1%} at epoch {epoch} from {best_robust[0]:.1%} at epoch {best_robust[1]}; "
                    + (f"restored epoch {best_robust[1]}" if best_robust_state is not None else "stopped")
                    + ". Try a smaller step (--adv-step), eps or learning rate, or PGD training.")
                return
            if config.early_stop and model.best_epoch and epoch - model.best_epoch >= config.early_stop:
                if best_state is not None:
                    model.set_state(best_state)
                self.early_stopped = True
                best = model.history[model.best_epoch - 1]
                self.stop_note = (f"early stop: no better validation error for {config.early_stop} epochs; restored "
                                  f"epoch {model.best_epoch} (val error {best.val_error:.2%}, test error "
                                  f"{best.test_error:.2%})")
                return
            if control.stop_requested or control.stop_after_epoch:
                return

    def _fit_knn(self, control: TrainingControl) -> Iterator:
        model = self.model
        start = time.perf_counter()
        model.fit(self.train_images, self.train_labels)
        n_test = len(self.test_images)
        probs = np.empty((n_test, N_CLASSES), dtype=np.float32)
        done = 0
        for first, chunk_probs in model.iter_predict_proba(self.test_images):
            probs[first : first + len(chunk_probs)] = chunk_probs
            done = first + len(chunk_probs)
            elapsed = time.perf_counter() - start
            yield BatchProgress(1, done, n_test, math.nan, elapsed, done / max(elapsed, 1e-9))
            control.wait_while_paused()
            if control.stop_requested:
                return
        seconds = time.perf_counter() - start
        self.last_test_evaluation = Evaluation(probs, self.test_labels.astype(np.int64))
        error = self.last_test_evaluation.error
        result = EpochResult(1, math.nan, error, math.nan, seconds, n_test / seconds, 0.0)
        model.history = [result]
        yield result
