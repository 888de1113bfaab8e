"""The configuration panel: dataset, model, its hyperparameters, optimizer and run settings.

Ranges are enforced by the widgets, so an out-of-range value cannot be entered. Fields the chosen
model or optimizer does not use are disabled, with a tooltip that says why.
"""

from __future__ import annotations

from PyQt5 import QtCore, QtGui, QtWidgets

from ..core.backend import BACKEND_TITLES
from ..core.config import ACTIVATIONS, INITS, MODEL_TITLES, MODELS, OPTIMIZERS, Config, relevant_fields
from ..core.data import DATASET_TITLES
from ..core.errors import ConfigError

OPTIMIZER_TITLES = {"sgd": "SGD", "momentum": "Momentum", "nesterov": "Nesterov", "rmsprop": "RMSprop",
                    "adam": "Adam"}
OPTIMIZER_FIELDS = {
    "momentum": {"momentum", "nesterov"},
    "rho": {"rmsprop"},
    "epsilon": {"rmsprop", "adam"},
    "beta1": {"adam"},
    "beta2": {"adam"},
}
# Kept when the model changes; every other field takes the new model's notebook default.
RUN_FIELDS = ("dataset", "epochs", "seed", "train_size", "test_size", "backend", "shuffle", "batch_size")

# (field, label, kind, options) in display order, grouped.
GROUPS = [
    ("Data", [
        ("dataset", "Dataset", "choice", DATASET_TITLES),
        ("train_size", "Training images", "int", (0, 60000, 1000, "all")),
        ("test_size", "Test images", "int", (0, 10000, 1000, "all")),
    ]),
    ("Model", [
        ("model", "Model", "choice", MODEL_TITLES),
        ("k", "Neighbours (k)", "int", (1, 100, 1, None)),
        ("conv_filters", "Conv filters", "ints", "32,64,128"),
        ("hidden_sizes", "Hidden units", "ints", "625,625"),
        ("activation", "Activation", "choice", {a: a for a in ACTIVATIONS}),
        ("input_dropout", "Input dropout", "float", (0.0, 0.95, 0.05, 2)),
        ("conv_dropout", "Conv dropout", "float", (0.0, 0.95, 0.05, 2)),
        ("hidden_dropout", "Hidden dropout", "float", (0.0, 0.95, 0.05, 2)),
        ("use_bias", "Biases", "bool", None),
        ("init", "Initialisation", "choice", {"normal": "normal", "glorot": "Glorot", "he": "He"}),
        ("init_std", "Init std", "float", (0.0001, 10.0, 0.005, 4)),
    ]),
    ("Optimizer", [
        ("optimizer", "Optimizer", "choice", OPTIMIZER_TITLES),
        ("learning_rate", "Learning rate", "float", (0.00001, 100.0, 0.001, 5)),
        ("momentum", "Momentum", "float", (0.0, 0.9999, 0.05, 4)),
        ("rho", "RMSprop rho", "float", (0.0, 0.9999, 0.05, 4)),
        ("epsilon", "Epsilon", "float", (0.00000001, 1.0, 0.000001, 8)),
        ("beta1", "Adam beta1", "float", (0.0, 0.9999, 0.01, 4)),
        ("beta2", "Adam beta2", "float", (0.0, 0.99999, 0.001, 5)),
    ]),
    ("Run", [
        ("batch_size", "Batch size", "int", (1, 60000, 32, None)),
        ("epochs", "Epochs", "int", (1, 10000, 1, None)),
        ("seed", "Seed", "int", (0, 2**31 - 1, 1, None)),
        ("shuffle", "Shuffle each epoch", "bool", None),
        ("backend", "Backend", "choice", {"auto": "auto", **BACKEND_TITLES}),
    ]),
]
assert {name for _, rows in GROUPS for name, *_ in rows} == set(Config.__dataclass_fields__)
assert set(MODELS) == set(MODEL_TITLES) and set(OPTIMIZERS) == set(OPTIMIZER_TITLES) and set(INITS) == {"normal", "glorot", "he"}


