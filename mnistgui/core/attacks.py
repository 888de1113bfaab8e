"""Adversarial examples: FGSM and PGD within an L-infinity budget, and adversarial training's graph.

The attacks are PyTensor graphs built from the model definition itself (`build_layers`) over a float
pixel matrix in [0, 1] and the model's shared weights, dropout off: the gradient of the cross-entropy
with respect to the pixels, compiled once per `Attacker`.

- FGSM (Goodfellow et al. 2015): x' = x + eps sign(grad), one step.
- PGD (Madry et al. 2018): from x (or a uniform random start in the eps-box), `steps` signed steps of
  `step_size`, each projected back onto the eps-box around x and onto [0, 1].
- Targeted variants step down the cross-entropy of the target class instead of up that of the label.

Every adversarial image stays in [0, 1] and within eps of its original: both projections are applied
last, in float32, so |x' - x| <= eps holds to float32 rounding.

`adversarial_pixels` is the symbolic piece for adversarial training (FGSM with random start, Wong et
al. 2020 "Fast is better than free", or PGD): the training graph's pixels, attacked, batch by batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.gradient import disconnected_grad

from . import backend
from .errors import MnistguiError
from .layers import RngChain, cross_entropy
from .models import N_CLASSES, ExistingParameters, build_layers, pixel_graph

ATTACK_CHUNK = 256  # images per gradient call
METHODS = ("fgsm", "pgd")
PGD_STEP_FACTOR = 2.5  # default step size: 2.5 eps / steps (Madry et al.), so the walk can cross the box
FGSM_RS_STEP_FACTOR = 1.25  # FGSM with random start: a step of 1.25 eps (Wong et al. 2020)


class AttackError(MnistguiError, ValueError):
    """An attack's settings are out of range."""


class AttackCancelled(MnistguiError):
    """`accuracy_under_attack` was cancelled; the results of the budgets already finished come with it."""

    def __init__(self, report: AttackReport):
        super().__init__("the attack was cancelled")
        self.report = report


def as_pixels(images: np.ndarray) -> np.ndarray:
    """Images as float32 (n, 784) in [0, 1]: uint8 are scaled by 1/255, floats are taken as they are."""
    array = np.asarray(images)
    array = array.reshape(len(array), -1)
    if array.shape[1] != 784:
        raise AttackError(f"images must be 28x28 (784 pixels), not {array.shape[1]} pixels")
    if array.dtype == np.uint8:
        return array.astype(np.float32) * np.float32(1.0 / 255.0)
    pixels = array.astype(np.float32)
    if not np.all(np.isfinite(pixels)) or pixels.min(initial=0) < 0 or pixels.max(initial=0) > 1:
        raise AttackError("float images must hold finite pixels in [0, 1]")
    return np.ascontiguousarray(pixels)


