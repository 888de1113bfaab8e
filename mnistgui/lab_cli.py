"""`mnistgui predict` and `mnistgui attack`: the lab's digit classifier and adversarial attacks, headless.

predict classifies image files (PNG, JPEG; any size; dark ink on light paper or light on dark) after
MNIST's own preprocessing (core/preprocess.py). attack measures a model's accuracy on FGSM or PGD
adversarial test images at each L-infinity budget (core/attacks.py).
"""

from __future__ import annotations

import argparse
import math
import sys

from .core.config import MODEL_TITLES
from .core.errors import MnistguiError

DEFAULT_ATTACK_TEST_SIZE = 1000


def _eps_list(text: str) -> tuple[float, ...]:
    from .cli import comma_list

    values = comma_list(text, float, "number")
    bad = [v for v in values if not (math.isfinite(v) and 0 <= v <= 1)]
    if bad:
        raise argparse.ArgumentTypeError(f"each eps must be in [0, 1] (pixels are in [0, 1]), not {bad[0]:g}")
    return values


def add_parsers(commands, add_data_options):
    predict = commands.add_parser(
        "predict", help="classify image files of digits",
        description="Classify image files (PNG, JPEG; any size; dark ink on light paper or light ink on dark, "
                    "detected) after MNIST's preprocessing: crop to the ink, scale its longer side to 20 pixels, "
                    "centre its mass in 28x28. Unreadable or blank images are named on stderr (exit status 2); "
                    "the others are still classified.")
    predict.add_argument("file", metavar="MODEL.h5")
    predict.add_argument("images", metavar="IMAGE", nargs="+")
    predict.add_argument("--json", action="store_true", help="print a JSON list, one object per image read")
    predict.set_defaults(func=cmd_predict)

    attack = commands.add_parser(
        "attack", help="accuracy under FGSM or PGD adversarial attacks",
        description="Attack a saved model's test images within an L-infinity budget eps (pixels in [0, 1]) and "
                    "report the accuracy on the adversarial images and the largest perturbation applied.")
    attack.add_argument("file", metavar="MODEL.h5")
    attack.add_argument("--method", choices=("fgsm", "pgd"), default="fgsm", help="the attack (default fgsm)")
    attack.add_argument("--eps", type=_eps_list, default=(0.05, 0.1, 0.2, 0.3), metavar="E[,E...]",
                        help="budgets, each in [0, 1] (default 0.05,0.1,0.2,0.3)")
    attack.add_argument("--steps", type=int, default=None, help="PGD steps, in [1, 1000] (default 20)")
    attack.add_argument("--step-size", type=float, default=None, metavar="X",
                        help="PGD step size in pixel units (default 2.5 eps / steps)")
    attack.add_argument("--no-random-start", action="store_true", help="PGD starts from the image itself")
    attack.add_argument("--target", type=int, default=None, metavar="CLASS",
                        help="targeted: push every image toward this class")
    attack.add_argument("--seed", type=int, default=0, help="seeds PGD's random start (default 0)")
    attack.add_argument("--test-size", type=int, default=DEFAULT_ATTACK_TEST_SIZE,
                        help=f"attack the first N test images (0: all; default {DEFAULT_ATTACK_TEST_SIZE})")
    attack.add_argument("--json", action="store_true",
                        help="print a JSON list, one object per eps with eps, accuracy and max_linf")
    add_data_options(attack)
    attack.set_defaults(func=cmd_attack)
    return predict, attack


def cmd_predict(args) -> int:
    import numpy as np

    from .cli import _print_json
    from .core.modelfile import load_model
    from .core.preprocess import ImageError, load_digit_file

    model, _ = load_model(args.file)
    digits, names, failures = [], [], []
    for path in args.images:
        try:
            digits.append(load_digit_file(path))
            names.append(path)
        except ImageError as exc:
            failures.append(" ".join(str(exc).split()))
    rows = []
    if digits:
        probs = model.predict_proba(np.stack(digits).reshape(len(digits), -1))
        for name, p in zip(names, probs):
            rows.append({"file": name, "class": int(np.argmax(p)), "probs": [float(v) for v in p]})
    if args.json:
        _print_json(rows)
    else:
        for row in rows:
            best = row["class"]
            spread = " ".join(f"{digit}:{value:.3f}" for digit, value in enumerate(row["probs"]))
            print(f"{row['file']}: {best} ({row['probs'][best]:.1%})  {spread}")
    sys.stdout.flush()
    for message in failures:
        print(f"mnistgui: error: {message}", file=sys.stderr)
    return 2 if failures else 0


def cmd_attack(args) -> int:
    import numpy as np

    from .cli import _print_json, _workspace
    from .core.attacks import AttackError, Attacker
    from .core.modelfile import load_model

    if args.method == "fgsm" and (args.steps is not None or args.step_size is not None or args.no_random_start):
        raise MnistguiError("--steps, --step-size and --no-random-start are for --method pgd")
    steps = 20 if args.steps is None else args.steps
    if not 1 <= steps <= 1000:
        raise MnistguiError(f"--steps must be in [1, 1000], not {steps}")
    if args.step_size is not None and not (math.isfinite(args.step_size) and 0 < args.step_size <= 1):
        raise MnistguiError(f"--step-size must be in (0, 1], not {args.step_size:g}")
    if args.target is not None and not 0 <= args.target <= 9:
        raise MnistguiError(f"--target must be a class in 0..9, not {args.target}")
    if args.test_size < 0:
        raise MnistguiError(f"--test-size must be 0 (all) or positive, not {args.test_size}")
    model, _ = load_model(args.file)
    if not model.config.is_trainable:
        raise MnistguiError(f"{args.file} is a nearest-neighbours model: attacks follow a gradient, and it has none")
    workspace = _workspace(args)
    try:
        dataset = workspace.dataset(model.config.dataset).subset(0, args.test_size)
    finally:
        workspace.close()
    attacker = Attacker(model)
    tty = sys.stderr.isatty()

    def progress(done, total):
        if tty:
            sys.stderr.write(f"\rattacking {done}/{total}  ")
            sys.stderr.flush()

    try:
        report = attacker.accuracy_under_attack(
            dataset.test_images, dataset.test_labels, args.eps, method=args.method, steps=steps,
            step_size=args.step_size, random_start=not args.no_random_start, rng=np.random.default_rng(args.seed),
            target=args.target, progress=progress, keep_fooled=0)
    except AttackError as exc:
        raise MnistguiError(str(exc)) from None
    finally:
        if tty:
            sys.stderr.write("\r" + " " * 40 + "\r")
    if args.json:
        _print_json([result.as_dict() for result in report.results])
        return 0
    first = report.results[0]
    how = args.method.upper() + (f", {steps} steps" if args.method == "pgd" else "")
    aim = f", targeted at {args.target}" if args.target is not None else ""
    print(f"{how}{aim} on {first.n_images} {dataset.title} test images: {MODEL_TITLES[model.config.model]}, "
          f"{model.epochs_done} epochs; clean accuracy {first.clean_accuracy:.2%}")
    for result in report.results:
        extra = "" if math.isnan(result.target_rate) else f"  reached target {result.target_rate:.2%}"
        print(f"eps {result.eps:<6g} accuracy {result.accuracy:7.2%}  max L-inf {result.max_linf:.4f}{extra}")
    return 0
