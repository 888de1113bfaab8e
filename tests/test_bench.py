"""`mnistgui bench`: its JSON for scripts, its extra backend columns and the convnet roofline's counts.

Timings are never asserted here (they are the benchmark's output, not a test's); what is asserted
is the shape of the report and every figure that follows from counting: FLOPs, bytes, ratios.
"""

import json

import pytest

from mnistgui import roofline
from mnistgui.core.config import Config
from mnistgui.core.models import forward_flops

from .conftest import MNIST_DIR
from .test_cli import run


def test_bench_json_with_a_second_backend():
    result = run("bench", "--models", "logreg", "knn", "--train-size", "640", "--batches", "2", "--repeats", "1",
                 "--no-torch", "--backends", "c", "numba", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # stdout holds the document alone
    assert report["backends"] == ["c", "numba"] and report["train_size"] == 640 and report["ceiling_gflops"] > 0
    assert report["blas"] and report["failed"] == []
    logreg, knn = report["rows"]
    ours = logreg["mnistgui"]
    assert logreg["model"] == "logreg" and ours["backend"] == "c" and ours["epoch_s"] > 0
    assert ours["compile_cold_s"] > 0 and ours["compile_s"] > 0 and ours["predict_compile_s"] > 0
    assert ours["flops_per_epoch"] == 3 * 2 * 784 * 10 * 640
    assert logreg["ceiling_share"] == pytest.approx(
        ours["flops_per_epoch"] / ours["epoch_s"] / 1e9 / report["ceiling_gflops"])
    numba = logreg["backends"]["numba"]
    assert numba["backend"] == "numba" and numba["epoch_s"] > 0
    assert logreg["numba_ratio_to_main"] == pytest.approx(numba["epoch_s"] / ours["epoch_s"])
    assert logreg["torch"] == {} and logreg["epoch_ratio"] is None
    assert knn["model"] == "knn" and knn["mnistgui"]["inference_s"] > 0 and knn["backends"] == {}
    assert report["roofline"] is None
    assert "ceiling" in result.stderr  # what a person reads went to stderr


def test_bench_table_names_the_extra_backend_column():
    result = run("bench", "--models", "logreg", "--train-size", "256", "--batches", "1", "--repeats", "1",
                 "--no-torch", "--backends", "c", "numba")
    assert result.returncode == 0, result.stderr
    header, rule, row = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert header.endswith("| numba epoch (s) |") and rule.count("---") == 12
    assert row.startswith("| logreg |") and row.count("|") == header.count("|")


def test_roofline_counts_follow_the_model():
    config = Config.for_model("convnet", conv_filters=(4, 8, 8), hidden_sizes=(16,))
    batch = 16
    kernels = roofline.convnet_kernels(config, batch=batch)
    names = [(k.layer, k.kernel) for k in kernels]
    assert names[:5] == [("conv1", "forward"), ("conv1", "weight gradient"), ("pool1", "forward"),
                         ("pool1", "gradient"), ("conv2", "forward")]
    assert ("conv1", "input gradient") not in names and ("conv2", "input gradient") in names
    # The forward kernels' FLOPs are the model's forward pass, counted from its graph.
    forward = sum(k.flops for k in kernels if k.kernel == "forward")
    assert forward == forward_flops(config) * batch
    conv2 = kernels[names.index(("conv2", "forward"))]
    assert conv2.flops == 2 * batch * 13 * 13 * 8 * 4 * 9  # 15x15x4 pooled maps -> 13x13x8
    assert conv2.bytes == 4 * (batch * 15 * 15 * 4 + 8 * 4 * 9 + batch * 13 * 13 * 8)
    pool3 = kernels[names.index(("pool3", "forward"))]
    assert pool3.flops == 0 and pool3.bytes == 4 * batch * 8 * (5 * 5 + 3 * 3)
    row = conv2.row(ceiling_gflops=100.0, bandwidth_gbs=10.0)
    assert row["flop_per_byte"] == pytest.approx(conv2.flops / conv2.bytes)
    assert row["roof_gflops"] == pytest.approx(min(100.0, 10.0 * conv2.flops / conv2.bytes))
    assert row["of_roof"] == pytest.approx(conv2.flops / conv2.seconds / 1e9 / row["roof_gflops"])
    assert pool3.row(100.0, 10.0)["roof_gflops"] is None



def test_roofline_report_profiles_a_real_step(capsys):
    """The step's split by Op comes from PyTensor's profiler over real training steps of the model."""
    config = Config.for_model("convnet", conv_filters=(8, 16), hidden_sizes=(32,), init="he", backend="c")
    result = roofline.report(100.0, str(MNIST_DIR), config=config)
    assert result["step_ms"] > 0 and result["profiled_step_ms"] > 0 and result["bandwidth_gbs"] > 0
    assert len(result["kernels"]) == 4 + 5 + 6  # conv1 and pool1 (no input gradient), conv2 and pool2, 2 dense
    by_op = result["step_ms_by_op"]
    for op in ("Corr2dValid", "Corr2dWeights", "Corr2dInputGrad", "MaxPool2x2", "MaxPool2x2Grad",
               "MatMulInParts", "Elemwise"):
        assert by_op[op] > 0, op
    assert sum(by_op.values()) <= result["profiled_step_ms"] * 1.05  # the Ops' time lies within the steps'
    assert list(by_op.values()) == sorted(by_op.values(), reverse=True)
    try:
        from pytensor.compile.debug import profiling
    except ImportError:
        from pytensor.compile import profiling
    assert profiling._atexit_print_list == []  # nothing left to print at exit
    roofline.print_report(result)
    printed = capsys.readouterr().out
    assert "| conv2 | input gradient |" in printed and "| Corr2dValid |" in printed


def test_bench_torch_on_cuda_without_a_gpu_is_a_named_failure():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this PyTorch has a GPU")
    result = run("bench", "--models", "logreg", "--train-size", "256", "--batches", "1", "--repeats", "1",
                 "--torch-device", "cuda", "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["failed"] == ["logreg (torch)"]
    assert "no CUDA device" in report["rows"][0]["torch"]["error"]
    assert report["rows"][0]["mnistgui"]["epoch_s"] > 0  # the rest still measured


def test_bench_table_headers_name_a_device_other_than_the_cpu(capsys):
    from mnistgui.bench import _print_table

    ours = {"epoch_s": 2.0, "compile_s": 1.0, "compile_cold_s": 5.0, "flops_per_epoch": None}
    rows = [{"model": "convnet", "mnistgui": ours, "torch": {"epoch_s": 1.0, "device": "cuda"},
             "backends": {"jax": {"epoch_s": 0.5, "device": "gpu"}, "numba": {"epoch_s": 3.0, "device": None}},
             "ceiling_share": None, "epoch_ratio": 2.0, "jax_ratio_to_main": 0.25, "numba_ratio_to_main": 1.5}]
    _print_table(rows, ["jax", "numba"])
    header, _, row = capsys.readouterr().out.splitlines()
    assert "| epoch (s) |" in header and "| PyTorch (cuda) epoch (s) | PyTorch (cuda) inference (s) |" in header
    assert header.endswith("| jax (gpu) epoch (s) | numba epoch (s) |")
    assert row.endswith("| 2.00x | 0.50 (0.25x) | 3.00 (1.50x) |")
