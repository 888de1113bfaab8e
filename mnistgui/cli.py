"""Command line: `mnistgui` opens the window; `mnistgui train|evaluate|info|download` run headless.

Every error a user can cause ends as one line on stderr and exit status 2, never a traceback; an
unexpected error is one line and exit status 1 (`mnistgui --debug ...` shows its traceback). Output
cut short by its reader (`mnistgui evaluate m.h5 | head`) ends quietly with status 141, as a tool
killed by SIGPIPE does.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import functools
import json
import math
import numbers
import os
import signal
import sys
import traceback
from pathlib import Path

from . import __version__
from .core.config import (
    BACKENDS, DATASET_TITLES, DATASETS, GROUPS, MODEL_TITLES, MODELS, SETTINGS, SETTINGS_LIST, TRAINED_MODELS, Config, Setting,
    config_changes, relevant_fields,
)
from .core.errors import ConfigError, MnistguiError
from .core.presets import PRESETS, preset

SUBCOMMANDS = ("train", "evaluate", "info", "download", "precompile", "bench", "reproduce", "predict", "attack")
GLOBAL_FLAGS = ("--debug",)
EXIT_USAGE = 2
EXIT_INTERNAL = 1
EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a tool killed by SIGPIPE


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, not a usage dump."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def comma_list(text: str, convert=int, what: str = "integer") -> tuple:
    """'1,2,3' as (1, 2, 3), converted by `convert`; an argparse error naming `what` otherwise."""
    try:
        values = tuple(convert(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}s, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one {what}")
    return values


def _int_list(text: str) -> tuple[int, ...]:
    return comma_list(text, int, "integer")


def _add_data_options(parser):
    parser.add_argument("--data", metavar="DIR", help="folder holding the four IDX files (or a Keras mnist.npz)")
    parser.add_argument("--no-download", action="store_true", help="never download; fail if the data is not found")


def _option_help(setting: Setting) -> str:
    text = setting.help
    if setting.kind in ("int", "float", "ints"):
        text += f"; {setting.describe_range()}"
    defaults = {model: setting.default_for(model) for model in MODELS if model in setting.models}
    shown = {_shown(value) for value in defaults.values()}
    if setting.kind == "choice" and setting.name == "backend":
        text += "; " + "; ".join(setting.choices.values())
    if len(shown) == 1:
        text += f" (default {shown.pop()})"
    else:
        text += " (default " + ", ".join(f"{_shown(v)} for {m}" for m, v in defaults.items()) + ")"
    if setting.changeable:
        text += "; may change with --resume"
    return text.replace("%", "%%")


def _shown(value) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


_ARGUMENT_TYPES = {"int": int, "float": float, "ints": _int_list}


def add_setting_options(parser) -> None:
    """One option per setting of the table that has a flag, grouped as in the window."""
    groups = {name: parser.add_argument_group(name.lower()) for name in GROUPS}
    for setting in SETTINGS_LIST:
        if setting.flag is None:
            continue
        group = groups[setting.group]
        flags = (setting.flag, *setting.aliases)
        common = dict(dest=setting.name, default=None, help=_option_help(setting))
        if setting.kind == "bool":
            group.add_argument(*flags, action=argparse.BooleanOptionalAction, **common)
        elif setting.kind == "choice":
            group.add_argument(*flags, choices=list(setting.choices), **common)
        else:
            metavar = {"int": "N", "float": "X", "ints": "N[,N...]"}[setting.kind]
            group.add_argument(*flags, type=_ARGUMENT_TYPES[setting.kind], metavar=metavar, **common)


def given_settings(args) -> dict:
    """The settings given on the command line, by name."""
    return {name: value for name, value in vars(args).items() if name in SETTINGS and value is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mnistgui", description="MNIST deep-learning workbench (PyTensor). "
                     "With no command, opens the window.")
    parser.add_argument("--version", action="version", version=f"mnistgui {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    commands = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model headless, one line per epoch",
                                description="Train one of the notebook's models. Defaults are the notebook's, "
                                "per model; with --resume, settings that may change between runs apply and "
                                "the others are refused.")
    _add_data_options(train)
    add_setting_options(train)
    group = train.add_argument_group("files")
    group.add_argument("--save", metavar="FILE.h5", help="save the trained model here")
    group.add_argument("--log", metavar="FILE.csv", help="write epoch,train_error,test_error,cost,seconds")
    group.add_argument("--resume", metavar="FILE.h5", help="continue training a saved model")
    group = train.add_argument_group("presets")
    group.add_argument("--preset", choices=list(PRESETS), help="start from a named configuration; the other "
                       "options given win over it")
    group.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("evaluate", help="test error, per-class accuracy and confusion matrix",
                                   description="Evaluate a saved model on its dataset's test set.")
    evaluate.add_argument("file", metavar="FILE.h5")
    _add_data_options(evaluate)
    evaluate.add_argument("--test-size", type=int, default=0)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(func=cmd_evaluate)

    info = commands.add_parser("info", help="what a model file holds", description="Describe a model file.")
    info.add_argument("file", metavar="FILE.h5")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=cmd_info)

    download = commands.add_parser("download", help="download MNIST or Fashion-MNIST",
                                   description="Download and verify a dataset into the per-user data folder.")
    download.add_argument("--dataset", choices=DATASETS, default="mnist")
    download.add_argument("--dir", metavar="DIR", help="download here instead")
    download.set_defaults(func=cmd_download)

    precompile = commands.add_parser(
        "precompile", help="compile each model's default configuration now, so that training starts warm",
        description="Compile the training and prediction functions of each model's default configuration into "
        "the on-disk caches (PyTensor's, and Numba's under --backend numba), so that a later run or the window's "
        "Start finds them compiled. Building the packaged app uses it to ship its compiled graphs.")
    trained = [model for model in MODELS if model in TRAINED_MODELS]
    precompile.add_argument("--models", nargs="+", choices=trained, default=trained, metavar="MODEL",
                            help=f"the models to compile (default: all of {', '.join(trained)})")
    precompile.add_argument("--backend", choices=BACKENDS, default="auto", help="the backend to compile for")
    precompile.set_defaults(func=cmd_precompile)

    from .bench import add_parser as add_bench_parser

    add_bench_parser(commands)
    from .reproduce import add_parser as add_reproduce_parser

    add_reproduce_parser(commands, _add_data_options)
    from .lab_cli import add_parsers as add_lab_parsers
    add_lab_parsers(commands, _add_data_options)
    return parser


# --- helpers ---------------------------------------------------------------------------------------


def _progress_bar(fraction: float, width: int = 30) -> str:
    filled = int(round(fraction * width))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _download_progress(stream):
    def report(name: str, done: int, total: int):
        if stream.isatty():
            share = f"{done / total:4.0%}" if total else f"{done >> 10} KiB"
            stream.write(f"\rdownloading {name} {share}")
            if total and done >= total:
                stream.write("\n")
            stream.flush()
    return report


def _json_safe(value):
    """`value` with every NaN or infinity as None (JSON has neither) and NumPy scalars as Python's."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(value) else None
    return value


