"""Learning-rate schedules: the rate of every training step as a pure function of the step.

The training loop sets the model's shared learning rate before each step from
`learning_rate_at(...)`, so a schedule costs no recompilation, and since the rate depends only on
the step and the run's horizon (fixed when the run starts), a stopped and resumed run follows the
same rates bit for bit.

- constant: the configured rate throughout (the notebook's way).
- step: multiplied by `step_gamma` every `step_epochs` epochs.
- cosine: half a cosine from the rate down to zero over the horizon.
- onecycle: up from rate/25 to the rate, then down to rate/250,000, both halves cosine
  (Smith's one-cycle policy, with PyTorch OneCycleLR's default factors); the rise lasts
  `warmup_epochs`, or 30% of the horizon when that is 0.
A linear warm-up from zero over `warmup_epochs` precedes the step and cosine schedules.
"""

from __future__ import annotations

import math

SCHEDULE_TITLES = {
    "constant": "constant",
    "step": "step decay",
    "cosine": "cosine",
    "onecycle": "one-cycle",
}
ONECYCLE_START_DIVISOR = 25.0
ONECYCLE_FINAL_DIVISOR = 1e4
ONECYCLE_DEFAULT_RISE = 0.3


def _cosine(start: float, end: float, fraction: float) -> float:
    fraction = min(max(fraction, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * fraction))


def learning_rate_at(config, step: int, steps_per_epoch: int, horizon_epochs: int) -> float:
    """The learning rate of 0-based training step `step` of a run planned for `horizon_epochs`."""
    base = config.learning_rate
    if config.schedule == "constant":
        return base
    epoch = step / steps_per_epoch  # fractional epochs done before this step
    total = max(horizon_epochs, 1) * steps_per_epoch
    if config.schedule == "onecycle":
        rise = config.warmup_epochs if config.warmup_epochs > 0 else ONECYCLE_DEFAULT_RISE * horizon_epochs
        rise_steps = max(rise * steps_per_epoch, 1.0)
        low = base / ONECYCLE_START_DIVISOR
        if step < rise_steps:
            return _cosine(low, base, step / rise_steps)
        return _cosine(base, low / ONECYCLE_FINAL_DIVISOR, (step - rise_steps) / max(total - 1 - rise_steps, 1.0))
    warmup_steps = config.warmup_epochs * steps_per_epoch
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    if config.schedule == "step":
        return base * config.step_gamma ** math.floor(epoch / config.step_epochs)
    if config.schedule == "cosine":
        return _cosine(base, 0.0, (step - warmup_steps) / max(total - warmup_steps, 1.0))
    raise ValueError(f"unknown schedule {config.schedule!r}")
