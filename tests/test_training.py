import math
import threading

import numpy as np
import pytest

from mnistgui.core.config import Config
from mnistgui.core.errors import TrainingDiverged
from mnistgui.core import training
from mnistgui.core.knn import nearest_neighbours, vote
from mnistgui.core.training import (
    BatchProgress, EpochResult, Evaluation, KnnModel, Trainer, TrainingControl, create_model,
)


def _results(items):
    return [i for i in items if isinstance(i, EpochResult)]


def _train(config, dataset, epochs=None, control=None):
    trainer = Trainer(create_model(config), dataset.subset(config.train_size, config.test_size))
    return trainer, _results(trainer.train(epochs, control))


def test_logreg_one_epoch_on_full_mnist_matches_the_notebook(mnist):
    trainer, (result,) = _train(Config.for_model("logreg"), mnist)
    assert result.test_error <= 0.125  # the notebook: 11.45%
    assert abs(result.train_error - 0.122) < 0.01
    assert result.epoch == 1 and result.seconds > 0 and result.images_per_second > 0
    assert trainer.compile_seconds > 0


def test_same_seed_same_history_to_the_last_digit(mnist):
    config = Config.for_model("dropout_mlp", train_size=1000, test_size=500, epochs=2, hidden_sizes=(64, 64))
    _, first = _train(config, mnist)
    _, second = _train(config, mnist)
    assert [(r.train_error, r.test_error, r.cost) for r in first] == [(r.train_error, r.test_error, r.cost) for r in second]
    _, other_seed = _train(config.replace(seed=99), mnist)
    assert other_seed[0].cost != first[0].cost


def test_last_partial_batch_is_used(mnist):
    config = Config.for_model("logreg", train_size=300, test_size=100, batch_size=128)
    trainer = Trainer(create_model(config), mnist.subset(300, 100))
    progress = [i for i in trainer.train() if isinstance(i, BatchProgress)]
    assert trainer.n_batches == 3 and progress[-1].batch == 3
    # The third batch holds examples 256..299: training on 300 differs from training on 256.
    config_256 = config.replace(train_size=256)
    a = Trainer(create_model(config), mnist.subset(300, 100))
    b = Trainer(create_model(config_256), mnist.subset(256, 100))
    list(a.train()), list(b.train())
    assert not np.array_equal(a.model.params["w"].get_value(), b.model.params["w"].get_value())


def test_shuffle_changes_the_order_reproducibly(mnist):
    config = Config.for_model("logreg", train_size=512, test_size=100, shuffle=True)
    _, plain = _train(config.replace(shuffle=False), mnist)
    _, shuffled = _train(config, mnist)
    _, again = _train(config, mnist)
    assert shuffled[0].cost != plain[0].cost and shuffled[0].cost == again[0].cost


def test_stop_mid_epoch_rolls_back_to_the_last_finished_epoch(mnist, monkeypatch):
    monkeypatch.setattr(training, "PROGRESS_INTERVAL", 0.0)  # report every batch
    config = Config.for_model("logreg", train_size=2000, test_size=100, batch_size=10, epochs=3)
    trainer = Trainer(create_model(config), mnist.subset(2000, 100))
    control = TrainingControl()
    seen = []
    for item in trainer.train(control=control):
        seen.append(item)
        if isinstance(item, EpochResult):
            weights_after_epoch_1 = trainer.model.params["w"].get_value()
        if isinstance(item, BatchProgress) and item.epoch == 2 and item.batch == 50:
            control.stop()
    assert _results(seen)[-1].epoch == 1 and trainer.model.epochs_done == 1
    assert np.array_equal(trainer.model.params["w"].get_value(), weights_after_epoch_1)


def test_stop_after_this_epoch(mnist):
    config = Config.for_model("logreg", train_size=500, test_size=100, epochs=5)
    control = TrainingControl()
    control.stop_after_epoch = True
    _, results = _train(config, mnist, control=control)
    assert [r.epoch for r in results] == [1]


