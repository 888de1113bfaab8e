"""Adversarial examples on real MNIST models: the literature's anchors, exact bounds, the command line."""

import json
import math

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

from mnistgui.core import backend
from mnistgui.core.attacks import (
    AdversarialTraining, AttackCancelled, AttackError, Attacker, adversarial_pixels, adversarial_training_cost,
)
from mnistgui.core.config import Config
from mnistgui.core.layers import RngChain
from mnistgui.core.modelfile import load_model, save_model
from mnistgui.core.training import Trainer, TrainingControl, create_model

from .test_cli import run

N_ATTACKED = 1000


def _trained(mnist, model, train_size=0, **settings):
    config = Config.for_model(model, epochs=1, train_size=train_size, test_size=N_ATTACKED, **settings)
    network = create_model(config)
    for _ in Trainer(network, mnist.subset(train_size, N_ATTACKED)).train(evaluate=False):
        pass
    return network


@pytest.fixture(scope="module")
def logreg(mnist):
    """The notebook's logistic regression after one epoch on the full training set."""
    return _trained(mnist, "logreg")


@pytest.fixture(scope="module")
def attacker(logreg):
    return Attacker(logreg)


@pytest.fixture(scope="module")
def test_set(mnist):
    return mnist.test_images[:N_ATTACKED], mnist.test_labels[:N_ATTACKED].astype(np.int64)


def _bounds_hold(adversarial, images, eps):
    original = images.reshape(len(images), -1).astype(np.float64) / 255.0
    assert adversarial.dtype == np.float32 and adversarial.shape == original.shape
    assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0
    assert np.abs(adversarial.astype(np.float64) - original).max() <= eps + 1e-6


def test_fgsm_fools_logistic_regression_as_goodfellow_reports(attacker, test_set):
    # Goodfellow et al. 2015: a shallow softmax misclassifies 99.9% of FGSM examples at eps 0.25.
    images, labels = test_set
    adversarial = attacker.fgsm(images, labels, 0.25)
    _bounds_hold(adversarial, images, 0.25)
    misclassified = np.mean(attacker.predict(adversarial) != labels)
    assert misclassified >= 0.9
    clean_error = np.mean(attacker.predict(images) != labels)
    assert clean_error < 0.2  # the attack, not a bad model, makes the errors


def test_pgd_is_at_least_as_strong_as_fgsm(attacker, test_set):
    images, labels = test_set
    for eps in (0.05, 0.1):
        fgsm = np.mean(attacker.predict(attacker.fgsm(images, labels, eps)) == labels)
        pgd = np.mean(attacker.predict(attacker.pgd(images, labels, eps, steps=20, rng=np.random.default_rng(1)))
                      == labels)
        assert pgd <= fgsm, (eps, pgd, fgsm)
    assert fgsm < np.mean(attacker.predict(images) == labels) - 0.2


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_targeted_attacks_reach_the_target_far_more_often_than_chance(attacker, test_set, method):
    images, labels = test_set
    target = (labels + 1) % 10
    adversarial = attacker.attack(method, images, labels, 0.2, steps=20, target=target)
    _bounds_hold(adversarial, images, 0.2)
    reached = np.mean(attacker.predict(adversarial) == target)
    assert reached > 0.5  # chance is 0.1
    before = np.mean(attacker.predict(images) == target)
    assert before < 0.05


@pytest.mark.parametrize("eps", [0.0, 0.01, 0.1, 0.3, 1.0])
def test_bounds_hold_exactly_at_every_budget(attacker, test_set, eps):
    images, labels = test_set[0][:200], test_set[1][:200]
    assert images.min() == 0 and images.max() == 255  # both clip limits are exercised
    for method in ("fgsm", "pgd"):
        _bounds_hold(attacker.attack(method, images, labels, eps, steps=5), images, eps)
    _bounds_hold(attacker.pgd(images, labels, eps, steps=3, step_size=0.5, random_start=False), images, eps)
    _bounds_hold(attacker.fgsm(images, labels, eps, target=3), images, eps)


