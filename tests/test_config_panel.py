"""The configuration panel is generated from the settings table: same ranges, same rules as the core."""

from __future__ import annotations

import pytest
from PyQt5 import QtWidgets

from mnistgui.core.config import SETTINGS, Config
from mnistgui.gui.app import make_application
from mnistgui.gui.config_panel import ConfigPanel

make_application()


@pytest.fixture
def panel(qtbot):
    widget = ConfigPanel()
    qtbot.addWidget(widget)
    return widget


def test_every_setting_has_a_widget_with_the_tables_range(panel):
    assert set(panel.widgets) == set(SETTINGS)
    for name, setting in SETTINGS.items():
        widget = panel.widgets[name]
        if setting.kind == "int":
            assert (widget.minimum(), widget.maximum()) == (setting.low, setting.high), name
        elif setting.kind == "float":
            assert widget.maximum() == setting.high, name
            assert widget.minimum() > setting.low if setting.low_open else widget.minimum() == setting.low, name
        elif setting.kind == "choice":
            assert [widget.itemData(i) for i in range(widget.count())] == list(setting.choices), name
    # The drift the issue measured: the seed's and k's ranges are the core's.
    assert panel.widgets["seed"].maximum() == 2**31 - 1 and panel.widgets["k"].maximum() == 1000


def test_layer_lists_that_do_not_fit_the_model_make_the_panel_invalid(panel, qtbot):
    panel.set_config(Config.for_model("convnet"))
    assert panel.is_valid() and panel.error_label.text() == ""
    panel.widgets["hidden_sizes"].setText("100,100")
    assert not panel.is_valid()
    assert "convnet needs exactly 1 layer" in panel.error_label.text()
    panel.widgets["hidden_sizes"].setText("625")
    panel.widgets["conv_filters"].clear()
    qtbot.keyClicks(panel.widgets["conv_filters"], "8,8,8,8,8")  # the validator refuses a fifth layer
    assert panel.widgets["conv_filters"].text() == "8,8,8,8,"
    panel.widgets["conv_filters"].setText("0,8")
    assert not panel.is_valid() and "conv_filters: each in [1, 1024], not 0" in panel.error_label.text()
    panel.widgets["conv_filters"].setText("")
    assert not panel.is_valid() and "convnet needs 1 to 4 layers, not 0" in panel.error_label.text()


def test_tooltips_give_the_tables_help_and_range(panel):
    panel.set_config(Config.for_model("dropout_mlp"))
    assert panel.widgets["learning_rate"].toolTip() == "Step size. Range (0, 100]. May change when a run resumes."
    assert panel.widgets["seed"].toolTip().startswith("Seeds the initial weights")
    assert isinstance(panel.widgets["backend"], QtWidgets.QComboBox)
