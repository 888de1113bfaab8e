"""The command line, run as a user runs it: a subprocess, with its output and exit status."""

import csv
import json
import os
import subprocess
import sys

import h5py
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
    assert list(rows[0])[:7] == ["epoch", "train_error", "test_error", "cost", "seconds", "val_error", "learning_rate"]
    assert list(rows[0])[7:] == [*(f"accuracy_{digit}" for digit in range(10)), "robust_accuracy"]
    assert rows[0]["robust_accuracy"] == ""  # no adversarial training, no robustness check
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


def _strict_json(text: str):
    """json.loads accepts NaN and Infinity, which are not JSON; this does not."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def knn_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("knn") / "knn.h5"
    result = run("train", "--model", "knn", "--train-size", "1000", "--test-size", "100", "--save", str(path))
    assert result.returncode == 0, result.stderr
    return path


def test_json_outputs_are_strict_json_with_null_for_missing_numbers(knn_file):
    info = run("info", str(knn_file), "--json")
    assert info.returncode == 0, info.stderr
    assert "NaN" not in info.stdout
    row = _strict_json(info.stdout)["history"][0]
    assert row["train_error"] is None and row["cost"] is None and 0 <= row["test_error"] < 0.3
    evaluation = run("evaluate", str(knn_file), "--json", "--test-size", "100")
    assert evaluation.returncode == 0, evaluation.stderr
    result = _strict_json(evaluation.stdout)
    assert result["n_test"] == 100 and sum(map(sum, result["confusion"])) == 100
    assert all(v is None or 0 <= v <= 1 for v in result["per_class_accuracy"])


def test_output_into_a_closed_pipe_ends_quietly(knn_file):
    """`mnistgui evaluate --json | head` where head has gone: no BrokenPipeError traceback."""
    process = subprocess.Popen([sys.executable, "-m", "mnistgui", "evaluate", str(knn_file), "--json",
                                "--test-size", "50"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "MNISTGUI_DATA": str(MNIST_DIR)})
    process.stdout.close()  # the reader is gone before the first byte is written
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=600) == 141  # 128 + SIGPIPE, as a shell reports a tool stopped by it
    assert stderr == ""


INTERNAL_ERROR = """
import sys
from mnistgui import cli
def broken(*args):
    raise RuntimeError("an invariant broke\\nover two lines")
cli.cmd_info = cli._open_window = broken  # what no input can do: stand for a bug
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command, hint", [(["info", "m.h5"], "mnistgui --debug info ..."),
                                           ([], "mnistgui --debug ...")])
def test_unexpected_error_is_one_line_and_exit_1_and_debug_shows_the_traceback(command, hint):
    result = subprocess.run([sys.executable, "-c", INTERNAL_ERROR, *command], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == ("mnistgui: internal error: RuntimeError: an invariant broke over two lines "
                             f"({hint} shows the traceback)\n")
    debug = subprocess.run([sys.executable, "-c", INTERNAL_ERROR, "--debug", *command],
                           capture_output=True, text=True, timeout=300)
    assert debug.returncode == 1
    assert debug.stderr.startswith("Traceback (most recent call last):") and "in broken" in debug.stderr
    assert debug.stderr.endswith("mnistgui: internal error: RuntimeError: an invariant broke over two lines\n")


@pytest.mark.parametrize(
    "args, message",
    [
        (["trian"], "unknown command 'trian' (did you mean 'train'? commands: train, evaluate, info, download, precompile, bench"),
        (["xyzzy", "--models", "logreg"], "unknown command 'xyzzy' (commands: train,"),
        (["reprodce", "--models", "logreg"], "unknown command 'reprodce' (did you mean 'reproduce'?"),
        (["evalute", "m.h5"], "unknown command 'evalute' (did you mean 'evaluate'?"),
        (["nosuchfile.h5"], "nosuchfile.h5: no such file"),
        (["--debug", "models/nosuchfile"], "models/nosuchfile: no such file"),
        (["setup.py"], "setup.py: not an HDF5 model file"),
        (["tests"], "tests: is a folder, not a model file"),
    ],
)
def test_a_first_word_that_is_no_command_or_model_file_never_opens_the_window(args, message):
    # Were the window to open, it would close itself after 100 ms and exit 0: the test would fail, not hang.
    result = run(*args, env={"QT_QPA_PLATFORM": "offscreen", "MNISTGUI_EXIT_AFTER_MS": "100"},
                 cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("mnistgui: error: " + message) and result.stderr.count("\n") == 1
    assert result.stdout == ""


def test_a_model_file_then_more_words_is_refused(knn_file):
    result = run(str(knn_file), "--epochs", "3", env={"MNISTGUI_EXIT_AFTER_MS": "100"})
    assert result.returncode == 2 and "the window opens one model file; unexpected '--epochs 3'" in result.stderr


def test_evaluate_refuses_a_knn_store_claiming_millions_of_images(tmp_path, knn_file):
    bomb = tmp_path / "bomb.h5"
    bomb.write_bytes(knn_file.read_bytes())
    with h5py.File(bomb, "r+") as f:
        del f["knn/images"], f["knn/labels"]
        f.create_dataset("knn/images", shape=(200_000_000, 784), dtype="u1", chunks=(4096, 784), compression="gzip")
        f.create_dataset("knn/labels", shape=(200_000_000,), dtype="u1", chunks=(65536,), compression="gzip")
    result = run("evaluate", str(bomb))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "stores 200000000 kNN training images; its configuration allows 1 to 1000" in result.stderr


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