def check_budget(eps: float, steps: int = 1, step_size: float | None = None) -> None:
    """Raise AttackError unless eps is in [0, 1], steps in [1, 1000] and step_size positive."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or not 0 <= eps <= 1:
        raise AttackError(f"eps must be a number in [0, 1] (pixels are in [0, 1]), not {eps!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= 1000:
        raise AttackError(f"steps must be an integer in [1, 1000], not {steps!r}")
    if step_size is not None and (not math.isfinite(step_size) or not 0 < step_size <= 1):
        raise AttackError(f"step size must be in (0, 1], not {step_size!r}")


def project(candidate: np.ndarray, original: np.ndarray, eps: float) -> np.ndarray:
    """`candidate` clipped onto the eps-box around `original`, then onto [0, 1]."""
    eps = np.float32(eps)
    low = np.maximum(original - eps, np.float32(0.0))
    high = np.minimum(original + eps, np.float32(1.0))
    return np.clip(candidate, low, high).astype(np.float32, copy=False)


@dataclass
class FooledExamples:
    """The examples an attack turned from right to wrong, for a gallery."""

    indices: np.ndarray  # into the images attacked
    originals: np.ndarray  # float32 (k, 784) in [0, 1]
    adversarial: np.ndarray  # float32 (k, 784) in [0, 1]
    labels: np.ndarray  # (k,) true classes
    predictions: np.ndarray  # (k,) classes predicted on the adversarial images
    probs: np.ndarray  # (k, 10) on the adversarial images

    @classmethod
    def empty(cls) -> FooledExamples:
        return cls(np.zeros(0, np.int64), np.zeros((0, 784), np.float32), np.zeros((0, 784), np.float32),
                   np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, N_CLASSES), np.float32))


@dataclass
class EpsResult:
    """One budget's outcome over the images attacked."""

    eps: float
    accuracy: float  # on the adversarial images
    clean_accuracy: float  # on the same images unattacked
    max_linf: float  # the largest |x' - x| actually applied, over all images and pixels
    n_images: int
    target_rate: float = math.nan  # targeted: the fraction (label != target) classified as the target
    fooled: FooledExamples = field(default_factory=FooledExamples.empty)

    def as_dict(self) -> dict:
        """What `mnistgui attack --json` prints for this budget."""
        row = {"eps": self.eps, "accuracy": self.accuracy, "max_linf": self.max_linf}
        if not math.isnan(self.target_rate):
            row["target_rate"] = self.target_rate
        return row


@dataclass
class AttackReport:
    method: str
    results: list[EpsResult]
    cancelled: bool = False


ProgressCallback = Callable[[int, int], None]  # (steps done, steps in all): one step is one chunk at one eps


