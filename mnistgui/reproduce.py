"""`mnistgui reproduce`: the notebook's models with its settings, over several seeds, beside its figures.

One seed is one draw of the initial weights (and of the dropout masks): the notebook shows one draw,
and its first convnet epoch (5.88%) turns out to be a fortunate one. This trains each model from
`--seeds` draws and prints, per model and epoch, the notebook's test error beside the median,
minimum and maximum over the seeds; `--csv` and `--json` write the same rows.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import sys
import time

from .core.config import MODEL_TITLES, Config
from .core.errors import MnistguiError
from .core.notebook import notebook_test_errors

REPRODUCIBLE_MODELS = ("logreg", "mlp", "dropout_mlp", "convnet")
DEFAULT_EPOCHS = {"logreg": 10, "mlp": 10, "dropout_mlp": 5, "convnet": 5}


def add_parser(commands, add_data_options):
    parser = commands.add_parser(
        "reproduce", help="the notebook's models over several seeds, beside its published errors",
        description="Train the notebook's models with their notebook settings from several seeds and compare "
                    "each epoch's test error with the notebook's.")
    parser.add_argument("--models", default=",".join(REPRODUCIBLE_MODELS),
                        help=f"comma-separated, from {', '.join(REPRODUCIBLE_MODELS)} (default all)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 1..N (default 5)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per run (default " + ", ".join(f"{m} {e}" for m, e in DEFAULT_EPOCHS.items()) + ")")
    parser.add_argument("--train-size", type=int, default=0, help="the first N training images (default all)")
    parser.add_argument("--test-size", type=int, default=0, help="the first N test images (default all)")
    parser.add_argument("--csv", metavar="FILE.csv", help="write one row per model and epoch")
    parser.add_argument("--json", metavar="FILE.json", help="write the rows and every run's curve as JSON")
    add_data_options(parser)
    parser.set_defaults(func=run)
    return parser


def _models(text: str) -> list[str]:
    models = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in models if m not in REPRODUCIBLE_MODELS]
    if unknown or not models:
        raise MnistguiError(f"--models: unknown {', '.join(unknown) or 'empty list'}; choose from "
                            f"{', '.join(REPRODUCIBLE_MODELS)}")
    return models


def summarise(model: str, curves: list[list[float]]) -> list[dict]:
    """Per epoch: the notebook's test error and the median, min and max over `curves` (one per seed)."""
    notebook = notebook_test_errors(model)
    rows = []
    for index in range(min(len(c) for c in curves)):
        values = [c[index] for c in curves]
        rows.append({
            "model": model,
            "epoch": index + 1,
            "notebook": notebook[index] if index < len(notebook) else None,
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "seeds": len(values),
        })
    return rows


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2%}"


def run(args) -> int:
    from .cli import _workspace
    from .core.training import EpochResult, Trainer, create_model

    models = _models(args.models)
    if not 1 <= args.seeds <= 100:
        raise MnistguiError("--seeds must be in [1, 100]")
    if args.epochs is not None and not 1 <= args.epochs <= 1000:
        raise MnistguiError("--epochs must be in [1, 1000]")
    workspace = _workspace(args)
    dataset = workspace.dataset("mnist").subset(args.train_size, args.test_size)
    workspace.close()
    rows, runs = [], []
    for model_name in models:
        epochs = args.epochs or DEFAULT_EPOCHS[model_name]
        curves = []
        for seed in range(1, args.seeds + 1):
            config = Config.for_model(model_name, seed=seed, epochs=epochs)
            started = time.perf_counter()
            trainer = Trainer(create_model(config), dataset)
            curve = [item.test_error for item in trainer.train() if isinstance(item, EpochResult)]
            curves.append(curve)
            runs.append({"model": model_name, "seed": seed, "test_errors": curve})
            print(f"{model_name} seed {seed}: " + " ".join(_pct(v) for v in curve)
                  + f"  ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
        rows += summarise(model_name, curves)
    print(f"{'model':<12} {'epoch':>5} {'notebook':>9} {'median':>8} {'min':>8} {'max':>8}  seeds")
    for row in rows:
        print(f"{row['model']:<12} {row['epoch']:>5} {_pct(row['notebook']):>9} {_pct(row['median']):>8} "
              f"{_pct(row['min']):>8} {_pct(row['max']):>8}  {row['seeds']}")
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"rows": rows, "runs": runs, "train_size": len(dataset.train_labels),
                       "titles": {m: MODEL_TITLES[m] for m in models}}, handle, indent=1, allow_nan=False)
    return 0
