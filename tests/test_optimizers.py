"""Each optimizer against an independent NumPy implementation, on a quadratic, for a few steps."""

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

from mnistgui.core import backend
from mnistgui.core.config import Config
from mnistgui.core.optimizers import make_updates

TARGET = np.array([[1.0, -2.0], [0.5, 3.0]], dtype=np.float32)
START = np.array([[0.1, 0.2], [-0.3, 0.4]], dtype=np.float32)


def _numpy_steps(name, config, steps):
    p = START.astype(np.float64)
    state = {"v": np.zeros_like(p), "m": np.zeros_like(p), "acc": np.zeros_like(p), "t": 0}
    lr = config.learning_rate
    for _ in range(steps):
        g = 2 * (p - TARGET)  # gradient of sum((p - target)^2)
        if name == "sgd":
            p = p - lr * g
        elif name in ("momentum", "nesterov"):
            state["v"] = config.momentum * state["v"] - lr * g
            p = p + (config.momentum * state["v"] - lr * g if name == "nesterov" else state["v"])
        elif name == "rmsprop":
            state["acc"] = config.rho * state["acc"] + (1 - config.rho) * g**2
            p = p - lr * g / np.sqrt(state["acc"] + config.epsilon)
        elif name == "adam":
            state["t"] += 1
            t = state["t"]
            state["m"] = config.beta1 * state["m"] + (1 - config.beta1) * g
            state["v"] = config.beta2 * state["v"] + (1 - config.beta2) * g**2
            scale = lr * np.sqrt(1 - config.beta2**t) / (1 - config.beta1**t)
            p = p - scale * state["m"] / (np.sqrt(state["v"]) + config.epsilon)
    return p


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "rmsprop", "adam"])
def test_optimizer_matches_numpy_and_stays_float32(name):
    config = Config.for_model("logreg", optimizer=name, learning_rate=0.1)
    param = pytensor.shared(START.copy(), name="w")
    cost = pt.sum((param - TARGET) ** 2)
    updates, state = make_updates(cost, {"w": param}, config)
    assert all(new.dtype == old.dtype for old, new in updates), "an update upcast float32"
    step = pytensor.function([], cost, updates=updates, mode=backend.compile_mode("c"))
    for _ in range(5):
        step()
    np.testing.assert_allclose(param.get_value(), _numpy_steps(name, config, 5), rtol=2e-5, atol=1e-6)
    expected_state = {"sgd": [], "momentum": ["w.velocity"], "nesterov": ["w.velocity"],
                      "rmsprop": ["w.acc"], "adam": ["adam.t", "w.m", "w.v"]}[name]
    assert list(state) == expected_state
