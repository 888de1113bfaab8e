"""Run configuration: one table of settings, from which everything else is made.

Each `Setting` is declared once, here: its name, type, range, default (per model where the notebook
differs), label, help, which models and optimizers use it, its command-line flag, and whether it may
change between runs of the same model (`changeable`) or is fixed by the graph and the weights.
`Config` (the dataclass), `Config.validate`, the window's configuration panel and the command line's
`train` options are all generated from `SETTINGS`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .schedules import SCHEDULE_TITLES

MODEL_TITLES = {
    "knn": "Nearest neighbours",
    "logreg": "Logistic regression",
    "mlp": "Sigmoid MLP",
    "dropout_mlp": "Dropout ReLU MLP",
    "convnet": "Convnet",
}
MODELS = tuple(MODEL_TITLES)
TRAINED_MODELS = frozenset(MODELS) - {"knn"}
OPTIMIZER_TITLES = {"sgd": "SGD", "momentum": "Momentum", "nesterov": "Nesterov", "rmsprop": "RMSprop", "adam": "Adam"}
OPTIMIZERS = tuple(OPTIMIZER_TITLES)
ACTIVATION_TITLES = {"sigmoid": "sigmoid", "relu": "ReLU", "tanh": "tanh"}
ACTIVATIONS = tuple(ACTIVATION_TITLES)
INIT_TITLES = {"normal": "normal N(0, std²)", "glorot": "Glorot uniform", "he": "He normal"}
INITS = tuple(INIT_TITLES)
DATASET_TITLES = {"mnist": "MNIST", "fashion": "Fashion-MNIST"}
DATASETS = tuple(DATASET_TITLES)
ADVERSARIAL_TITLES = {"off": "off", "fgsm": "FGSM, random start", "pgd": "PGD"}
BACKEND_TITLES = {
    "auto": "auto (c with a C++ compiler, else numba)",
    "c": "c: compiled C (CVM) + NumPy's BLAS",
    "numba": "numba: LLVM, no compiler needed",
    "jax": "jax: XLA, CPU or GPU",
}
BACKENDS = tuple(BACKEND_TITLES)

GROUPS = ("Data", "Model", "Optimizer", "Schedule", "Augmentation", "Adversarial", "Run")


@dataclass(frozen=True)
class Setting:
    """One configuration field, with everything the core, the window and the command line need."""

    name: str
    kind: str  # "int", "float", "bool", "choice" or "ints" (a comma-separated list of positive integers)
    default: Any
    label: str
    help: str
    group: str
    flag: str | None = None  # the command-line option; None: not an option of `train`
    aliases: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the range excludes `low`
    choices: dict[str, str] | None = None  # value -> title
    models: frozenset[str] = frozenset(MODELS)  # the models that use it
    optimizers: frozenset[str] | None = None  # None: whatever the optimizer
    active_when: Callable[[Any], str] | None = None  # given the Config, a reason it is unused, or ""
    per_model: dict[str, Any] = dataclasses.field(default_factory=dict)  # the notebook's other defaults
    lengths: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)  # "ints": (min, max) items per model
    changeable: bool = False  # may change when a trained model resumes; else fixed by graph and weights
    special_zero: str | None = None  # the window shows 0 as this text ("all")
    step: float = 1
    decimals: int = 0

    def default_for(self, model: str):
        return self.per_model.get(model, self.default)

    def unused_reason(self, config) -> str:
        """Why `config` ignores this setting ("" when it is used): the window greys it out with this."""
        if config.model not in self.models:
            return f"not used by {MODEL_TITLES[config.model].lower()}"
        if self.optimizers is not None and config.optimizer not in self.optimizers:
            return "only used by " + " and ".join(OPTIMIZER_TITLES[o] for o in OPTIMIZERS if o in self.optimizers)
        return self.active_when(config) if self.active_when else ""

    def describe_range(self) -> str:
        if self.kind == "choice":
            return ", ".join(self.choices)
        if self.kind in ("int", "float"):
            left = "(" if self.low_open else "["
            return f"{left}{_number(self.low)}, {_number(self.high)}]"
        if self.kind == "ints":
            return f"each in [{_number(self.low)}, {_number(self.high)}]"
        return ""


def _number(value) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _only_for_normal_init(config) -> str:
    return "" if config.init == "normal" else "only used by the normal initialisation"


def _only_for_schedules(*names):
    def reason(config) -> str:
        return "" if config.schedule in names else "only used by the " + " and ".join(names) + " schedule" + (
            "s" if len(names) > 1 else "")
    return reason


def _only_with_elastic(config) -> str:
    return "" if config.elastic_alpha > 0 else "only used with an elastic alpha above 0"


def _only_with_adversarial(config) -> str:
    return "" if config.adv_training != "off" else "only used with adversarial training"


def _only_with_pgd(config) -> str:
    return "" if config.adv_training == "pgd" else "only used by PGD adversarial training"


def _only_with_validation(config) -> str:
    return "" if config.val_size > 0 else "needs a validation split"


_TRAINED = TRAINED_MODELS
_WITH_HIDDEN = frozenset({"mlp", "dropout_mlp", "convnet"})

SETTINGS_LIST = [
    # --- data ---
    Setting("dataset", "choice", "mnist", "Dataset", "the data set to train and test on", "Data",
            flag="--dataset", choices=DATASET_TITLES),
    Setting("train_size", "int", 0, "Training images", "train on the first N training images (0: all)", "Data",
            flag="--train-size", low=0, high=60000, step=1000, special_zero="all", changeable=True),
    Setting("test_size", "int", 0, "Test images", "test on the first N test images (0: all)", "Data",
            flag="--test-size", low=0, high=10000, step=1000, special_zero="all", changeable=True),
    Setting("val_size", "int", 0, "Validation images", "hold out the last N training images to validate on "
            "(model selection and early stopping; 0: none, the test set is monitored as in the notebook)", "Data",
            flag="--val-size", low=0, high=30000, step=1000, special_zero="none", models=_TRAINED),
    # --- model ---
    Setting("model", "choice", "logreg", "Model", "which of the notebook's models", "Model",
            flag="--model", choices=MODEL_TITLES),
    Setting("k", "int", 1, "Neighbours (k)", "neighbours that vote, for knn", "Model",
            flag="-k", low=1, high=1000, models=frozenset({"knn"})),
    Setting("conv_filters", "ints", (), "Conv filters", "filters of each 3x3 conv layer, first 'full', then 'valid'",
            "Model", flag="--filters", low=1, high=1024, models=frozenset({"convnet"}),
            per_model={"convnet": (32, 64, 128)}, lengths={"convnet": (1, 4)}),
    Setting("hidden_sizes", "ints", (), "Hidden units", "units of each fully connected hidden layer", "Model",
            flag="--hidden", low=1, high=8192, models=_WITH_HIDDEN,
            per_model={"mlp": (625,), "dropout_mlp": (625, 625), "convnet": (625,)},
            lengths={"mlp": (1, 8), "dropout_mlp": (1, 8), "convnet": (1, 1)}),
    Setting("activation", "choice", "sigmoid", "Activation", "the hidden layers' nonlinearity", "Model",
            flag="--activation", choices=ACTIVATION_TITLES, models=_WITH_HIDDEN,
            per_model={"dropout_mlp": "relu", "convnet": "relu"}),
    Setting("input_dropout", "float", 0.0, "Input dropout", "probability of dropping each input pixel", "Model",
            flag="--input-dropout", low=0.0, high=0.95, step=0.05, decimals=2, models=frozenset({"dropout_mlp"}),
            per_model={"dropout_mlp": 0.2}, changeable=True),
    Setting("conv_dropout", "float", 0.0, "Conv dropout", "probability of dropping each unit after a pooling layer",
            "Model", flag="--conv-dropout", low=0.0, high=0.95, step=0.05, decimals=2, models=frozenset({"convnet"}),
            per_model={"convnet": 0.2}, changeable=True),
    Setting("hidden_dropout", "float", 0.0, "Hidden dropout", "probability of dropping each hidden unit", "Model",
            flag="--hidden-dropout", low=0.0, high=0.95, step=0.05, decimals=2, models=_WITH_HIDDEN,
            per_model={"dropout_mlp": 0.5, "convnet": 0.5}, changeable=True),
    Setting("use_bias", "bool", False, "Biases", "add a bias to every layer (the notebook has none)", "Model",
            flag="--bias", models=_TRAINED),
    Setting("init", "choice", "normal", "Initialisation", "how the weights are drawn", "Model",
            flag="--init", choices=INIT_TITLES, models=_TRAINED),
    Setting("init_std", "float", 0.01, "Init std", "standard deviation of the normal initialisation", "Model",
            flag="--init-std", low=0.0, high=10.0, low_open=True, step=0.005, decimals=4, models=_TRAINED,
            active_when=_only_for_normal_init),
    # --- optimizer ---
    Setting("optimizer", "choice", "sgd", "Optimizer", "the update rule", "Optimizer",
            flag="--optimizer", choices=OPTIMIZER_TITLES, models=_TRAINED,
            per_model={"dropout_mlp": "rmsprop", "convnet": "rmsprop"}),
    Setting("learning_rate", "float", 0.05, "Learning rate", "step size", "Optimizer",
            flag="--lr", aliases=("--learning-rate",), low=0.0, high=100.0, low_open=True, step=0.001, decimals=5,
            models=_TRAINED, per_model={"dropout_mlp": 0.001, "convnet": 0.001}, changeable=True),
    Setting("momentum", "float", 0.9, "Momentum", "velocity decay of momentum and Nesterov", "Optimizer",
            flag="--momentum", low=0.0, high=0.9999, step=0.05, decimals=4, models=_TRAINED,
            optimizers=frozenset({"momentum", "nesterov"}), changeable=True),
    Setting("rho", "float", 0.9, "RMSprop rho", "decay of RMSprop's running mean of g²", "Optimizer",
            flag="--rho", low=0.0, high=0.9999, step=0.05, decimals=4, models=_TRAINED,
            optimizers=frozenset({"rmsprop"}), changeable=True),
    Setting("epsilon", "float", 1e-6, "Epsilon", "added to the denominator of RMSprop and Adam", "Optimizer",
            flag="--epsilon", low=0.0, high=1.0, low_open=True, step=1e-6, decimals=8, models=_TRAINED,
            optimizers=frozenset({"rmsprop", "adam"}), changeable=True),
    Setting("beta1", "float", 0.9, "Adam beta1", "decay of Adam's first moment", "Optimizer",
            flag="--beta1", low=0.0, high=0.9999, step=0.01, decimals=4, models=_TRAINED,
            optimizers=frozenset({"adam"}), changeable=True),
    Setting("beta2", "float", 0.999, "Adam beta2", "decay of Adam's second moment", "Optimizer",
            flag="--beta2", low=0.0, high=0.99999, step=0.001, decimals=5, models=_TRAINED,
            optimizers=frozenset({"adam"}), changeable=True),
    Setting("weight_decay", "float", 0.0, "Weight decay", "decoupled weight decay of the weights, biases "
            "excepted, scaled by the learning rate (as AdamW)", "Optimizer", flag="--weight-decay", low=0.0,
            high=1.0, step=0.0001, decimals=6, models=_TRAINED, changeable=True),
    # --- schedule ---
    Setting("schedule", "choice", "constant", "Schedule", "how the learning rate changes over the run", "Schedule",
            flag="--schedule", choices=SCHEDULE_TITLES, models=_TRAINED, changeable=True),
    Setting("warmup_epochs", "float", 0.0, "Warm-up epochs", "epochs of linear warm-up (step, cosine), or of the "
            "rise (one-cycle; 0: 30% of the run)", "Schedule", flag="--warmup", low=0.0, high=100.0, step=0.5,
            decimals=2, models=_TRAINED, active_when=_only_for_schedules("step", "cosine", "onecycle"),
            changeable=True),
    Setting("step_epochs", "int", 10, "Step every (epochs)", "epochs between two decays of the step schedule",
            "Schedule", flag="--step-epochs", low=1, high=1000, models=_TRAINED,
            active_when=_only_for_schedules("step"), changeable=True),
    Setting("step_gamma", "float", 0.1, "Step factor", "factor of each decay of the step schedule", "Schedule",
            flag="--step-gamma", low=0.0, high=1.0, low_open=True, step=0.05, decimals=3, models=_TRAINED,
            active_when=_only_for_schedules("step"), changeable=True),
    Setting("early_stop", "int", 0, "Early stopping patience", "stop after N epochs without a better validation "
            "error and restore the best epoch's weights (0: off)", "Schedule", flag="--early-stop", low=0,
            high=1000, special_zero="off", models=_TRAINED, active_when=_only_with_validation, changeable=True),
    # --- augmentation ---
    Setting("augment_shift", "float", 0.0, "Random shift (px)", "shift each training image by up to this many "
            "pixels, each epoch anew", "Augmentation", flag="--shift", low=0.0, high=6.0, step=0.5, decimals=1,
            models=_TRAINED, changeable=True),
    Setting("augment_rotate", "float", 0.0, "Random rotation (°)", "rotate each training image by up to this "
            "many degrees", "Augmentation", flag="--rotate", low=0.0, high=45.0, step=1.0, decimals=1,
            models=_TRAINED, changeable=True),
    Setting("augment_scale", "float", 0.0, "Random scaling", "scale each training image by a factor in "
            "[1 - s, 1 + s]", "Augmentation", flag="--scale", low=0.0, high=0.5, step=0.05, decimals=2,
            models=_TRAINED, changeable=True),
    Setting("elastic_alpha", "float", 0.0, "Elastic alpha", "strength of elastic distortions (Simard et al. "
            "2003; about 34 in the paper; 0: off)", "Augmentation", flag="--elastic-alpha", low=0.0, high=100.0,
            step=1.0, decimals=1, models=_TRAINED, changeable=True),
    Setting("elastic_sigma", "float", 4.0, "Elastic sigma", "smoothness of the elastic distortions, in pixels",
            "Augmentation", flag="--elastic-sigma", low=0.5, high=20.0, step=0.5, decimals=1, models=_TRAINED,
            active_when=_only_with_elastic, changeable=True),
    # --- adversarial training ---
    Setting("adv_training", "choice", "off", "Adversarial training", "attack each training batch before the "
            "step: FGSM with a random start (Wong et al. 2020) or PGD (Madry et al. 2018)", "Adversarial",
            flag="--adv", choices=ADVERSARIAL_TITLES, models=_TRAINED, changeable=True),
    Setting("adv_eps", "float", 0.1, "Attack budget (eps)", "L-infinity budget of the training attack, pixels "
            "in [0, 1]", "Adversarial", flag="--adv-eps", low=0.0, high=0.5, step=0.05, decimals=3, models=_TRAINED,
            active_when=_only_with_adversarial, changeable=True),
    Setting("adv_step", "float", 0.0, "Attack step (x eps)", "step size as a multiple of eps (0: 1.25 for FGSM, "
            "2.5 / steps for PGD)", "Adversarial", flag="--adv-step", low=0.0, high=10.0, step=0.25, decimals=2,
            special_zero="auto", models=_TRAINED, active_when=_only_with_adversarial, changeable=True),
    Setting("adv_steps", "int", 7, "PGD steps", "steps of the PGD training attack", "Adversarial",
            flag="--adv-steps", low=1, high=100, models=_TRAINED, active_when=_only_with_pgd, changeable=True),
    Setting("adv_weight", "float", 1.0, "Adversarial share", "share of the cost taken on the attacked batch "
            "(1: attacked only, as Madry and Wong; 0.5: Goodfellow's mix)", "Adversarial", flag="--adv-weight",
            low=0.0, high=1.0, step=0.1, decimals=2, models=_TRAINED, active_when=_only_with_adversarial,
            changeable=True),
    # --- run ---
    Setting("batch_size", "int", 128, "Batch size", "images per update", "Run",
            flag="--batch-size", low=1, high=60000, step=32, models=_TRAINED, changeable=True),
    Setting("epochs", "int", 1, "Epochs", "epochs to train (with --resume: more epochs)", "Run",
            flag="--epochs", low=1, high=10000, models=_TRAINED, changeable=True),
    Setting("seed", "int", 42, "Seed", "seeds the initial weights, the dropout draws and the shuffling", "Run",
            flag="--seed", low=0, high=2**31 - 1),
    Setting("shuffle", "bool", False, "Shuffle each epoch", "shuffle the training set each epoch "
            "(the notebook walks it in file order)", "Run", flag="--shuffle", models=_TRAINED, changeable=True),
    Setting("backend", "choice", "auto", "Backend", "how PyTensor compiles the graph", "Run",
            flag="--backend", aliases=("--mode",), choices=BACKEND_TITLES, models=_TRAINED, changeable=True),
]
SETTINGS: dict[str, Setting] = {s.name: s for s in SETTINGS_LIST}
assert all(s.group in GROUPS for s in SETTINGS_LIST)

_PYTHON_TYPES = {"int": int, "float": float, "bool": bool, "choice": str, "ints": tuple}

_ConfigFields = dataclasses.make_dataclass(
    "_ConfigFields", [(s.name, _PYTHON_TYPES[s.kind], dataclasses.field(default=s.default)) for s in SETTINGS_LIST]
)


class Config(_ConfigFields):
    """Everything that defines a run, one field per entry of `SETTINGS`.

    `Config.for_model(name)` gives the notebook's settings of that model.
    """

    @classmethod
    def for_model(cls, model: str, **overrides) -> Config:
        """The notebook's configuration of `model`, with `overrides` applied and validated."""
        if model not in MODELS:
            raise ConfigError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
        unknown = sorted(set(overrides) - set(SETTINGS))
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(unknown)}")
        values = {s.name: s.default_for(model) for s in SETTINGS_LIST}
        values.update(overrides, model=model)
        config = cls(**values)
        config.validate()
        return config

    def replace(self, **changes) -> Config:
        return dataclasses.replace(self, **changes)

    @property
    def is_trainable(self) -> bool:
        """False for kNN, which has no epochs and no gradient."""
        return self.model in TRAINED_MODELS

    def used(self, name: str) -> bool:
        return not SETTINGS[name].unused_reason(self)

    def validate(self) -> None:
        """Raise ConfigError naming the first setting that is out of its range or does not fit the model."""
        for setting in SETTINGS_LIST:
            _check(setting, getattr(self, setting.name), self.model)
        if self.is_trainable and self.early_stop and not self.val_size:
            raise ConfigError("early_stop needs a validation split: give val_size (--val-size N)")
        if self.is_trainable and self.val_size and self.train_size and self.val_size >= self.train_size:
            raise ConfigError(f"val_size ({self.val_size}) must be smaller than train_size ({self.train_size})")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Config:
        """Parse and validate; unknown keys are an error, missing keys take the defaults."""
        try:
            raw = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"configuration is not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise ConfigError("configuration is not a JSON object")
        unknown = sorted(set(raw) - set(SETTINGS))
        if unknown:
            raise ConfigError(f"unknown configuration keys: {', '.join(unknown)}")
        for name, value in raw.items():
            if SETTINGS[name].kind == "ints":
                if not isinstance(value, list):
                    raise ConfigError(f"{name} must be a list")
                raw[name] = tuple(value)
        config = cls(**raw)
        config.validate()
        return config