class ConfigPanel(QtWidgets.QWidget):
    changed = QtCore.pyqtSignal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.widgets: dict[str, QtWidgets.QWidget] = {}
        self.labels: dict[str, QtWidgets.QLabel] = {}
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        for title, rows in GROUPS:
            box = QtWidgets.QGroupBox(title)
            form = QtWidgets.QFormLayout(box)
            form.setFieldGrowthPolicy(QtWidgets.QFormLayout.AllNonFixedFieldsGrow)
            for name, label, kind, options in rows:
                widget = self._make_widget(name, kind, options)
                self.widgets[name] = widget
                self.labels[name] = QtWidgets.QLabel(label)
                form.addRow(self.labels[name], widget)
            layout.addWidget(box)
        self.reset_button = QtWidgets.QPushButton("Reset to notebook defaults")
        self.reset_button.setToolTip("The notebook's settings for the chosen model")
        self.reset_button.clicked.connect(self.reset_defaults)
        layout.addWidget(self.reset_button)
        self.error_label = QtWidgets.QLabel()
        self.error_label.setStyleSheet("color: #c0392b")
        self.error_label.setWordWrap(True)
        layout.addWidget(self.error_label)
        layout.addStretch(1)
        self._updating = False
        self.widgets["model"].currentIndexChanged.connect(self._model_changed)
        self.set_config(Config.for_model("logreg"))

    # --- widgets ---------------------------------------------------------------------------------

    def _make_widget(self, name, kind, options):
        if kind == "choice":
            widget = QtWidgets.QComboBox()
            for key, title in options.items():
                widget.addItem(title, key)
            widget.currentIndexChanged.connect(self._on_change)
        elif kind == "int":
            low, high, step, special = options
            widget = QtWidgets.QSpinBox()
            widget.setRange(low, high)
            widget.setSingleStep(step)
            if special:
                widget.setSpecialValueText(special)
            widget.valueChanged.connect(self._on_change)
        elif kind == "float":
            low, high, step, decimals = options
            widget = QtWidgets.QDoubleSpinBox()
            widget.setDecimals(decimals)
            widget.setRange(low, high)
            widget.setSingleStep(step)
            widget.valueChanged.connect(self._on_change)
        elif kind == "bool":
            widget = QtWidgets.QCheckBox()
            widget.toggled.connect(self._on_change)
        else:  # comma-separated positive integers
            widget = QtWidgets.QLineEdit()
            widget.setPlaceholderText(options)
            widget.setValidator(QtGui.QRegularExpressionValidator(QtCore.QRegularExpression(r"^\d{1,4}(,\d{1,4}){0,7}$")))
            widget.textChanged.connect(self._on_change)
        widget.setObjectName(name)
        return widget

    def _get(self, name):
        widget = self.widgets[name]
        if isinstance(widget, QtWidgets.QComboBox):
            return widget.currentData()
        if isinstance(widget, (QtWidgets.QSpinBox, QtWidgets.QDoubleSpinBox)):
            return widget.value()
        if isinstance(widget, QtWidgets.QCheckBox):
            return widget.isChecked()
        text = widget.text().strip(",")
        return tuple(int(part) for part in text.split(",") if part)

    def _set(self, name, value):
        widget = self.widgets[name]
        widget.blockSignals(True)
        if isinstance(widget, QtWidgets.QComboBox):
            widget.setCurrentIndex(max(0, widget.findData(value)))
        elif isinstance(widget, (QtWidgets.QSpinBox, QtWidgets.QDoubleSpinBox)):
            widget.setValue(value)
        elif isinstance(widget, QtWidgets.QCheckBox):
            widget.setChecked(bool(value))
        else:
            widget.setText(",".join(str(v) for v in value))
        widget.blockSignals(False)

    # --- configuration in and out -----------------------------------------------------------------

    def set_config(self, config: Config) -> None:
        self._updating = True
        for name in self.widgets:
            self._set(name, getattr(config, name))
        self._updating = False
        self._refresh_enabled()

    def config(self) -> Config:
        """The configuration as entered; raises ConfigError if it does not make sense."""
        values = {name: self._get(name) for name in self.widgets}
        model = values["model"]
        relevant = relevant_fields(model)
        # Fields the model ignores keep the notebook's values, so a file stores a clean config.
        defaults = Config.for_model(model)
        for name in values:
            if name not in relevant and name not in RUN_FIELDS:
                values[name] = getattr(defaults, name)
        config = Config(**values)
        config.validate()
        return config

    def reset_defaults(self):
        keep = {name: self._get(name) for name in RUN_FIELDS}
        self.set_config(Config.for_model(self._get("model"), **keep))
        self.changed.emit()

    def _model_changed(self):
        if not self._updating:
            self.reset_defaults()

    def _on_change(self, *args):
        if self._updating:
            return
        self._refresh_enabled()
        self.changed.emit()

    def _refresh_enabled(self):
        model = self._get("model")
        relevant = relevant_fields(model)
        optimizer = self._get("optimizer")
        for name, widget in self.widgets.items():
            reason = ""
            if name not in relevant:
                reason = f"not used by {MODEL_TITLES[model].lower()}"
            elif name in OPTIMIZER_FIELDS and optimizer not in OPTIMIZER_FIELDS[name]:
                users = " and ".join(OPTIMIZER_TITLES[o] for o in sorted(OPTIMIZER_FIELDS[name]))
                reason = f"only used by {users}"
            elif name == "init_std" and self._get("init") != "normal":
                reason = "only used by the normal initialisation"
            widget.setEnabled(not reason)
            self.labels[name].setEnabled(not reason)
            widget.setToolTip(f"Disabled: {reason}" if reason else "")
        try:
            self.config()
            self.error_label.setText("")
        except (ConfigError, ValueError) as exc:
            self.error_label.setText(str(exc))

    def is_valid(self) -> bool:
        try:
            self.config()
        except (ConfigError, ValueError):
            return False
        return True
