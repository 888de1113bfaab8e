"""Run configuration: one dataclass, the notebook's values as defaults, validated in one place."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from .errors import ConfigError

MODELS = ("knn", "logreg", "mlp", "dropout_mlp", "convnet")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "rmsprop", "adam")
ACTIVATIONS = ("sigmoid", "relu", "tanh")
INITS = ("normal", "glorot", "he")
DATASETS = ("mnist", "fashion")
BACKENDS = ("auto", "numba", "c", "jax")

MODEL_TITLES = {
    "knn": "Nearest neighbours",
    "logreg": "Logistic regression",
    "mlp": "Sigmoid MLP",
    "dropout_mlp": "Dropout ReLU MLP",
    "convnet": "Convnet",
}


@dataclass
class Config:
    """Everything that defines a run. `Config.for_model(name)` gives the notebook's settings."""

    model: str = "logreg"
    dataset: str = "mnist"
    # Architecture.
    hidden_sizes: tuple[int, ...] = ()  # fully connected hidden layers (mlp, dropout_mlp, convnet)
    conv_filters: tuple[int, ...] = ()  # convnet: filters per 3x3 conv layer, first 'full', then 'valid'
    activation: str = "sigmoid"
    input_dropout: float = 0.0  # dropout_mlp: on the pixels
    conv_dropout: float = 0.0  # convnet: after each pooling layer
    hidden_dropout: float = 0.0  # on each fully connected hidden layer
    use_bias: bool = False  # the notebook has no biases
    init: str = "normal"
    init_std: float = 0.01  # for init == "normal": N(0, init_std^2), as in the notebook
    k: int = 1  # knn only
    # Optimisation.
    optimizer: str = "sgd"
    learning_rate: float = 0.05
    momentum: float = 0.9  # momentum and nesterov
    rho: float = 0.9  # rmsprop decay
    epsilon: float = 1e-6  # rmsprop and adam
    beta1: float = 0.9  # adam
    beta2: float = 0.999  # adam
    batch_size: int = 128
    epochs: int = 1
    seed: int = 42
    shuffle: bool = False  # the notebook walks the training set in file order
    train_size: int = 0  # 0 means all; else the first N examples
    test_size: int = 0
    backend: str = "auto"

    @classmethod
    def for_model(cls, model: str, **overrides) -> Config:
        """The notebook's configuration of `model`, with `overrides` applied."""
        if model not in MODELS:
            raise ConfigError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
        base = dict(NOTEBOOK_DEFAULTS[model])
        base.update(overrides)
        config = cls(model=model, **base)
        config.validate()
        return config

    def replace(self, **changes) -> Config:
        return dataclasses.replace(self, **changes)

    @property
    def is_trainable(self) -> bool:
        """False for kNN, which has no epochs and no gradient."""
        return self.model != "knn"

    def validate(self) -> None:
        def choice(name, options):
            value = getattr(self, name)
            if value not in options:
                raise ConfigError(f"{name} must be one of {', '.join(options)}, not {value!r}")

        def bounded(name, low, high, low_open=False):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{name} must be a number, not {value!r}")
            too_low = value <= low if low_open else value < low
            if too_low or value > high:
                left = "(" if low_open else "["
                raise ConfigError(f"{name} must be in {left}{low}, {high}], not {value}")

        choice("model", MODELS)
        choice("dataset", DATASETS)
        choice("activation", ACTIVATIONS)
        choice("init", INITS)
        choice("optimizer", OPTIMIZERS)
        choice("backend", BACKENDS)
        for name in ("input_dropout", "conv_dropout", "hidden_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), not {value}")
        bounded("init_std", 0.0, 10.0, low_open=True)
        bounded("learning_rate", 0.0, 100.0, low_open=True)
        bounded("momentum", 0.0, 0.9999)
        bounded("rho", 0.0, 0.9999)
        bounded("epsilon", 0.0, 1.0, low_open=True)
        bounded("beta1", 0.0, 0.9999)
        bounded("beta2", 0.0, 0.99999)
        bounded("k", 1, 1000)
        bounded("batch_size", 1, 60000)
        bounded("epochs", 1, 10000)
        bounded("seed", 0, 2**32 - 1)
        bounded("train_size", 0, 10**7)
        bounded("test_size", 0, 10**7)
        for size in self.hidden_sizes:
            if not 1 <= size <= 8192:
                raise ConfigError(f"hidden layer sizes must be in [1, 8192], not {size}")
        for count in self.conv_filters:
            if not 1 <= count <= 1024:
                raise ConfigError(f"conv filter counts must be in [1, 1024], not {count}")
        if self.model in ("mlp", "dropout_mlp") and not self.hidden_sizes:
            raise ConfigError(f"{self.model} needs at least one hidden layer")
        if self.model == "convnet":
            if not 1 <= len(self.conv_filters) <= 4:
                raise ConfigError("the convnet needs 1 to 4 conv layers")
            if len(self.hidden_sizes) != 1:
                raise ConfigError("the convnet has exactly one fully connected hidden layer")

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
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ConfigError(f"unknown configuration keys: {', '.join(unknown)}")
        for name in ("hidden_sizes", "conv_filters"):
            if name in raw:
                if not isinstance(raw[name], list):
                    raise ConfigError(f"{name} must be a list")
                raw[name] = tuple(raw[name])
        try:
            config = cls(**raw)
        except TypeError as exc:
            raise ConfigError(f"configuration does not fit ({exc})") from None
        config.validate()
        return config


# The notebook's settings, cell by cell.
NOTEBOOK_DEFAULTS: dict[str, dict] = {
    "knn": dict(k=1, epochs=1),
    "logreg": dict(optimizer="sgd", learning_rate=0.05),
    "mlp": dict(hidden_sizes=(625,), activation="sigmoid", optimizer="sgd", learning_rate=0.05),
    "dropout_mlp": dict(
        hidden_sizes=(625, 625),
        activation="relu",
        input_dropout=0.2,
        hidden_dropout=0.5,
        optimizer="rmsprop",
        learning_rate=0.001,
    ),
    "convnet": dict(
        conv_filters=(32, 64, 128),
        hidden_sizes=(625,),
        activation="relu",
        conv_dropout=0.2,
        hidden_dropout=0.5,
        optimizer="rmsprop",
        learning_rate=0.001,
    ),
}


# Which fields matter for which model: the GUI greys out the rest, `info` hides them.
def relevant_fields(model: str) -> set[str]:
    common = {"model", "dataset", "train_size", "test_size", "seed"}
    if model == "knn":
        return common | {"k"}
    trained = common | {
        "use_bias", "init", "init_std", "optimizer", "learning_rate", "momentum", "rho",
        "epsilon", "beta1", "beta2", "batch_size", "epochs", "shuffle", "backend",
    }
    if model == "logreg":
        return trained
    if model == "mlp":
        return trained | {"hidden_sizes", "activation", "hidden_dropout"}
    if model == "dropout_mlp":
        return trained | {"hidden_sizes", "activation", "input_dropout", "hidden_dropout"}
    return trained | {"hidden_sizes", "conv_filters", "activation", "conv_dropout", "hidden_dropout"}