class Attacker:
    """FGSM and PGD on a trained `NeuralModel`, compiled once (off the GUI thread: it takes seconds).

    Images are uint8 (n, 784) or (n, 28, 28), or float in [0, 1]; results are float32 (n, 784) in
    [0, 1]. `target` (an int or one class per image) makes an attack targeted.
    """

    def __init__(self, model, mode=None):
        config = model.config
        if not config.is_trainable:
            raise AttackError("nearest neighbours has no gradient to follow: attack a trained model")
        pixels, layers = pixel_graph(model)
        classes = pt.ivector("classes")
        # Summed, not averaged: each image's gradient is then its own, whatever the chunk's size.
        loss = cross_entropy(layers["logits"], classes) * pt.cast(classes.shape[0], "float32")
        gradient = pytensor.grad(loss, pixels)
        mode = mode or backend.compile_mode(model.backend)
        self.model = model
        self._gradient = backend.function([pixels, classes], [gradient, layers["logits"]], mode=mode)
        self._probs = backend.function([pixels], layers["probs"], mode=mode)

    # --- the model on float pixels -----------------------------------------------------------------

    @backend.on_kernel_cores
    def probs(self, images: np.ndarray, chunk: int = ATTACK_CHUNK) -> np.ndarray:
        """Class probabilities (n, 10) of float or uint8 images."""
        pixels = as_pixels(images)
        out = np.empty((len(pixels), N_CLASSES), dtype=np.float32)
        for start in range(0, len(pixels), chunk):
            out[start : start + chunk] = self._probs(pixels[start : start + chunk])
        return out

    def predict(self, images: np.ndarray) -> np.ndarray:
        return np.argmax(self.probs(images), axis=1)

    @backend.on_kernel_cores
    def loss_gradient(self, images: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """d cross-entropy(image, class) / d pixels, per image, and the logits."""
        pixels = as_pixels(images)
        return self._gradient(pixels, np.asarray(classes, dtype=np.int32).reshape(-1))

    # --- the attacks ---------------------------------------------------------------------------------

    @staticmethod
    def _aim(labels, target, n):
        """The classes whose loss the attack follows, and +1 (away from the label) or -1 (toward a target)."""
        if target is None:
            return backend.read_only(np.asarray(labels, dtype=np.int32).reshape(-1)), np.float32(1.0)
        chosen = np.broadcast_to(np.asarray(target, dtype=np.int32), (n,)).copy()
        if chosen.min(initial=0) < 0 or chosen.max(initial=0) >= N_CLASSES:
            raise AttackError(f"target classes must be in 0..{N_CLASSES - 1}")
        return backend.read_only(chosen), np.float32(-1.0)

    @backend.on_kernel_cores
    def fgsm(self, images, labels, eps: float, target=None) -> np.ndarray:
        """One signed gradient step of size eps (Goodfellow et al. 2015), projected into [0, 1]."""
        check_budget(eps)
        x = as_pixels(images)
        classes, direction = self._aim(labels, target, len(x))
        if eps == 0:
            return x.copy()
        out = np.empty_like(x)
        for start in range(0, len(x), ATTACK_CHUNK):
            part = slice(start, start + ATTACK_CHUNK)
            gradient, _ = self._gradient(x[part], classes[part])
            out[part] = project(x[part] + direction * np.float32(eps) * np.sign(gradient), x[part], eps)
        return out

    @backend.on_kernel_cores
    def pgd(self, images, labels, eps: float, steps: int = 20, step_size: float | None = None,
            random_start: bool = True, rng: np.random.Generator | None = None, target=None) -> np.ndarray:
        """Projected gradient descent in the eps-box (Madry et al. 2018).

        `step_size` defaults to 2.5 eps / steps. Each image keeps the first iterate that fools the model
        (untargeted: any wrong class; targeted: the target), else the last: PGD never undoes a success.
        """
        check_budget(eps, steps, step_size)
        step_size = PGD_STEP_FACTOR * eps / steps if step_size is None else step_size
        x = as_pixels(images)
        classes, direction = self._aim(labels, target, len(x))
        if eps == 0:
            return x.copy()
        rng = rng if rng is not None else np.random.default_rng(0)
        out = np.empty_like(x)
        for start in range(0, len(x), ATTACK_CHUNK):
            part = slice(start, start + ATTACK_CHUNK)
            out[part] = self._pgd_chunk(x[part], classes[part], direction, eps, steps, step_size, random_start, rng)
        return out

    def _pgd_chunk(self, x, classes, direction, eps, steps, step_size, random_start, rng):
        current = x.copy()
        if random_start:
            current = project(x + rng.uniform(-eps, eps, size=x.shape).astype(np.float32), x, eps)
        best = current.copy()
        done = np.zeros(len(x), dtype=bool)
        for _ in range(steps):
            gradient, logits = self._gradient(current, classes)
            newly = self._succeeded(logits, classes, direction) & ~done
            best[newly] = current[newly]
            done |= newly
            if done.all():
                return best
            current = project(current + direction * np.float32(step_size) * np.sign(gradient), x, eps)
        last = ~done
        best[last] = current[last]
        return best

    @staticmethod
    def _succeeded(logits, classes, direction) -> np.ndarray:
        predicted = np.argmax(logits, axis=1)
        return predicted != classes if direction > 0 else predicted == classes

    def attack(self, method: str, images, labels, eps: float, steps: int = 20, step_size: float | None = None,
               random_start: bool = True, rng: np.random.Generator | None = None, target=None) -> np.ndarray:
        if method == "fgsm":
            return self.fgsm(images, labels, eps, target)
        if method == "pgd":
            return self.pgd(images, labels, eps, steps, step_size, random_start, rng, target)
        raise AttackError(f"unknown attack {method!r}; choose one of {', '.join(METHODS)}")

    @backend.on_kernel_cores
    def accuracy_under_attack(
        self, images, labels, eps_values: Sequence[float], method: str = "fgsm", steps: int = 20,
        step_size: float | None = None, random_start: bool = True, rng: np.random.Generator | None = None,
        target=None, chunk: int = ATTACK_CHUNK, progress: ProgressCallback | None = None,
        cancel: Callable[[], bool] | None = None, keep_fooled: int | None = 100,
    ) -> AttackReport:
        """Accuracy on adversarial images at each eps, chunk by chunk.

        `progress(done, total)` is called after each chunk; `cancel()` is asked before each chunk, and
        when it answers True, AttackCancelled is raised carrying the report of the budgets finished.
        `step_size` is PGD's absolute step; None means 2.5 eps / steps at each eps. At most
        `keep_fooled` fooled examples per eps are kept (None: all).
        """
        if method not in METHODS:
            raise AttackError(f"unknown attack {method!r}; choose one of {', '.join(METHODS)}")
        eps_values = [float(e) for e in eps_values]
        for eps in eps_values:
            check_budget(eps, steps if method == "pgd" else 1, step_size if method == "pgd" else None)
        x = as_pixels(images)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(labels) != len(x):
            raise AttackError(f"{len(x)} images but {len(labels)} labels")
        if not len(x):
            raise AttackError("no images to attack")
        classes, _ = self._aim(labels, target, len(x))
        rng = rng if rng is not None else np.random.default_rng(0)
        clean = self.predict(x)
        n_chunks = math.ceil(len(x) / chunk)
        total, done = n_chunks * len(eps_values), 0
        report = AttackReport(method, [])
        for eps in eps_values:
            predictions = np.empty(len(x), dtype=np.int64)
            max_linf = 0.0
            fooled: list[tuple[int, np.ndarray, np.ndarray]] = []
            kept = 0
            for start in range(0, len(x), chunk):
                if cancel is not None and cancel():
                    report.cancelled = True
                    raise AttackCancelled(report)
                part = slice(start, start + chunk)
                target_part = None if target is None else classes[part]
                adversarial = self.attack(method, x[part], labels[part], eps, steps, step_size, random_start,
                                          rng, target_part)
                probs = self._probs(adversarial) if len(adversarial) else np.zeros((0, N_CLASSES), np.float32)
                predictions[part] = np.argmax(probs, axis=1)
                if len(adversarial):
                    max_linf = max(max_linf, float(np.abs(adversarial.astype(np.float64) - x[part]).max()))
                turned = np.flatnonzero((clean[part] == labels[part]) & (predictions[part] != labels[part]))
                if keep_fooled is None or kept < keep_fooled:
                    turned = turned if keep_fooled is None else turned[: keep_fooled - kept]
                    kept += len(turned)
                    fooled.append((start + turned, adversarial[turned], probs[turned]))
                done += 1
                if progress is not None:
                    progress(done, total)
            indices = np.concatenate([f[0] for f in fooled]) if fooled else np.zeros(0, np.int64)
            examples = FooledExamples(
                indices=indices.astype(np.int64), originals=x[indices],
                adversarial=np.concatenate([f[1] for f in fooled]) if fooled else np.zeros((0, 784), np.float32),
                labels=labels[indices], predictions=predictions[indices],
                probs=np.concatenate([f[2] for f in fooled]) if fooled else np.zeros((0, N_CLASSES), np.float32),
            )
            target_rate = math.nan
            if target is not None:
                aimed = labels != classes
                target_rate = float(np.mean(predictions[aimed] == classes[aimed])) if aimed.any() else math.nan
            report.results.append(EpsResult(
                eps=eps, accuracy=float(np.mean(predictions == labels)), clean_accuracy=float(np.mean(clean == labels)),
                max_linf=max_linf, n_images=len(x), target_rate=target_rate, fooled=examples,
            ))
        return report


# --- adversarial training -------------------------------------------------------------------------------


ADVERSARIAL_METHODS = ("off", "fgsm", "pgd")


@dataclass(frozen=True)
class AdversarialTraining:
    """How a training batch is attacked before the step (see `adversarial_pixels`).

    method: "off", "fgsm" (FGSM with a uniform random start, Wong et al. 2020) or "pgd" (Madry et al.).
    eps: the L-infinity budget, pixels in [0, 1]. step: the step size as a multiple of eps (0: 1.25 for
    FGSM, 2.5 / steps for PGD). steps: PGD's steps. weight: the share of the cost taken on the attacked
    batch, the rest on the clean one (1: adversarial only, as Madry and Wong; 0.5: Goodfellow's mix).
    """

    method: str = "off"
    eps: float = 0.1
    step: float = 0.0
    steps: int = 7
    weight: float = 1.0

    def __post_init__(self):
        if self.method not in ADVERSARIAL_METHODS:
            raise AttackError(f"adversarial training must be one of {', '.join(ADVERSARIAL_METHODS)}, "
                              f"not {self.method!r}")
        check_budget(self.eps, self.steps)
        if not 0 <= self.step <= 10:
            raise AttackError(f"the adversarial step must be in [0, 10] times eps, not {self.step}")
        if not 0 <= self.weight <= 1:
            raise AttackError(f"the adversarial weight must be in [0, 1], not {self.weight}")

    @property
    def active(self) -> bool:
        return self.method != "off" and self.eps > 0 and self.weight > 0

    @property
    def step_size(self) -> float:
        """The absolute step, in pixel units."""
        if self.step:
            return self.step * self.eps
        factor = FGSM_RS_STEP_FACTOR if self.method == "fgsm" else PGD_STEP_FACTOR / self.steps
        return factor * self.eps

    @classmethod
    def from_config(cls, config) -> AdversarialTraining:
        """From the settings adv_training, adv_eps, adv_step, adv_steps and adv_weight (defaults where absent)."""
        defaults = cls()
        return cls(
            method=getattr(config, "adv_training", defaults.method),
            eps=getattr(config, "adv_eps", defaults.eps),
            step=getattr(config, "adv_step", defaults.step),
            steps=getattr(config, "adv_steps", defaults.steps),
            weight=getattr(config, "adv_weight", defaults.weight),
        )


def _project_symbolic(candidate, original, eps):
    return pt.clip(candidate, pt.maximum(original - eps, 0.0), pt.minimum(original + eps, 1.0))


def adversarial_pixels(model, pixels, labels, settings: AdversarialTraining, rng: RngChain):
    """The batch `pixels` (float32 (n, 784) in [0, 1]) attacked, as a symbol with no gradient through it.

    `model` needs only `.config` and `.params` (a NeuralModel, or one being built once its params
    exist). The attack starts from a uniform draw in the eps-box, taken from `rng` (whose `update`
    the training function must apply), then takes one signed step (FGSM) or `settings.steps` (PGD,
    unrolled), each projected onto the eps-box and [0, 1], against the dropout-free twin of the model.
    """
    config = model.config
    eps = np.float32(settings.eps)
    step = np.float32(settings.step_size)
    current = _project_symbolic(pixels + (rng.uniform(pixels.shape) * np.float32(2.0) - np.float32(1.0)) * eps,
                                pixels, eps)
    steps = 1 if settings.method == "fgsm" else settings.steps
    for _ in range(steps):
        layers = build_layers(current, ExistingParameters(model.params, config.use_bias), config, None)
        loss = cross_entropy(layers["logits"], labels) * pt.cast(labels.shape[0], "float32")
        gradient = pytensor.grad(loss, current)
        current = _project_symbolic(current + step * pt.sign(gradient), pixels, eps)
    return disconnected_grad(current)


def adversarial_training_cost(model, pixels, labels, settings: AdversarialTraining, attack_rng: RngChain,
                              dropout_rng: RngChain | None):
    """The training cost with adversarial examples in the batch.

    (1 - weight) * CE(clean batch) + weight * CE(attacked batch), both through the training twin
    (dropout drawn from `dropout_rng`). With settings inactive, the plain cross-entropy.
    """
    config = model.config

    def cost_on(batch):
        noisy = build_layers(batch, ExistingParameters(model.params, config.use_bias), config, dropout_rng)
        return cross_entropy(noisy["logits"], labels)

    if not settings.active:
        return cost_on(pixels)
    attacked = cost_on(adversarial_pixels(model, pixels, labels, settings, attack_rng))
    if settings.weight >= 1:
        return attacked
    return np.float32(1 - settings.weight) * cost_on(pixels) + np.float32(settings.weight) * attacked
