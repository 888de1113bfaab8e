"""Optimizers as plain functions returning (shared, new value) update pairs, as in Theano-Tutorials.

Each takes the gradients, the parameters (name -> shared) and the configuration, and returns the
updates plus its own state variables by name (so a model file can store and restore them).
Every constant is float32 so the updates keep the parameters' dtype.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytensor
import pytensor.tensor as pt

from .config import Config


def _f32(value: float):
    return np.float32(value)


def _state_like(param, name: str):
    return pytensor.shared(np.zeros_like(param.get_value()), name=name)


def sgd(grads, params, config: Config):
    lr = _f32(config.learning_rate)
    updates = [(p, p - lr * g) for p, g in zip(params.values(), grads)]
    return updates, OrderedDict()


def momentum(grads, params, config: Config, nesterov: bool = False):
    lr, mu = _f32(config.learning_rate), _f32(config.momentum)
    updates, state = [], OrderedDict()
    for (name, p), g in zip(params.items(), grads):
        velocity = _state_like(p, f"{name}.velocity")
        state[velocity.name] = velocity
        new_velocity = mu * velocity - lr * g
        step = mu * new_velocity - lr * g if nesterov else new_velocity
        updates += [(velocity, new_velocity), (p, p + step)]
    return updates, state


def nesterov(grads, params, config: Config):
    return momentum(grads, params, config, nesterov=True)


def rmsprop(grads, params, config: Config):
    """E[g^2] = rho E[g^2] + (1 - rho) g^2;  p -= lr g / sqrt(E[g^2] + eps), the notebook's formula."""
    lr, rho, eps = _f32(config.learning_rate), _f32(config.rho), _f32(config.epsilon)
    updates, state = [], OrderedDict()
    for (name, p), g in zip(params.items(), grads):
        acc = _state_like(p, f"{name}.acc")
        state[acc.name] = acc
        new_acc = rho * acc + (_f32(1) - rho) * g**2
        updates += [(acc, new_acc), (p, p - lr * g / pt.sqrt(new_acc + eps))]
    return updates, state


def adam(grads, params, config: Config):
    lr, b1, b2, eps = (_f32(v) for v in (config.learning_rate, config.beta1, config.beta2, config.epsilon))
    step = pytensor.shared(_f32(0), name="adam.t")
    t = step + _f32(1)
    scale = lr * pt.sqrt(_f32(1) - b2**t) / (_f32(1) - b1**t)
    updates, state = [(step, t)], OrderedDict({"adam.t": step})
    for (name, p), g in zip(params.items(), grads):
        m = _state_like(p, f"{name}.m")
        v = _state_like(p, f"{name}.v")
        state[m.name], state[v.name] = m, v
        new_m = b1 * m + (_f32(1) - b1) * g
        new_v = b2 * v + (_f32(1) - b2) * g**2
        updates += [(m, new_m), (v, new_v), (p, p - scale * new_m / (pt.sqrt(new_v) + eps))]
    return updates, state


OPTIMIZERS = {"sgd": sgd, "momentum": momentum, "nesterov": nesterov, "rmsprop": rmsprop, "adam": adam}


def make_updates(cost, params, config: Config):
    grads = pytensor.grad(cost, list(params.values()))
    return OPTIMIZERS[config.optimizer](grads, params, config)