def test_pause_blocks_between_batches_until_resumed(mnist):
    config = Config.for_model("logreg", train_size=1000, test_size=100, batch_size=50)
    trainer = Trainer(create_model(config), mnist.subset(1000, 100))
    trainer.compile()
    control = TrainingControl()
    control.pause()
    items = []
    worker = threading.Thread(target=lambda: items.extend(trainer.train(control=control)))
    worker.start()
    worker.join(0.5)
    assert worker.is_alive() and items == []  # paused before the first batch
    control.resume()
    worker.join(30)
    assert not worker.is_alive() and _results(items)[0].epoch == 1


def test_divergence_stops_with_a_clear_message_and_keeps_the_last_good_epoch(mnist):
    config = Config.for_model("dropout_mlp", train_size=512, test_size=100, hidden_sizes=(32, 32), epochs=3,
                              optimizer="sgd", learning_rate=10.0, init_std=1.0)
    trainer = Trainer(create_model(config), mnist.subset(512, 100))
    before = trainer.model.params["w_h"].get_value()
    with pytest.raises(TrainingDiverged, match=r"cost became \S+ at epoch 1, batch \d+ of 4; .*rolled back"):
        list(trainer.train())
    after = trainer.model.params["w_h"].get_value()
    assert np.array_equal(before, after) and trainer.model.epochs_done == 0


def test_nan_cost_is_caught_at_its_batch(mnist):
    config = Config.for_model("logreg", train_size=512, test_size=100, epochs=2)
    trainer = Trainer(create_model(config), mnist.subset(512, 100))
    list(trainer.train(1))
    good = trainer.model.params["w"].get_value()
    trainer.model.params["w"].set_value(np.full_like(good, np.inf))
    with pytest.raises(TrainingDiverged, match=r"cost became nan at epoch 2, batch 1 of 4"):
        list(trainer.train(1))
    assert trainer.model.epochs_done == 1


def test_evaluation_numbers():
    probs = np.array([[0.9, 0.1] + [0] * 8, [0.2, 0.8] + [0] * 8, [0.6, 0.4] + [0] * 8], dtype=np.float32)
    evaluation = Evaluation(probs, np.array([0, 1, 1]))
    assert evaluation.error == pytest.approx(1 / 3)
    assert evaluation.confusion()[1].tolist()[:2] == [1, 1]
    assert evaluation.per_class_accuracy()[0] == 1.0 and evaluation.per_class_accuracy()[1] == 0.5
    assert math.isnan(evaluation.per_class_accuracy()[5])
    np.testing.assert_allclose(evaluation.losses, -np.log([0.9, 0.8, 0.4]), rtol=1e-6)


# --- kNN ----------------------------------------------------------------------------------------


def test_knn_matches_brute_force_distances(mnist):
    queries = mnist.test_images[:50].reshape(50, -1)
    train = mnist.train_images[:2000].reshape(2000, -1)
    indices, distances = nearest_neighbours(queries, train, 3)
    brute = np.sqrt(((queries[:, None, :].astype(np.int64) - train[None].astype(np.int64)) ** 2).sum(-1))
    expected = np.argsort(brute, axis=1, kind="stable")[:, :3]
    assert np.array_equal(indices, expected)
    np.testing.assert_allclose(distances, np.take_along_axis(brute, expected, axis=1), rtol=1e-9)


def test_notebooks_similarity_was_wrong_and_ours_is_not():
    """The notebook squared the sum of differences: a dark image 'matches' a bright one of equal sum."""
    query = np.zeros((1, 784), dtype=np.uint8)
    query[0, :4] = 100
    spread = np.zeros(784, dtype=np.uint8)
    spread[100:500] = 1  # same pixel sum as the query, nowhere near it
    close = np.zeros(784, dtype=np.uint8)
    close[:4] = 90
    train = np.stack([spread, close])
    notebook_distance = [np.sqrt(np.sum(query[0].astype(float) - t) ** 2) for t in train]
    assert notebook_distance[0] < notebook_distance[1]  # the notebook picks the wrong one
    indices, _ = nearest_neighbours(query, train, 1)
    assert indices[0, 0] == 1


