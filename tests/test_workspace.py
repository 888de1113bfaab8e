"""The Qt-free workspace: runs, events, snapshots on disk, open/evaluate/resume; and the import rule."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from mnistgui.core.config import Config
from mnistgui.core.errors import ConfigError, DataNotFoundError
from mnistgui.core.training import EpochResult
from mnistgui.core.workspace import EpochAdded, PredictionsReady, RunAdded, RunChanged, SnapshotStore, Workspace

from .conftest import MNIST_DIR, ROOT


@pytest.fixture
def workspace():
    workspace = Workspace(data_dir=str(MNIST_DIR))
    yield workspace
    workspace.close()


def _train(workspace, run, epochs=None):
    return [r for r in workspace.train(workspace.training_job(run, epochs)) if isinstance(r, EpochResult)]


def test_events_follow_a_run_from_creation_to_its_last_epoch(workspace):
    events = []
    unsubscribe = workspace.subscribe(events.append)
    run = workspace.new_run(Config.for_model("logreg", train_size=1000, test_size=200, epochs=2))
    results = _train(workspace, run)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["RunAdded", "EpochAdded", "PredictionsReady", "EpochAdded", "PredictionsReady"]
    assert [e.result.epoch for e in events if isinstance(e, EpochAdded)] == [1, 2]
    assert all(e.run is run for e in events) and run.key == 1 and run.history == results
    assert run.test_probs.shape == (200, 10)
    assert run.evaluation().error == pytest.approx(results[-1].test_error)
    with pytest.raises(AttributeError):  # events are immutable
        events[0].run = None
    unsubscribe()
    workspace.new_run(Config.for_model("logreg", train_size=100, test_size=100))
    assert len(events) == 5 and len(workspace.runs) == 2


def test_save_open_evaluate_and_resume_exactly(workspace, tmp_path):
    config = Config.for_model("dropout_mlp", hidden_sizes=(32, 32), train_size=1500, test_size=300, epochs=2,
                              batch_size=50, seed=3)
    uninterrupted = workspace.new_run(config.replace(epochs=3))
    _train(workspace, uninterrupted)
    first = workspace.new_run(config)
    _train(workspace, first)
    path = tmp_path / "two.h5"
    workspace.save(first, str(path))

    other = Workspace(data_dir=str(MNIST_DIR))
    try:
        events = []
        other.subscribe(events.append)
        opened = other.open_model(str(path))
        assert isinstance(events[0], RunAdded) and opened.config == config and opened.epochs_done == 2
        assert len(opened.snapshots) == 1 and opened.snapshots[0][0] == 2
        evaluation = other.evaluate(opened)
        assert evaluation.error == pytest.approx(first.history[-1].test_error)
        assert other.evaluate(opened, test_size=100).labels.shape == (100,)

        job = other.resume(opened, 1, {})
        results = [r for r in other.train(job) if isinstance(r, EpochResult)]
        assert [r.epoch for r in opened.history] == [1, 2, 3] and results[0].epoch == 3
        for name, value in uninterrupted.state["params"].items():
            np.testing.assert_array_equal(opened.state["params"][name], value)
        np.testing.assert_array_equal(opened.test_probs, uninterrupted.test_probs)
        assert isinstance(events[-1], PredictionsReady)
    finally:
        other.close()


def test_resume_refuses_an_architecture_change_by_name(workspace):
    run = workspace.new_run(Config.for_model("logreg", train_size=500, test_size=100))
    _train(workspace, run)
    with pytest.raises(ConfigError, match="model"):
        workspace.resume(run, 1, {"model": "mlp"})
    with pytest.raises(ConfigError, match="nearest neighbours"):
        knn = workspace.new_run(Config.for_model("knn", train_size=500, test_size=50))
        workspace.resume(knn, 1, {})
    events = []
    workspace.subscribe(events.append)
    job = workspace.resume(run, 4, {})
    assert job.epochs == 4 and run.config.epochs == 4 and isinstance(events[0], RunChanged)


def test_snapshots_live_on_disk_with_one_in_memory(workspace):
    config = Config.for_model("mlp", hidden_sizes=(64,), train_size=500, test_size=100, epochs=6, batch_size=100)
    run = workspace.new_run(config)
    one_set = (784 * 64 + 64 * 10) * 4
    sizes = []
    for item in workspace.train(workspace.training_job(run)):
        if isinstance(item, EpochResult):
            sizes.append(run.snapshots.bytes_in_memory)
    assert len(run.snapshots) == 6 and sizes == [one_set] * 6
    epoch, first = run.snapshots[0]
    last_epoch, last = run.snapshots[-1]
    assert (epoch, last_epoch) == (1, 6) and not np.array_equal(first["w_h"], last["w_h"])
    np.testing.assert_array_equal(last["w_h"], run.state["params"]["w_h"])
    assert run.snapshots.bytes_in_memory == one_set  # only the one read last
    assert run.snapshots.path.stat().st_size > 6 * one_set


def test_snapshot_store_is_a_sequence(tmp_path):
    store = SnapshotStore(tmp_path / "s.h5")
    store.append(1, {"b": np.ones(3, np.float32), "a": np.zeros((2, 2), np.float32)})
    store.append(2, {"b": np.full(3, 2, np.float32), "a": np.ones((2, 2), np.float32)})
    assert len(store) == 2 and list(store[0][1]) == ["b", "a"] and store[0][1]["b"][0] == 1
    assert store[-1][0] == 2 and store[1][1]["a"].sum() == 4
    with pytest.raises(IndexError):
        store[2]


def test_close_removes_the_snapshot_files():
    workspace = Workspace(data_dir=str(MNIST_DIR))
    run = workspace.new_run(Config.for_model("logreg", train_size=300, test_size=50))
    _train(workspace, run)
    folder = run.snapshots.path.parent
    assert run.snapshots.path.exists()
    workspace.close()
    assert not folder.exists()


def test_data_folder_is_a_command_and_the_preferred_folder_a_preference(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    commanded = Workspace(data_dir=str(empty))
    with pytest.raises(DataNotFoundError) as raised:
        commanded.dataset("mnist")
    assert raised.value.dataset_name == "mnist"
    monkeypatch.setenv("MNISTGUI_DATA", str(MNIST_DIR))
    preferring = Workspace(preferred_data_dir=str(empty))
    assert len(preferring.dataset("mnist").test_labels) == 10000
    assert preferring.dataset("mnist") is preferring.cached_dataset("mnist")
    commanded.close()
    preferring.close()


def test_layer_function_is_cached_per_configuration(workspace, mnist):
    config = Config.for_model("convnet", conv_filters=(4, 8), hidden_sizes=(16,))
    function = workspace.layer_function(config)
    assert workspace.cached_layer_function(config) is function
    assert workspace.cached_layer_function(config.replace(conv_filters=(4, 4))) is None
    from mnistgui.core.models import init_parameters

    weights = {k: v.get_value() for k, v in init_parameters(config).items()}
    layers = function(weights, mnist.test_images[:2].reshape(2, -1))
    assert layers["conv1"].shape == (2, 4, 30, 30) and layers["probs"].shape == (2, 10)


# --- the import rule ---------------------------------------------------------------------------------

QT = ("PyQt5", "pyqtgraph")


def _imports(path: Path):
    """(module imported, at module level?) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    top_level = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            yield name, id(node) in top_level


