"""The window offers what the core's modern training has: presets, schedules and augmentation in the
panel, a validation curve with its best epoch, per-class curves and the notebook's curve."""

from __future__ import annotations

import numpy as np
import pytest

from mnistgui.core.config import Config
from mnistgui.core.notebook import notebook_test_errors
from mnistgui.gui.plots import NOTEBOOK_LABEL


def _train(qtbot, window, config):
    window.config_panel.set_config(config)
    with qtbot.waitSignal(window.state_changed, timeout=180_000,
                          check_params_cb=lambda s: s in ("finished", "failed", "stopped")):
        window.start_training()
    assert window.state == "finished"
    return window.current


def test_presets_fill_the_panel_and_keep_the_dataset(window):
    assert {"modern-convnet", "modern-mlp"} <= set(window.preset_actions)
    window.preset_actions["modern-mlp"].trigger()
    config = window.config_panel.config()
    assert (config.model, config.optimizer, config.schedule, config.augment_shift) == ("dropout_mlp", "adam", "cosine", 1.5)
    assert config.dataset == "mnist" and window.start_action.isEnabled()
    for name in ("schedule", "warmup_epochs", "augment_rotate", "elastic_alpha", "val_size", "early_stop", "weight_decay"):
        assert name in window.config_panel.widgets
    assert not window.config_panel.widgets["early_stop"].isEnabled()  # no validation split yet
    window.config_panel.widgets["val_size"].setValue(1000)
    assert window.config_panel.widgets["early_stop"].isEnabled()


def test_an_invalid_configuration_disables_start(window):
    window.config_panel.set_config(Config.for_model("convnet"))
    assert window.start_action.isEnabled()
    window.config_panel.widgets["hidden_sizes"].setText("100,100")
    assert not window.start_action.isEnabled()
    window.config_panel.widgets["hidden_sizes"].setText("625")
    assert window.start_action.isEnabled()


def test_validation_curve_best_epoch_per_class_curves_and_the_notebook_overlay(qtbot, window):
    config = Config.for_model("mlp", hidden_sizes=(32,), learning_rate=2.0, train_size=3000, test_size=500,
                              val_size=1000, early_stop=2, epochs=12)
    run = _train(qtbot, window, config)
    plot = window.training_view.plot
    val = np.array([r.val_error for r in run.history]) * 100
    epochs, values = plot.curves[run.key]["val"].getData()
    np.testing.assert_allclose(values, val)
    best_x, best_y = plot.curves[run.key]["best"].getData()
    assert best_x[0] == np.argmin(val) + 1 and best_y[0] == pytest.approx(val.min())
    for digit, curve in enumerate(plot.class_curves):
        x, y = curve.getData()
        expected = [100 * (1 - r.class_accuracy[digit]) for r in run.history]
        assert len(x) == len(run.history) and np.allclose(y, expected)
    assert window.training_view.epoch_table.rowCount() == len(run.history)
    window.training_view.notebook_box.setChecked(True)
    x, y = plot.notebook_curve.getData()
    assert len(x) == 100 and np.allclose(y, np.array(notebook_test_errors("mlp")) * 100)
    assert plot.notebook_curve.isVisible()
    assert plot.error_legend.getLabel(plot.notebook_curve).text == NOTEBOOK_LABEL
    window.training_view.notebook_box.setChecked(False)
    assert not plot.notebook_curve.isVisible()
    assert plot.error_legend.getLabel(plot.notebook_curve) is None  # no entry left for a hidden curve
    window.training_view.notebook_box.setChecked(True)
    assert len([label for _, label in plot.error_legend.items if label.text == NOTEBOOK_LABEL]) == 1