def _print_json(value) -> None:
    # allow_nan=False: a non-finite number that slips past _json_safe fails loudly, never prints NaN.
    print(json.dumps(_json_safe(value), allow_nan=False))


def _fmt_error(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2%}"


def _epoch_line(result) -> str:
    cost = "" if math.isnan(result.cost) else f"  cost {result.cost:.4f}"
    val = "" if math.isnan(result.val_error) else f"  val error {_fmt_error(result.val_error):>7}"
    robust = "" if math.isnan(result.robust_accuracy) else f"  PGD check {result.robust_accuracy:.1%}"
    return (f"epoch {result.epoch:3d}  train error {_fmt_error(result.train_error):>7}{val}  "
            f"test error {_fmt_error(result.test_error):>7}{robust}{cost}  "
            f"{result.seconds:.2f} s ({result.images_per_second:,.0f} img/s)")


def _config_from_args(args) -> Config:
    settings = given_settings(args)
    if args.preset:
        return preset(args.preset).config(**settings)  # the options given win over the preset
    return Config.for_model(settings.pop("model", "logreg"), **settings)


def _list_presets() -> None:
    for item in PRESETS.values():
        changed = ", ".join(f"{name}={_shown(value)}" for name, value in item.settings.items() if name != "model")
        print(f"{item.name}: {item.description}\n    --model {item.settings['model']} {changed}")


