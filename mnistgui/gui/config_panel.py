"""The configuration panel, generated from the core's table of settings (core/config.py).

Each setting becomes a labelled widget in its group, with the table's range, step, help as tooltip,
and the notebook's default for the chosen model. Out-of-range numbers cannot be entered; a layer
list that does not fit the model is named in red and `is_valid()` turns false. Fields the chosen
model or optimizer does not use are disabled, with a tooltip that says why.
"""

from __future__ import annotations

from PyQt5 import QtCore, QtGui, QtWidgets

from ..core.config import GROUPS, SETTINGS, SETTINGS_LIST, Config
from ..core.errors import ConfigError

# Kept when the model changes; every other field takes the new model's notebook default.
RUN_FIELDS = ("dataset", "epochs", "seed", "train_size", "test_size", "backend", "shuffle", "batch_size")


def _make_widget(setting) -> QtWidgets.QWidget:
    if setting.kind == "choice":
        widget = QtWidgets.QComboBox()
        for key, title in setting.choices.items():
            widget.addItem(title, key)
    elif setting.kind == "int":
        widget = QtWidgets.QSpinBox()
        widget.setRange(int(setting.low), int(setting.high))
        widget.setSingleStep(int(setting.step))
        if setting.special_zero:
            widget.setSpecialValueText(setting.special_zero)
    elif setting.kind == "float":
        widget = QtWidgets.QDoubleSpinBox()
        widget.setDecimals(setting.decimals)
        smallest = 10.0 ** -setting.decimals
        widget.setRange(setting.low + smallest if setting.low_open else setting.low, setting.high)
        widget.setSingleStep(setting.step)
    elif setting.kind == "bool":
        widget = QtWidgets.QCheckBox()
    else:  # a comma-separated list of positive integers
        widget = QtWidgets.QLineEdit()
        digits = len(str(int(setting.high)))
        most = max((most for _, most in setting.lengths.values()), default=8)
        pattern = rf"^[0-9]{{1,{digits}}}(,[0-9]{{1,{digits}}}){{0,{most - 1}}},?$"
        widget.setValidator(QtGui.QRegularExpressionValidator(QtCore.QRegularExpression(pattern)))
        widget.setPlaceholderText(",".join(str(v) for v in max(setting.per_model.values(), key=len, default=())))
    widget.setObjectName(setting.name)
    return widget


class ConfigPanel(QtWidgets.QWidget):
    changed = QtCore.pyqtSignal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.widgets: dict[str, QtWidgets.QWidget] = {}
        self.labels: dict[str, QtWidgets.QLabel] = {}
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        for group in GROUPS:
            box = QtWidgets.QGroupBox(group)
            form = QtWidgets.QFormLayout(box)
            form.setFieldGrowthPolicy(QtWidgets.QFormLayout.AllNonFixedFieldsGrow)
            for setting in (s for s in SETTINGS_LIST if s.group == group):
                widget = _make_widget(setting)
                self._connect(widget)
                self.widgets[setting.name] = widget
                self.labels[setting.name] = QtWidgets.QLabel(setting.label)
                form.addRow(self.labels[setting.name], widget)
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

    def _connect(self, widget):
        if isinstance(widget, QtWidgets.QComboBox):
            widget.currentIndexChanged.connect(self._on_change)
        elif isinstance(widget, (QtWidgets.QSpinBox, QtWidgets.QDoubleSpinBox)):
            widget.valueChanged.connect(self._on_change)
        elif isinstance(widget, QtWidgets.QCheckBox):
            widget.toggled.connect(self._on_change)
        else:
            widget.textChanged.connect(self._on_change)

    # --- widget values ----------------------------------------------------------------------------

    def _get(self, name):
        widget = self.widgets[name]
        if isinstance(widget, QtWidgets.QComboBox):
            return widget.currentData()
        if isinstance(widget, (QtWidgets.QSpinBox, QtWidgets.QDoubleSpinBox)):
            return widget.value()
        if isinstance(widget, QtWidgets.QCheckBox):
            return widget.isChecked()
        return tuple(int(part) for part in widget.text().split(",") if part)

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
        self._refresh()

    def _values(self) -> dict:
        values = {name: self._get(name) for name in self.widgets}
        # Fields the model ignores keep the notebook's values, so a file stores a clean config.
        defaults = Config.for_model(values["model"])
        for setting in SETTINGS_LIST:
            if values["model"] not in setting.models and setting.name not in RUN_FIELDS:
                values[setting.name] = getattr(defaults, setting.name)
        return values

    def config(self) -> Config:
        """The configuration as entered; raises ConfigError if it does not make sense."""
        config = Config(**self._values())
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
        self._refresh()
        self.changed.emit()

    def _refresh(self):
        """Grey out what the configuration does not use, and name what does not validate."""
        shown = Config(**self._values())
        for name, widget in self.widgets.items():
            setting = SETTINGS[name]
            reason = setting.unused_reason(shown)
            widget.setEnabled(not reason)
            self.labels[name].setEnabled(not reason)
            tip = f"{setting.help[0].upper()}{setting.help[1:]}."
            if setting.describe_range() and setting.kind != "choice":
                tip += f" Range {setting.describe_range()}."
            if setting.changeable:
                tip += " May change when a run resumes."
            widget.setToolTip(f"Disabled: {reason}" if reason else tip)
        try:
            shown.validate()
            self.error_label.setText("")
        except ConfigError as exc:
            self.error_label.setText(str(exc))

    def is_valid(self) -> bool:
        try:
            self.config()
        except ConfigError:
            return False
        return True