def test_core_and_cli_import_neither_qt_nor_the_gui():
    files = sorted((ROOT / "mnistgui" / "core").glob("*.py"))
    assert len(files) >= 10
    for path in files:
        for name, _ in _imports(path):
            assert not name.startswith(QT), f"{path.name} imports {name}"
            assert not name.startswith("mnistgui.gui"), f"{path.name} imports {name}"
    for name, top in _imports(ROOT / "mnistgui" / "cli.py"):
        assert not name.startswith(QT), f"cli.py imports {name}"
        # The window is opened from inside main(), so the headless commands never load Qt.
        assert not (top and name.startswith("mnistgui.gui")), f"cli.py imports {name} at module level"


def test_the_import_rule_catches_an_import(tmp_path, monkeypatch):
    import tests.test_workspace as me

    fake_root = tmp_path
    (fake_root / "mnistgui" / "core").mkdir(parents=True)
    bad = fake_root / "mnistgui" / "core" / "bad.py"
    bad.write_text("def f():\n    from ..gui import plots\n    import pyqtgraph as pg\n")
    monkeypatch.setattr(me, "ROOT", fake_root)
    found = [name for name, _ in _imports(bad)]
    assert "mnistgui.gui" in found and "pyqtgraph" in found


def test_export_histories_writes_every_run_or_says_why_not(workspace, tmp_path):
    from mnistgui.core.errors import MnistguiError

    for seed in (1, 2):
        _train(workspace, workspace.new_run(Config.for_model("logreg", train_size=300, test_size=50, epochs=2, seed=seed)))
    workspace.export_histories(str(tmp_path / "h.csv"))
    lines = (tmp_path / "h.csv").read_text().splitlines()
    assert lines[0] == "run,model,epoch,train_error,test_error,cost,seconds" and len(lines) == 5
    assert [line.split(",")[:3] for line in lines[1:]] == [["1", "logreg", "1"], ["1", "logreg", "2"],
                                                           ["2", "logreg", "1"], ["2", "logreg", "2"]]
    with pytest.raises(MnistguiError, match="cannot write .*missing"):
        workspace.export_histories(str(tmp_path / "missing" / "h.csv"))