# --- commands ------------------------------------------------------------------------------------


def _workspace(args):
    """The Qt-free workspace the window uses too: the same open, resume, evaluate and save."""
    from .core.workspace import Workspace

    def announce(name: str, target) -> None:
        print(f"{DATASET_TITLES[name]} not found locally; downloading into {target}", file=sys.stderr)

    return Workspace(data_dir=args.data, allow_download=not args.no_download,
                     download_progress=_download_progress(sys.stderr), on_download=announce)


def cmd_train(args) -> int:
    from .core.training import BatchProgress, EpochResult, TrainingControl

    if args.list_presets:
        _list_presets()
        return 0
    if args.resume and args.preset:
        raise MnistguiError("--preset starts a new run: it does not combine with --resume")
    workspace = _workspace(args)
    try:
        if args.resume:
            run = workspace.open_model(args.resume)
            if not run.config.is_trainable:
                raise MnistguiError(f"{args.resume} is a nearest-neighbours model: it has nothing to train")
            before = run.config
            settings = given_settings(args)
            epochs = settings.pop("epochs", before.epochs)
            try:
                job = workspace.resume(run, epochs, settings)
            except ConfigError as exc:
                raise MnistguiError(f"--resume {args.resume}: {exc}") from None
            print(f"resuming {args.resume}: {MODEL_TITLES[before.model]}, {run.epochs_done} epochs done")
            changes = config_changes(before, run.config)
            if changes:
                print("changed: " + ", ".join(f"{name} {old} -> {new}" for name, (old, new) in changes.items()))
        else:
            run = workspace.new_run(_config_from_args(args))
            job = workspace.training_job(run)
        config, dataset = run.config, run.dataset
        n_train = len(dataset.train_labels) - (config.val_size if config.is_trainable else 0)
        validation = f", {config.val_size} validation" if config.is_trainable and config.val_size else ""
        print(f"{MODEL_TITLES[config.model]} on {dataset.title}: {n_train} train{validation}, "
              f"{len(dataset.test_labels)} test images; backend {run.backend}")
        seconds = job.compile()
        if config.is_trainable:
            print(f"compiled in {seconds:.2f} s")
        control = TrainingControl()
        previous = signal.getsignal(signal.SIGINT)

        def interrupt(signum, frame):
            print("\ninterrupted: stopping after this batch (Ctrl-C again to abort)", file=sys.stderr)
            control.stop()
            signal.signal(signal.SIGINT, previous)

        signal.signal(signal.SIGINT, interrupt)
        tty = sys.stderr.isatty()
        log_rows = []
        try:
            for item in workspace.train(job, control):
                if isinstance(item, BatchProgress) and tty:
                    eta = "" if math.isnan(item.eta_seconds) else f" ETA {item.eta_seconds:4.0f}s"
                    sys.stderr.write(f"\r{_progress_bar(item.fraction)} {item.batch}/{item.n_batches}{eta}  ")
                    sys.stderr.flush()
                elif isinstance(item, EpochResult):
                    if tty:
                        sys.stderr.write("\r" + " " * 70 + "\r")
                    print(_epoch_line(item), flush=True)
                    log_rows.append(item)
        finally:
            signal.signal(signal.SIGINT, previous)
            if args.log and log_rows:
                _write_log(args.log, log_rows, append=bool(args.resume))
        if control.stop_requested:
            print(f"stopped; the model is at the end of epoch {run.epochs_done}")
        if job.trainer.stop_note:
            print(job.trainer.stop_note)
        if args.save:
            workspace.save(run, args.save)
            print(f"saved {args.save}")
    finally:
        workspace.close()
    return 0