def test_pgd_keeps_its_successes_and_is_reproducible(attacker, test_set):
    images, labels = test_set[0][:300], test_set[1][:300]
    first = attacker.pgd(images, labels, 0.1, steps=10, rng=np.random.default_rng(5))
    again = attacker.pgd(images, labels, 0.1, steps=10, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(first, again)
    # More steps never make an image the attack has already fooled correct again.
    longer = attacker.pgd(images, labels, 0.1, steps=30, rng=np.random.default_rng(5))
    fooled_short = attacker.predict(first) != labels
    fooled_long = attacker.predict(longer) != labels
    assert fooled_long.sum() >= fooled_short.sum()


def test_accuracy_under_attack_reports_each_budget(attacker, test_set):
    images, labels = test_set
    calls = []
    report = attacker.accuracy_under_attack(images, labels, [0.0, 0.05, 0.2], method="fgsm", chunk=300,
                                            progress=lambda done, total: calls.append((done, total)),
                                            keep_fooled=20)
    assert calls == [(i, 12) for i in range(1, 13)]  # 4 chunks x 3 budgets
    clean = float(np.mean(attacker.predict(images) == labels))
    zero, small, large = report.results
    assert zero.accuracy == pytest.approx(clean) and zero.max_linf == 0.0 and len(zero.fooled.indices) == 0
    assert clean > small.accuracy > large.accuracy
    assert small.max_linf == pytest.approx(0.05, abs=1e-6) and large.max_linf == pytest.approx(0.2, abs=1e-6)
    assert small.clean_accuracy == pytest.approx(clean) and small.n_images == N_ATTACKED
    fooled = large.fooled
    assert len(fooled.indices) == 20
    assert np.all(attacker.predict(fooled.adversarial) == fooled.predictions)
    assert np.all(fooled.predictions != fooled.labels)
    assert np.all(attacker.predict(images[fooled.indices]) == labels[fooled.indices])
    np.testing.assert_allclose(fooled.originals, images[fooled.indices].reshape(20, -1) / 255.0, atol=1e-7)
    assert np.abs(fooled.adversarial - fooled.originals).max() <= 0.2 + 1e-6
    assert small.as_dict() == {"eps": 0.05, "accuracy": small.accuracy, "max_linf": small.max_linf}


def test_targeted_report_and_cancel(attacker, test_set):
    images, labels = test_set[0][:400], test_set[1][:400]
    report = attacker.accuracy_under_attack(images, labels, [0.2], method="pgd", steps=10, target=7)
    assert report.results[0].target_rate > 0.5 and "target_rate" in report.results[0].as_dict()
    asked = []

    def cancel():
        asked.append(1)
        return len(asked) > 3  # after the first budget's two chunks and one of the second's

    with pytest.raises(AttackCancelled) as caught:
        attacker.accuracy_under_attack(images, labels, [0.05, 0.1], chunk=200, cancel=cancel)
    partial = caught.value.report
    assert partial.cancelled and [r.eps for r in partial.results] == [0.05]


def test_attack_settings_out_of_range_are_refused(attacker, test_set):
    images, labels = test_set[0][:10], test_set[1][:10]
    with pytest.raises(AttackError, match="eps must be a number in"):
        attacker.fgsm(images, labels, 1.5)
    with pytest.raises(AttackError, match="eps must be"):
        attacker.accuracy_under_attack(images, labels, [0.1, math.nan])
    with pytest.raises(AttackError, match="steps must be"):
        attacker.pgd(images, labels, 0.1, steps=0)
    with pytest.raises(AttackError, match="target classes"):
        attacker.fgsm(images, labels, 0.1, target=10)
    with pytest.raises(AttackError, match="in \\[0, 1\\]"):
        attacker.fgsm(images.astype(np.float32), labels, 0.1)  # floats must already be scaled
    with pytest.raises(AttackError, match="unknown attack"):
        attacker.accuracy_under_attack(images, labels, [0.1], method="deepfool")


def test_a_convnet_is_attacked_through_its_convolutions(mnist):
    model = _trained(mnist, "convnet", train_size=3000, conv_filters=(4, 8), hidden_sizes=(32,), conv_dropout=0.0,
                     hidden_dropout=0.0, use_bias=True, init="he", optimizer="adam", learning_rate=0.003,
                     batch_size=32)
    attacker = Attacker(model)
    images, labels = mnist.test_images[:200], mnist.test_labels[:200].astype(np.int64)
    report = attacker.accuracy_under_attack(images, labels, [0.0, 0.2], method="pgd", steps=5)
    assert report.results[0].accuracy > 0.5
    assert report.results[1].accuracy < report.results[0].accuracy - 0.3
    assert report.results[1].max_linf <= 0.2 + 1e-6


# --- adversarial training ---------------------------------------------------------------------------


def test_adversarial_training_settings():
    assert not AdversarialTraining().active
    assert AdversarialTraining("fgsm", eps=0.3).step_size == pytest.approx(0.375)  # Wong et al.'s MNIST alpha
    assert AdversarialTraining("pgd", eps=0.3, steps=10).step_size == pytest.approx(0.075)
    assert AdversarialTraining("pgd", eps=0.2, step=0.5).step_size == pytest.approx(0.1)
    assert AdversarialTraining.from_config(Config.for_model("logreg")) == AdversarialTraining()
    with pytest.raises(AttackError, match="must be one of"):
        AdversarialTraining("free")
    with pytest.raises(AttackError, match="weight"):
        AdversarialTraining("fgsm", weight=2.0)


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_adversarial_batch_graph_stays_in_bounds_and_raises_the_loss(logreg, mnist, method):
    settings = AdversarialTraining(method, eps=0.1, steps=3)
    images = pt.matrix("images", dtype="uint8")
    labels = pt.ivector("labels")
    pixels = pt.cast(images, "float32") * np.float32(1 / 255)
    rng = RngChain(3, name="attack_rng")
    attacked = adversarial_pixels(logreg, pixels, labels, settings, rng)
    fn = pytensor.function([images, labels], attacked, updates=[rng.update],
                           mode=backend.compile_mode(logreg.backend))
    batch, batch_labels = mnist.test_images[:256].reshape(256, -1), mnist.test_labels[:256].astype(np.int32)
    first, second = fn(batch, batch_labels), fn(batch, batch_labels)
    _bounds_hold(first, batch, 0.1)
    assert not np.array_equal(first, second)  # the random start advances with each batch
    attacker = Attacker(logreg)
    assert np.mean(attacker.predict(first) == batch_labels) < np.mean(attacker.predict(batch) == batch_labels) - 0.2


def _trained_on_6000(config, mnist):
    """One epoch on 6,000 images through the real Trainer, adversarial training set in the config."""
    model = create_model(config)
    for _ in Trainer(model, mnist.subset(6000, 100)).train(1, evaluate=False):
        pass
    return model


def test_fgsm_adversarial_training_makes_a_model_more_robust(mnist):
    config = Config.for_model("dropout_mlp", hidden_sizes=(128,), input_dropout=0.0, hidden_dropout=0.0, seed=4,
                              use_bias=True, init="he", optimizer="adam", learning_rate=0.002, batch_size=64)
    plain = _trained_on_6000(config, mnist)
    robust = _trained_on_6000(config.replace(adv_training="fgsm", adv_eps=0.1), mnist)
    assert robust.attack_rng is not None and plain.attack_rng is None
    test_images, test_labels = mnist.test_images[:1000], mnist.test_labels[:1000]
    accuracy = {}
    for name, model in (("plain", plain), ("robust", robust)):
        attacker = Attacker(model)
        fgsm = attacker.accuracy_under_attack(test_images, test_labels, [0.0, 0.1], method="fgsm")
        pgd = attacker.accuracy_under_attack(test_images, test_labels, [0.1], method="pgd", steps=10)
        accuracy[name] = [r.accuracy for r in fgsm.results + pgd.results]
    assert accuracy["plain"][0] > 0.8 and accuracy["robust"][0] > 0.7
    # Robust against FGSM and against the stronger PGD too: not a masked gradient.
    assert accuracy["robust"][1] > accuracy["plain"][1] + 0.15, accuracy
    assert accuracy["robust"][2] > accuracy["plain"][2] + 0.1, accuracy


def test_adversarial_training_resumes_bit_for_bit_through_a_file(mnist, tmp_path):
    config = Config.for_model("mlp", hidden_sizes=(32,), adv_training="pgd", adv_eps=0.1, adv_steps=3, epochs=2,
                              shuffle=True, seed=9, backend="c")
    data = mnist.subset(600, 100)
    straight = create_model(config)
    for _ in Trainer(straight, data).train():
        pass
    first = create_model(config)
    control = TrainingControl()
    control.stop_after_epoch = True
    for _ in Trainer(first, data).train(control=control):
        pass
    save_model(first, tmp_path / "one.h5")
    resumed, _ = load_model(tmp_path / "one.h5")
    assert resumed.get_state()["training"]["attack_rng"] == first.get_state()["training"]["attack_rng"]
    for _ in Trainer(resumed, data).train(1):
        pass
    for name, value in straight.weights().items():
        np.testing.assert_array_equal(resumed.weights()[name], value, err_msg=name)


def test_robust_accuracy_is_checked_each_epoch_and_saved(mnist, tmp_path):
    config = Config.for_model("dropout_mlp", hidden_sizes=(128,), input_dropout=0.0, hidden_dropout=0.0, seed=4,
                              use_bias=True, init="he", optimizer="adam", learning_rate=0.002, batch_size=64,
                              adv_training="fgsm", adv_eps=0.1, epochs=2)
    data = mnist.subset(6000, 200)
    model = create_model(config)
    trainer = Trainer(model, data)
    results = [item for item in trainer.train() if hasattr(item, "robust_accuracy")]
    checked = [r.robust_accuracy for r in results]
    assert len(checked) == 2 and all(0.0 <= a <= 1.0 for a in checked)
    images, labels, source = trainer.robust_check_batch()
    assert source == "training" and len(images) == 500
    clean = np.mean(model.predict_proba(images).argmax(axis=1) == labels)
    assert clean > 0.75 and checked[-1] < clean - 0.1  # PGD at the training eps costs an MLP accuracy
    assert checked[-1] == trainer.robust_accuracy(2)  # same epoch, same draws: the same figure
    save_model(model, tmp_path / "m.h5")
    loaded, _ = load_model(tmp_path / "m.h5")
    assert [r.robust_accuracy for r in loaded.history] == checked
    plain = create_model(config.replace(adv_training="off"))
    assert all(math.isnan(r.robust_accuracy) for r in Trainer(plain, data).train(1) if hasattr(r, "robust_accuracy"))


def test_catastrophic_overfitting_stops_the_run_and_restores_the_best_robust_epoch(mnist, monkeypatch):
    config = Config.for_model("mlp", hidden_sizes=(32,), adv_training="fgsm", adv_eps=0.1, epochs=5, seed=3)
    model = create_model(config)
    trainer = Trainer(model, mnist.subset(1000, 100))
    # The check's figures are scripted: a collapse on 1,000 images would take minutes to provoke.
    scripted = iter([0.50, 0.70, 0.35, 0.90, 0.95])
    monkeypatch.setattr(trainer, "robust_accuracy", lambda epoch: next(scripted))
    weights_after = {}
    for item in trainer.train():
        if hasattr(item, "robust_accuracy"):
            weights_after[item.epoch] = model.weights()["w_h"].copy()
    assert sorted(weights_after) == [1, 2, 3]  # 0.35 is 35 points under 0.70: stopped after epoch 3
    # The restore is the guard's, not early stopping's: best_epoch still names the best validation epoch.
    assert trainer.early_stopped and model.best_epoch == 0 and model.epochs_done == 3
    np.testing.assert_array_equal(model.weights()["w_h"], weights_after[2])
    assert "catastrophic overfitting" in trainer.stop_note and "restored epoch 2" in trainer.stop_note
    assert "35.0% at epoch 3 from 70.0% at epoch 2" in trainer.stop_note


def test_a_resume_with_a_larger_budget_is_not_a_collapse(mnist, monkeypatch):
    config = Config.for_model("mlp", hidden_sizes=(32,), adv_training="fgsm", adv_eps=0.1, epochs=1, seed=3)
    model = create_model(config)
    data = mnist.subset(1000, 100)
    first = Trainer(model, data)
    monkeypatch.setattr(first, "robust_accuracy", lambda epoch: 0.90)
    list(first.train())
    resumed = model.reconfigured(config.replace(adv_eps=0.3, epochs=2))
    trainer = Trainer(resumed, data)
    scripted = iter([0.30, 0.45])  # far under 0.90, but measured at eps 0.3
    monkeypatch.setattr(trainer, "robust_accuracy", lambda epoch: next(scripted))
    list(trainer.train())
    assert resumed.epochs_done == 3 and not trainer.early_stopped and trainer.stop_note == ""
    unchanged = create_model(config.replace(epochs=1))
    unchanged.history = list(model.history[:1])
    trainer = Trainer(unchanged, data)
    monkeypatch.setattr(trainer, "robust_accuracy", lambda epoch: 0.30)  # same eps: a collapse from 0.90
    list(trainer.train())
    assert trainer.early_stopped and "from 90.0% at epoch 1" in trainer.stop_note


# --- the command line -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def logreg_file(logreg, tmp_path_factory):
    path = tmp_path_factory.mktemp("attack") / "logreg.h5"
    save_model(logreg, path, "mnist")
    return path


def test_attack_command_json(logreg_file, attacker, test_set):
    result = run("attack", str(logreg_file), "--eps", "0.05,0.1,0.2,0.3", "--test-size", "500", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [row["eps"] for row in rows] == [0.05, 0.1, 0.2, 0.3]
    assert all(set(row) == {"eps", "accuracy", "max_linf"} for row in rows)
    images, labels = test_set[0][:500], test_set[1][:500]
    expected = np.mean(attacker.predict(attacker.fgsm(images, labels, 0.1)) == labels)
    assert rows[1]["accuracy"] == pytest.approx(expected)
    assert [row["accuracy"] for row in rows] == sorted((row["accuracy"] for row in rows), reverse=True)
    assert all(abs(row["max_linf"] - row["eps"]) <= 1e-6 for row in rows)


def test_attack_command_text_and_pgd(logreg_file):
    result = run("attack", str(logreg_file), "--method", "pgd", "--steps", "5", "--eps", "0.1", "--test-size", "200",
                 "--target", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("PGD, 5 steps, targeted at 3 on 200 MNIST test images: Logistic regression, 1 epochs")
    assert lines[1].startswith("eps 0.1 ") and "max L-inf 0.1000" in lines[1] and "reached target" in lines[1]


@pytest.mark.parametrize("args, message", [
    (["--eps", "0.1,2"], "each eps must be in [0, 1]"),
    (["--eps", "x"], "expected comma-separated numbers"),
    (["--steps", "5"], "--steps, --step-size and --no-random-start are for --method pgd"),
    (["--method", "pgd", "--steps", "0"], "--steps must be in [1, 1000]"),
    (["--target", "12"], "--target must be a class in 0..9"),
])
def test_attack_command_errors_are_one_line(logreg_file, args, message):
    result = run("attack", str(logreg_file), *args)
    assert result.returncode == 2 and result.stdout == ""
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_attack_refuses_knn_and_missing_files(tmp_path, mnist):
    knn = create_model(Config.for_model("knn"))
    knn.fit(mnist.train_images[:100], mnist.train_labels[:100])
    save_model(knn, tmp_path / "knn.h5", "mnist")
    result = run("attack", str(tmp_path / "knn.h5"))
    assert result.returncode == 2 and "nearest-neighbours model: attacks follow a gradient" in result.stderr
    missing = run("attack", str(tmp_path / "none.h5"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "none.h5" in missing.stderr


def test_mixed_adversarial_cost_with_dropout_advances_both_streams(mnist):
    config = Config.for_model("dropout_mlp", hidden_sizes=(32, 32), seed=2)  # input and hidden dropout on
    model = create_model(config)
    x = pt.matrix("x", dtype="uint8")
    y = pt.ivector("y")
    pixels = pt.cast(x, "float32") * np.float32(1 / 255)
    # Fresh chains: the model's own `rng` already continues its training graph's draws.
    attack_rng, dropout_rng = RngChain(5, name="attack_rng"), RngChain(6)
    settings = AdversarialTraining("pgd", eps=0.2, steps=2, weight=0.5)
    cost = adversarial_training_cost(model, pixels, y, settings, attack_rng, dropout_rng)
    fn = pytensor.function([x, y], cost, updates=[attack_rng.update, dropout_rng.update],
                           mode=backend.compile_mode(model.backend))
    batch, labels = mnist.train_images[:64].reshape(64, -1), mnist.train_labels[:64].astype(np.int32)
    states = [chain.shared.get_value().bit_generator.state["state"] for chain in (attack_rng, dropout_rng)]
    first, second = fn(batch, labels), fn(batch, labels)
    assert np.isfinite(first) and first > 0 and first != second  # new dropout masks and starts each call
    assert attack_rng.shared.get_value().bit_generator.state["state"] != states[0]
    assert dropout_rng.shared.get_value().bit_generator.state["state"] != states[1]
