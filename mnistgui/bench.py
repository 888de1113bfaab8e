"""`mnistgui bench`: every model, side by side with PyTorch on the CPU, in one run.

Each (framework, model) pair runs in its own subprocess, so peak memory is that pair's alone and a
cold compile really is cold (fresh PyTensor and Numba caches). Per pair it reports compile time
(cold and warm), the median seconds of a training epoch and images/s, inference time on the test
set, peak resident memory, FLOPs per epoch and the share of the machine's measured float32
matrix-product rate that the epoch reaches.

Timings mean something only on an idle machine with fixed thread counts: a busy second core slows a
run many times over. The thread count is set for NumPy's BLAS and for PyTorch alike.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

MODELS = ("logreg", "mlp", "dropout_mlp", "convnet", "knn")
BACKENDS = ("auto", "c", "numba", "jax")
TORCH_DEVICES = ("cpu", "cuda")


def matmul_ceiling(threads: int) -> float:
    """GFLOP/s of a large float32 NumPy matrix product on `threads` BLAS threads: the practical ceiling."""
    import numpy as np

    n = 2048
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = np.random.default_rng(1).random((n, n), dtype=np.float32)
    with _blas_threads(threads):
        a @ b
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def _blas_threads(threads: int):
    """BLAS held to `threads` threads (the children get it from the environment, this process not)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=threads, user_api="blas")


# --- one measurement, in a child process ------------------------------------------------------------


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _limit_batches(trainer, batches: int | None):
    if batches:
        trainer.train_images = trainer.train_images[: batches * trainer.model.config.batch_size]
        trainer.train_labels = trainer.train_labels[: batches * trainer.model.config.batch_size]