LOG_COLUMNS = ["epoch", "train_error", "test_error", "cost", "seconds", "val_error", "learning_rate",
               *(f"accuracy_{digit}" for digit in range(10)), "robust_accuracy"]


def _write_log(path: str, rows, append: bool) -> None:
    target = Path(path)
    write_header = not (append and target.exists() and target.stat().st_size)
    try:
        with open(target, "a" if append else "w", newline="") as handle:
            writer = csv.writer(handle)
            if write_header:
                writer.writerow(LOG_COLUMNS)
            for r in rows:
                writer.writerow([r.epoch, _csv_number(r.train_error), _csv_number(r.test_error),
                                 _csv_number(r.cost), f"{r.seconds:.4f}", _csv_number(r.val_error),
                                 _csv_number(r.learning_rate), *(_csv_number(a) for a in r.class_accuracy),
                                 _csv_number(r.robust_accuracy)])
    except OSError as exc:
        raise MnistguiError(f"cannot write log {path}: {exc.strerror or exc}") from None


def _csv_number(value: float) -> str:
    return "" if math.isnan(value) else repr(float(value))


def cmd_evaluate(args) -> int:
    workspace = _workspace(args)
    try:
        run = workspace.open_model(args.file)
        evaluation = workspace.evaluate(run, test_size=args.test_size)
    finally:
        workspace.close()
    config, model = run.config, run
    dataset = workspace.cached_dataset(config.dataset).subset(0, args.test_size)
    confusion = evaluation.confusion()
    per_class = evaluation.per_class_accuracy()
    if args.json:
        _print_json({
            "file": args.file,
            "model": config.model,
            "epochs": model.epochs_done,
            "dataset": dataset.name,
            "n_test": len(dataset.test_labels),
            "test_error": evaluation.error,
            "per_class_accuracy": list(per_class),
            "confusion": confusion.tolist(),
        })
        return 0
    names = dataset.class_names
    print(f"{MODEL_TITLES[config.model]}, {model.epochs_done} epochs, on {len(dataset.test_labels)} "
          f"{dataset.title} test images")
    print(f"test error {evaluation.error:.2%}")
    print("per-class accuracy: " + "  ".join(f"{names[i]}: {_fmt_error(v)}" for i, v in enumerate(per_class)))
    print("confusion matrix (rows: true, columns: predicted)")
    print("      " + "".join(f"{i:>6}" for i in range(10)))
    for i, row in enumerate(confusion):
        print(f"{i:>6}" + "".join(f"{v:>6}" for v in row))
    return 0


