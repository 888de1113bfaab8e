"""Resume follows one rule: settings that may change between runs apply, the others are refused."""

from __future__ import annotations

import numpy as np

from mnistgui.core.config import Config, resume_config
from mnistgui.core.training import Trainer, create_model

from .test_cli import run


def _train(trainer, epochs):
    for _ in trainer.train(epochs):
        pass


def test_a_reconfigured_model_continues_exactly_with_the_new_settings(mnist):
    data = mnist.subset(1500, 200)
    config = Config.for_model("dropout_mlp", hidden_sizes=(64, 64), seed=5, backend="c")
    reference = create_model(config)
    _train(Trainer(reference, data), 1)
    # The trainer sets the shared rate before each step from the configuration: no recompilation.
    reference.config = reference.config.replace(learning_rate=0.0003)
    trainer = Trainer(reference, data)
    _train(trainer, 1)
    assert reference.history[-1].learning_rate == 0.0003

    resumed = create_model(config)
    _train(Trainer(resumed, data), 1)
    resumed = resumed.reconfigured(resume_config(resumed.config, {"learning_rate": 0.0003}))
    assert resumed.config.learning_rate == 0.0003
    assert resumed.config_changes == [{"after_epoch": 1, "changes": {"learning_rate": [0.001, 0.0003]}}]
    _train(Trainer(resumed, data), 1)
    for name, value in reference.weights().items():
        np.testing.assert_array_equal(resumed.weights()[name], value, err_msg=name)
    assert [r.epoch for r in resumed.history] == [1, 2]


def test_a_changed_dropout_rate_changes_the_graph_and_keeps_the_weights(mnist):
    config = Config.for_model("dropout_mlp", hidden_sizes=(32, 32), seed=1, backend="c")
    model = create_model(config)
    _train(Trainer(model, mnist.subset(500, 100)), 1)
    before = model.weights()
    calmer = model.reconfigured(resume_config(config, {"hidden_dropout": 0.0, "input_dropout": 0.0}))
    for name, value in before.items():
        np.testing.assert_array_equal(calmer.weights()[name], value)
    images = mnist.test_images[:50].reshape(50, -1)
    np.testing.assert_array_equal(calmer.predict_proba(images), model.predict_proba(images))


def test_train_resume_applies_and_refuses_from_the_command_line(tmp_path):
    model = tmp_path / "m.h5"
    first = run("train", "--model", "logreg", "--train-size", "2000", "--test-size", "300", "--save", str(model))
    assert first.returncode == 0, first.stderr
    resumed = run("train", "--resume", str(model), "--lr", "0.01", "--batch-size", "64", "--backend", "numba",
                  "--save", str(model))
    assert resumed.returncode == 0, resumed.stderr
    assert "changed: learning_rate 0.05 -> 0.01, batch_size 128 -> 64, backend auto -> numba" in resumed.stdout
    assert "backend numba" in resumed.stdout and "epoch   2" in resumed.stdout
    refused = run("train", "--resume", str(model), "--optimizer", "adam", "--seed", "3", "--lr", "0.02")
    assert refused.returncode == 2
    assert "--optimizer (optimizer), --seed (seed)" in refused.stderr and "--lr" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    same = run("train", "--resume", str(model), "--model", "logreg", "--train-size", "2000", "--test-size", "300")
    assert same.returncode == 0, same.stderr  # naming a fixed setting at its stored value is fine