def _check(setting: Setting, value, model: str) -> None:
    name = setting.name
    if setting.kind == "choice":
        if value not in setting.choices:
            raise ConfigError(f"{name} must be one of {', '.join(setting.choices)}, not {value!r}")
    elif setting.kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, not {value!r}")
    elif setting.kind == "ints":
        if not isinstance(value, tuple) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{name} must be a list of integers, not {value!r}")
        for item in value:
            if not setting.low <= item <= setting.high:
                raise ConfigError(f"{name}: {setting.describe_range()}, not {item}")
        if model in setting.lengths:
            least, most = setting.lengths[model]
            if not least <= len(value) <= most:
                count = f"exactly {least}" if least == most else f"{least} to {most}"
                raise ConfigError(f"{name}: {MODEL_TITLES[model].lower()} needs {count} layer"
                                  f"{'' if most == 1 else 's'}, not {len(value)}")
    else:
        numeric = (int,) if setting.kind == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric):
            raise ConfigError(f"{name} must be {'an integer' if setting.kind == 'int' else 'a number'}, not {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, not {value}")
        too_low = value <= setting.low if setting.low_open else value < setting.low
        if too_low or value > setting.high:
            raise ConfigError(f"{name} must be in {setting.describe_range()}, not {value}")


# The notebook's settings, cell by cell, as the table declares them.
NOTEBOOK_DEFAULTS: dict[str, dict] = {
    model: {s.name: s.per_model[model] for s in SETTINGS_LIST if model in s.per_model} for model in MODELS
}