def cmd_info(args) -> int:
    from .core.modelfile import read_header

    header = read_header(args.file)
    config = header["config"]
    if args.json:
        _print_json({
            "file": args.file,
            "model": config.model,
            "config": json.loads(config.to_json()),
            "epochs_done": header["epochs_done"],
            "history": [vars(r) for r in header["history"]],
            "dataset": header["dataset"],
            "dataset_digest": header["dataset_digest"],
            "versions": header["versions"],
            "format_version": header["format_version"],
            "saved_at": header["saved_at"],
            **{key: value for key, value in header["training_state"].items() if key != "attack_rng"},
        })
        return 0
    print(f"{args.file}: {MODEL_TITLES[config.model]} ({config.model}), {header['epochs_done']} epochs on "
          f"{header['dataset']}, saved {header['saved_at']}")
    relevant = relevant_fields(config.model)
    print("configuration: " + ", ".join(
        f"{name}={getattr(config, name)}" for name in Config.__dataclass_fields__ if name in relevant))
    changes = {change.get("after_epoch"): {name: pair for name, pair in change["changes"].items()
                                           if isinstance(pair, list) and len(pair) == 2}
               for change in header["training_state"]["config_changes"]
               if isinstance(change, dict) and isinstance(change.get("changes"), dict)}
    best = header["training_state"]["best_epoch"]
    for result in header["history"]:
        if result.epoch - 1 in changes:
            print("  resumed with " + ", ".join(f"{name} {old} -> {new}"
                                                for name, (old, new) in changes[result.epoch - 1].items()))
        print("  " + _epoch_line(result) + ("  <- best validation error" if result.epoch == best else ""))
    versions = header["versions"]
    print("written by " + ", ".join(f"{k} {v}" for k, v in versions.items()) + f"; format {header['format_version']}")
    return 0


def cmd_download(args) -> int:
    from .core import data

    target = Path(args.dir) if args.dir else data.default_download_dir(args.dataset)
    data.fetch_dataset(args.dataset, target, progress=_download_progress(sys.stderr))
    data.load_dataset(args.dataset, target)
    print(f"{data.DATASET_TITLES[args.dataset]} ready in {target}")
    return 0


def cmd_precompile(args) -> int:
    from .core.backend import resolve_backend
    from .core.workspace import precompile

    for model in args.models:
        config = Config.for_model(model, backend=args.backend)
        seconds = precompile(config)
        print(f"{model}: compiled in {seconds:.2f} s (backend {resolve_backend(config.backend)})", flush=True)
    return 0


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).splitlines()) or type(exc).__name__


def _usage_error(message: str) -> int:
    print(f"mnistgui: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _open_window(args: list[str]) -> int:
    """`mnistgui [FILE.h5]`: the window, once FILE is known to be a model file; else a one-line error."""
    if args:
        word = args[0]
        if not os.path.exists(word):
            if os.sep in word or "/" in word or Path(word).suffix:
                return _usage_error(f"{word}: no such file")
            close = difflib.get_close_matches(word, SUBCOMMANDS, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            return _usage_error(f"unknown command '{word}' ({hint}commands: {', '.join(SUBCOMMANDS)}; "
                                f"or give a model file to open it in the window)")
        if len(args) > 1:
            return _usage_error(f"the window opens one model file; unexpected {' '.join(args[1:])!r} after {word}")
        from .core.modelfile import read_header

        try:
            read_header(word)
        except MnistguiError as exc:
            return _usage_error(_one_line(exc))
    from .gui.app import run_gui

    return run_gui(args[0] if args else None)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    leading = 0
    while leading < len(argv) and argv[leading] in GLOBAL_FLAGS:
        leading += 1
    first = argv[leading] if leading < len(argv) else None
    if first is None or (first not in SUBCOMMANDS and not first.startswith("-")):
        debug, command = "--debug" in argv[:leading], "window"
        run = functools.partial(_open_window, argv[leading:])
    else:
        args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help()
            return 0
        debug, command = args.debug, args.command
        run = functools.partial(args.func, args)
    try:
        status = run()
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers, not at interpreter exit
        return status
    except BrokenPipeError:
        # The reader (head, less) has gone: stop quietly, and keep Python's final flush from complaining.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    except MnistguiError as exc:
        if debug:
            traceback.print_exc()
        print(f"mnistgui: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mnistgui: aborted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an environment problem nobody foresaw: one line, unless --debug
        line = f"mnistgui: internal error: {type(exc).__name__}: {_one_line(exc)}"
        if debug:
            traceback.print_exc()
            print(line, file=sys.stderr)
        else:
            hint = "mnistgui --debug ..." if command == "window" else f"mnistgui --debug {command} ..."
            print(f"{line} ({hint} shows the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