def measure_pytensor(model_name: str, args) -> dict:
    from .core.config import Config
    from .core.data import load_dataset
    from .core.models import forward_flops
    from .core.training import EVAL_CHUNK, EpochResult, KnnModel, Trainer, create_model

    dataset = load_dataset("mnist", args.data).subset(args.train_size, 0)
    config = Config.for_model(model_name, backend=args.backend)
    model = create_model(config)
    trainer = Trainer(model, dataset)
    full_batches = trainer.n_batches
    out = {"framework": "pytensor", "model": model_name, "backend": getattr(model, "backend", "numpy")}
    if out["backend"] == "jax":
        import jax

        out["device"] = jax.default_backend()  # "cpu", or "gpu" with a CUDA jax
    if isinstance(model, KnnModel):
        model.fit(trainer.train_images, trainer.train_labels)
        # A first call compiles the search's Numba kernels (seconds from an empty cache): not inference.
        start = time.perf_counter()
        model.predict_proba(trainer.test_images[:8])
        out["predict_compile_s"] = time.perf_counter() - start
        start = time.perf_counter()
        model.predict_proba(trainer.test_images)
        out["inference_s"] = time.perf_counter() - start
        out["peak_rss_mb"] = _peak_rss_mb()
        return out
    out["compile_s"] = trainer.compile()
    _limit_batches(trainer, args.batches)
    measured_batches = trainer.n_batches
    seconds = []
    for _ in range(args.repeats):
        for item in trainer.train(1, evaluate=False):
            if isinstance(item, EpochResult):
                seconds.append(item.seconds * full_batches / measured_batches)
    # The first call builds the prediction function (JAX compiles it here, for each chunk shape: 3 s for
    # the convnet on a GPU); a full chunk and the last one's remainder, so the timed call finds both.
    start = time.perf_counter()
    model.predict_proba(dataset.test_images[: EVAL_CHUNK + len(dataset.test_images) % EVAL_CHUNK])
    out["predict_compile_s"] = time.perf_counter() - start
    start = time.perf_counter()
    model.predict_proba(dataset.test_images)
    out["inference_s"] = time.perf_counter() - start
    out["epoch_s"] = statistics.median(seconds)
    out["images_per_s"] = len(dataset.train_images) / out["epoch_s"]
    out["flops_per_epoch"] = 3 * forward_flops(config) * len(dataset.train_images)
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def measure_torch(model_name: str, args) -> dict:
    import numpy as np
    import torch
    from torch import nn

    from .core.config import Config
    from .core.data import load_dataset, to_float
    from .core.models import forward_flops

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.torch_device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--torch-device cuda: this PyTorch sees no CUDA device")

    def finish():  # a GPU runs asynchronously: a time means something only once its queue is empty
        if device.type == "cuda":
            torch.cuda.synchronize()

    dataset = load_dataset("mnist", args.data).subset(args.train_size, 0)
    config = Config.for_model(model_name)
    x_train = torch.from_numpy(to_float(dataset.train_images)).to(device)
    y_train = torch.from_numpy(dataset.train_labels.astype(np.int64)).to(device)
    x_test = torch.from_numpy(to_float(dataset.test_images)).to(device)
    out = {"framework": "torch", "model": model_name, "backend": f"torch {torch.__version__}", "device": device.type}
    if model_name == "knn":
        start = time.perf_counter()
        with torch.no_grad():
            train = x_train.double()
            for chunk in torch.split(x_test.double(), 500):
                torch.cdist(chunk, train).argmin(dim=1)
        finish()
        out["inference_s"] = time.perf_counter() - start
        out["peak_rss_mb"] = _peak_rss_mb()
        return out

    def linear(n_in, n_out):
        layer = nn.Linear(n_in, n_out, bias=False)
        nn.init.normal_(layer.weight, std=config.init_std)
        return layer

    def conv(c_in, c_out, padding):
        layer = nn.Conv2d(c_in, c_out, 3, padding=padding, bias=False)
        nn.init.normal_(layer.weight, std=config.init_std)
        return layer

    if model_name == "logreg":
        net = nn.Sequential(linear(784, 10))
    elif model_name == "mlp":
        net = nn.Sequential(linear(784, 625), nn.Sigmoid(), linear(625, 10))
    elif model_name == "dropout_mlp":
        net = nn.Sequential(nn.Dropout(0.2), linear(784, 625), nn.ReLU(), nn.Dropout(0.5),
                            linear(625, 625), nn.ReLU(), nn.Dropout(0.5), linear(625, 10))
    else:
        pool = dict(kernel_size=2, ceil_mode=True)
        net = nn.Sequential(
            nn.Unflatten(1, (1, 28, 28)),
            conv(1, 32, 2), nn.ReLU(), nn.MaxPool2d(**pool), nn.Dropout(0.2),
            conv(32, 64, 0), nn.ReLU(), nn.MaxPool2d(**pool), nn.Dropout(0.2),
            conv(64, 128, 0), nn.ReLU(), nn.MaxPool2d(**pool), nn.Flatten(), nn.Dropout(0.2),
            linear(128 * 3 * 3, 625), nn.ReLU(), nn.Dropout(0.5), linear(625, 10))
    net.to(device)
    if config.optimizer == "rmsprop":
        optimizer = torch.optim.RMSprop(net.parameters(), lr=config.learning_rate, alpha=config.rho, eps=config.epsilon)
    else:
        optimizer = torch.optim.SGD(net.parameters(), lr=config.learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    size = config.batch_size
    n_batches = -(-len(x_train) // size)
    measured = min(args.batches or n_batches, n_batches)

    def epoch():
        net.train()
        start = time.perf_counter()
        for b in range(measured):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(net(x_train[b * size : (b + 1) * size]), y_train[b * size : (b + 1) * size])
            loss.backward()
            optimizer.step()
        finish()
        return (time.perf_counter() - start) * n_batches / measured

    seconds = [epoch() for _ in range(args.repeats)]
    net.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for chunk in torch.split(x_test, 1000):
            net(chunk)
    finish()
    out["inference_s"] = time.perf_counter() - start
    out["epoch_s"] = statistics.median(seconds)
    out["images_per_s"] = len(x_train) / out["epoch_s"]
    out["flops_per_epoch"] = 3 * forward_flops(config) * len(x_train)
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def _child(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("framework", choices=("pytensor", "torch", "roofline"))
    parser.add_argument("model")
    parser.add_argument("--data")
    parser.add_argument("--train-size", type=int, default=0)
    parser.add_argument("--batches", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--torch-device", default="cpu", choices=TORCH_DEVICES)
    args = parser.parse_args(argv)
    if args.framework == "roofline":
        from . import roofline

        result = roofline.report(matmul_ceiling(args.threads), args.data)
    else:
        measure = measure_torch if args.framework == "torch" else measure_pytensor
        result = measure(args.model, args)
    print("RESULT " + json.dumps(result), flush=True)


def _run_child(framework, model, args, compiledir) -> dict:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(args.threads)
    # base_compiledir, not compiledir: PyTensor keeps its Numba cache beside the compile folder, under the
    # base one; NUMBA_CACHE_DIR moves the cache of mnistgui's own kernels. A fresh folder is a fresh install.
    env["PYTENSOR_FLAGS"] = ",".join(filter(None, [env.get("PYTENSOR_FLAGS"), f"base_compiledir={compiledir}"]))
    env["NUMBA_CACHE_DIR"] = os.path.join(compiledir, "numba-kernels")
    command = [sys.executable, "-m", "mnistgui.bench", framework, model, "--train-size", str(args.train_size),
               "--batches", str(args.batches), "--repeats", str(args.repeats), "--threads", str(args.threads),
               "--backend", args.backend, "--torch-device", args.torch_device]
    if args.data:
        command += ["--data", args.data]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    for line in result.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"framework": framework, "model": model, "error": tail[0]}


def _fmt(value, pattern="{:.2f}"):
    return "-" if value is None else pattern.format(value)


def blas_kernels(threads: int) -> str:
    """Which BLAS and kernel family NumPy runs, as threadpoolctl reports it, on `threads` threads."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl is not installed)"
    with _blas_threads(threads):
        found = [f"{info.get('internal_api')} {info.get('version') or ''} {info.get('architecture') or ''} "
                 f"({info.get('num_threads')} threads)".replace("  ", " ")
                 for info in threadpool_info() if info.get("user_api") == "blas"]
    return ", ".join(found) or "none found"


def _row(model: str, ours: dict, theirs: dict, others: dict, ceiling: float) -> dict:
    flops = ours.get("flops_per_epoch")
    epoch = ours.get("epoch_s")
    row = {"model": model, "mnistgui": ours, "torch": theirs, "backends": others,
           "ceiling_share": flops / epoch / 1e9 / ceiling if flops and epoch else None,
           "epoch_ratio": epoch / theirs["epoch_s"] if epoch and theirs.get("epoch_s") else None}
    for name, result in others.items():
        other_epoch = result.get("epoch_s")
        row[f"{name}_ratio_to_main"] = other_epoch / epoch if other_epoch and epoch else None
    return row


def _devices(results) -> str:
    """' (gpu)' where a measurement ran off the CPU, for a column's header."""
    found = sorted({r.get("device") for r in results if r.get("device") not in (None, "cpu")})
    return f" ({', '.join(found)})" if found else ""


def _print_table(rows: list[dict], extra_backends: list[str]) -> None:
    ours = _devices(row["mnistgui"] for row in rows)
    torch = "PyTorch" + _devices(row["torch"] for row in rows)
    header = (f"| model | compile cold / warm (s) | epoch{ours} (s) | images/s | inference 10k (s) | peak RSS (MB) "
              f"| GFLOP/epoch | % of ceiling | {torch} epoch (s) | {torch} inference (s) | epoch ratio |")
    header += "".join(f" {name}{_devices(row['backends'].get(name, {}) for row in rows)} epoch (s) |"
                      for name in extra_backends)
    print(header)
    print("| " + " | ".join(["---"] * (11 + len(extra_backends))) + " |")
    for row in rows:
        model, ours, theirs = row["model"], row["mnistgui"], row["torch"]
        if "error" in ours:
            print(f"| {model} | failed: {ours['error']} |")
            continue
        flops = ours.get("flops_per_epoch")
        compile_text = "-" if model == "knn" else f"{ours.get('compile_cold_s', 0):.1f} / {ours.get('compile_s', 0):.1f}"
        line = (f"| {model} | {compile_text} | {_fmt(ours.get('epoch_s'))} | {_fmt(ours.get('images_per_s'), '{:,.0f}')} "
                f"| {_fmt(ours.get('inference_s'))} | {ours.get('peak_rss_mb', 0):.0f} "
                f"| {_fmt(flops / 1e9 if flops else None, '{:.0f}')} | {_fmt(row['ceiling_share'], '{:.0%}')} "
                f"| {_fmt(theirs.get('epoch_s'))} | {_fmt(theirs.get('inference_s'))} | {_fmt(row['epoch_ratio'], '{:.2f}x')} |")
        for name in extra_backends:
            other = row["backends"].get(name, {})
            if "error" in other:
                line += f" failed: {other['error']} |"
            else:
                ratio = row.get(f"{name}_ratio_to_main")
                line += f" {_fmt(other.get('epoch_s'))}{'' if ratio is None else f' ({ratio:.2f}x)'} |"
        print(line)


def run(args) -> int:
    from .core.data import load_dataset

    load_dataset("mnist", args.data)  # fail once, with the usual message, before any child starts
    # With --json, stdout carries the one JSON document alone; what a person reads goes to stderr.
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    try:
        import torch  # noqa: F401  (only whether it imports)

        have_torch = not args.no_torch
    except ImportError:
        have_torch = False
        if not args.no_torch:
            say("PyTorch is not installed: measuring mnistgui alone (pip install 'mnistgui[bench]' adds it)")
    requested = list(dict.fromkeys(args.backends or [args.backend]))  # each once, in order
    main_backend, *extra_backends = requested
    args.backend = main_backend
    ceiling = matmul_ceiling(args.threads)
    blas = blas_kernels(args.threads)
    say(f"float32 matrix-product ceiling: {ceiling:.0f} GFLOP/s on {args.threads} threads; NumPy's BLAS: {blas}")
    say(f"training set: {args.train_size or 60000} images; "
        f"{'all' if not args.batches else args.batches} batches per timed epoch; median of {args.repeats}")
    rows = []
    for model in args.models:
        with tempfile.TemporaryDirectory(prefix="mnistgui-bench-") as compiledir:
            cold = _run_child("pytensor", model, args, compiledir)
            warm = _run_child("pytensor", model, args, compiledir) if model != "knn" else cold
        ours = dict(warm, compile_cold_s=cold.get("compile_s"))
        theirs = _run_child("torch", model, args, tempfile.gettempdir()) if have_torch else {}
        others = {}
        if model != "knn":
            for name in extra_backends:
                with tempfile.TemporaryDirectory(prefix="mnistgui-bench-") as compiledir:
                    others[name] = _run_child("pytensor", model, argparse.Namespace(**{**vars(args), "backend": name}),
                                              compiledir)
        row = _row(model, ours, theirs, others, ceiling)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    roofline = None
    if args.roofline:
        with tempfile.TemporaryDirectory(prefix="mnistgui-bench-") as compiledir:
            roofline = _run_child("roofline", "convnet", args, compiledir)
    failed = [f"{row['model']} ({name})" for row in rows
              for name, result in [("mnistgui", row["mnistgui"]), ("torch", row["torch"]), *row["backends"].items()]
              if "error" in result]
    if roofline is not None and "error" in roofline:
        failed.append("roofline")
    status = 1 if failed else 0  # a script sees a failed measurement in the exit status too
    if args.json:
        print(json.dumps({"ceiling_gflops": ceiling, "blas": blas, "threads": args.threads,
                          "train_size": args.train_size or 60000, "batches": args.batches, "repeats": args.repeats,
                          "backends": [main_backend, *extra_backends], "rows": rows, "roofline": roofline,
                          "failed": failed}, indent=1))
        return status
    _print_table(rows, extra_backends)
    if roofline is not None:
        from . import roofline as roofline_module

        if "error" in roofline:
            print(f"roofline failed: {roofline['error']}")
        else:
            roofline_module.print_report(roofline)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return status


def add_parser(commands):
    bench = commands.add_parser("bench", help="time every model, side by side with PyTorch",
                                description="Benchmark training and inference, with PyTorch CPU beside "
                                            "(if installed). Run it on an idle machine.")
    bench.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    bench.add_argument("--data", metavar="DIR")
    bench.add_argument("--train-size", type=int, default=0, help="first N training images (0: all 60,000)")
    bench.add_argument("--batches", type=int, default=0, help="time only N batches per epoch, and extrapolate")
    bench.add_argument("--repeats", type=int, default=2, help="epochs per measurement; the median is reported")
    bench.add_argument("--threads", type=int, default=2)
    bench.add_argument("--backend", default="auto", choices=BACKENDS)
    bench.add_argument("--backends", nargs="+", choices=BACKENDS, metavar="BACKEND",
                       help="the first as --backend; each other adds a column of its epoch time (e.g. c numba jax)")
    bench.add_argument("--roofline", action="store_true",
                       help="also time each convnet kernel (C backend) against the ceiling and the memory bandwidth")
    bench.add_argument("--json", action="store_true",
                       help="print one JSON document on stdout instead of the table (progress on stderr)")
    bench.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    bench.add_argument("--torch-device", default="cpu", choices=TORCH_DEVICES,
                       help="where PyTorch runs: its CPU (the default, the comparison the targets use) or "
                            "cuda, beside a GPU jax")
    bench.set_defaults(func=run)
    return bench


if __name__ == "__main__":
    _child(sys.argv[1:])