def relevant_fields(model: str) -> set[str]:
    """The settings `model` uses, whatever the optimizer: `info` shows these."""
    return {s.name for s in SETTINGS_LIST if model in s.models}


def resume_config(config: Config, changes: dict) -> Config:
    """The configuration for more training of a model made with `config`.

    Settings that may change between runs (learning rate, batch size, dropout, epochs, ...) apply;
    asking to change one that the graph or the weights fix (the architecture, the optimizer, the
    seed, ...) is refused, naming each. Giving a fixed setting its current value is fine.
    """
    unknown = sorted(set(changes) - set(SETTINGS))
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(unknown)}")
    refused = [name for name, value in changes.items()
               if not SETTINGS[name].changeable and value != getattr(config, name)]
    if refused:
        described = ", ".join(f"{SETTINGS[n].flag or n} ({n})" for n in refused)
        raise ConfigError(
            f"cannot change {described} when resuming: fixed by the trained model's graph and weights; "
            "start a new run to change it"
        )
    resumed = config.replace(**changes)
    resumed.validate()
    return resumed


def config_changes(old: Config, new: Config) -> dict[str, list]:
    """{name: [old, new]} for each setting that differs, 'epochs' left out (it is how long, not how)."""
    return {s.name: [getattr(old, s.name), getattr(new, s.name)] for s in SETTINGS_LIST
            if s.name != "epochs" and getattr(old, s.name) != getattr(new, s.name)}