def test_knn_vote_breaks_ties_by_nearness():
    probs, winners = vote(np.array([[3, 5], [5, 3], [2, 2]]))
    assert winners.tolist() == [3, 5, 2]
    np.testing.assert_allclose(probs[0, [3, 5]], [0.5, 0.5])


def test_knn_trains_in_one_pass_with_progress(mnist):
    config = Config.for_model("knn", k=3, train_size=5000, test_size=500)
    trainer = Trainer(KnnModel(config), mnist.subset(5000, 500))
    items = list(trainer.train())
    assert isinstance(items[-1], EpochResult) and items[-1].test_error < 0.15
    assert math.isnan(items[-1].train_error)
    assert any(isinstance(i, BatchProgress) for i in items)


def test_convnet_learns_on_a_few_thousand_images(mnist):
    # He init leaves the plateau that the notebook's N(0, 0.01) start sits on for hundreds of steps.
    config = Config.for_model("convnet", init="he", train_size=3000, test_size=1000, epochs=2)
    _, results = _train(config, mnist)
    assert results[0].cost > results[1].cost
    assert results[1].test_error < 0.2  # chance is 0.9


_KERNEL_WARMUP_CHILD = r"""
import sys
from mnistgui.core import dropout_ops, ops, softmax_ops, training
from mnistgui.core.config import Config
from mnistgui.core.data import load_dataset
from mnistgui.core.training import Trainer, create_model

kernels = [ops._block_images, ops._im2col_into, ops._col2im_into, ops._corr_direct_into, ops._corr_3x3_one_channel_into,
           ops._corr_weights_direct, ops._max_pool_kernel, ops._max_pool_grad_kernel,
           softmax_ops.softmax_cross_entropy_nb, softmax_ops.softmax_cross_entropy_grad_nb,
           dropout_ops._relu_dropout_kernel, dropout_ops._relu_dropout_grad_kernel]
warmed = {}

def waiting(start, thread_name):
    # Trainer.compile's calls: let each warm-up finish before the step runs, and note what it compiled.
    def start_and_wait(*args):
        thread = start(*args)
        assert thread.name == thread_name and start("float32") is thread
        thread.join()
        warmed.update({k.py_func.__name__: sorted(map(str, k.signatures)) for k in kernels if k.signatures})
        return thread
    return start_and_wait

training.start_kernel_compilation = waiting(ops.start_kernel_compilation, "mnistgui-numba-kernels")
softmax_ops.start_kernel_compilation = waiting(softmax_ops.start_kernel_compilation, "mnistgui-numba-head")
dropout_ops.start_kernel_compilation = waiting(dropout_ops.start_kernel_compilation, "mnistgui-numba-dropout")
assert not any(k.signatures for k in kernels)
dataset = load_dataset("mnist", sys.argv[1]).subset(300, 100)
config = Config.for_model("convnet", backend="c", train_size=300, test_size=100, epochs=1)
trainer = Trainer(create_model(config), dataset)
result = list(trainer.train())[-1]
assert len(warmed) == len(kernels), warmed  # compile() started both warm-ups, which compiled every kernel
trained = {k.py_func.__name__: sorted(map(str, k.signatures)) for k in kernels}
assert trained == warmed, (warmed, trained)
print("same kernels", result.test_error)
"""


def test_convnet_kernels_compiled_ahead_are_the_ones_training_calls(tmp_path):
    """The c backend compiles the convnet's Numba kernels, and the cross-entropy's, on threads while its
    C modules build. The warm-ups must compile the very specializations (dtype, layout) a training step
    calls, else the step compiles its own afterwards and the head start bought nothing."""
    import os
    import subprocess
    import sys

    from tests.conftest import MNIST_DIR

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))  # compiled here, not read from a cache
    child = subprocess.run([sys.executable, "-c", _KERNEL_WARMUP_CHILD, str(MNIST_DIR)], env=env,
                           capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stderr[-3000:]
    assert "same kernels" in child.stdout
