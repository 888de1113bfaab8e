"""The command line, run as a user runs it: a subprocess, with its output and exit status."""

import csv
import json
import os
import subprocess
import sys

import pytest

from mnistgui import __version__

from .conftest import MNIST_DIR


def run(*args, env=None, cwd=None):
    full_env = {**os.environ, "MNISTGUI_DATA": str(MNIST_DIR), **(env or {})}
    return subprocess.run([sys.executable, "-m", "mnistgui", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=600)


def test_version_and_help():
    assert run("--version").stdout.strip() == f"mnistgui {__version__}"
    for command in ("train", "evaluate", "info", "download"):
        result = run(command, "--help")
        assert result.returncode == 0 and "usage: mnistgui " + command in result.stdout


def test_train_save_log_info_evaluate(tmp_path):
    model, log = tmp_path / "m.h5", tmp_path / "log.csv"
    result = run("train", "--model", "logreg", "--epochs", "2", "--train-size", "2000", "--test-size", "500",
                 "--save", str(model), "--log", str(log))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2 and "test error" in lines[0]
    assert "\r" not in result.stderr  # no progress bar outside a terminal
    rows = list(csv.DictReader(log.open()))
    assert list(rows[0]) == ["epoch", "train_error", "test_error", "cost", "seconds"]
    assert [r["epoch"] for r in rows] == ["1", "2"] and 0 < float(rows[1]["test_error"]) < 0.5

    info = json.loads(run("info", str(model), "--json").stdout)
    assert info["model"] == "logreg" and info["epochs_done"] == 2
    assert info["history"][1]["test_error"] == pytest.approx(float(rows[1]["test_error"]))

    evaluation = json.loads(run("evaluate", str(model), "--json", "--test-size", "500").stdout)
    assert evaluation["test_error"] == pytest.approx(float(rows[1]["test_error"]))
    assert len(evaluation["confusion"]) == 10 and sum(map(sum, evaluation["confusion"])) == 500
    text = run("evaluate", str(model), "--test-size", "500")
    assert "confusion matrix" in text.stdout and text.returncode == 0

    resumed = run("train", "--resume", str(model), "--epochs", "1", "--save", str(model), "--log", str(log))
    assert resumed.returncode == 0, resumed.stderr
    assert "epoch   3" in resumed.stdout
    assert [r["epoch"] for r in csv.DictReader(log.open())] == ["1", "2", "3"]


def test_knn_writes_one_row(tmp_path):
    log = tmp_path / "knn.csv"
    result = run("train", "--model", "knn", "--train-size", "1000", "--test-size", "100", "--log", str(log))
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(log.open()))
    assert len(rows) == 1 and rows[0]["train_error"] == "" and 0 <= float(rows[0]["test_error"]) < 0.3


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--model", "resnet"], "invalid choice: 'resnet'"),
        (["train", "--lr", "-1"], "learning_rate must be in"),
        (["train", "--hidden", "a,b"], "expected comma-separated integers"),
        (["info", "/nonexistent.h5"], "/nonexistent.h5: no such file"),
        (["train", "--data", "/nonexistent-dir"], "/nonexistent-dir: no such folder"),
        (["evaluate", "setup.py"], "setup.py: not an HDF5 model file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = run(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_missing_data_offline_says_where_it_looked(tmp_path):
    env = {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "share"), "MNISTGUI_DATA": ""}
    result = run("train", "--no-download", env=env, cwd=tmp_path)
    assert result.returncode == 2 and "MNIST not found. Looked in:" in result.stderr
    assert "MNISTGUI_DATA" in result.stderr and "Traceback" not in result.stderr


def test_corrupt_data_file_is_named(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in os.listdir(MNIST_DIR):
        if name.endswith("ubyte.gz"):
            (folder / name).write_bytes((MNIST_DIR / name).read_bytes())
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    result = run("train", "--data", str(folder))
    assert result.returncode == 2 and "t10k-labels-idx1-ubyte.gz: corrupt or truncated gzip" in result.stderr


def test_core_and_cli_never_import_qt():
    code = ("import sys, mnistgui.cli, mnistgui.core.training, mnistgui.core.modelfile, mnistgui.core.data;"
            "print(any(m.startswith(('PyQt5', 'pyqtgraph')) for m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
