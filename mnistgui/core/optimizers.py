"""Optimizers as plain functions returning update pairs, as in Theano-Tutorials and Lasagne.

Each takes the gradients, the parameters (name -> shared) and its hyperparameters as keyword
arguments, `rmsprop(grads, params, learning_rate, rho, epsilon)` as Lasagne's, and returns the
(shared, new value) updates plus its own state variables by name (so a model file can store and
restore them). `learning_rate` may be a number or a float32 shared scalar: `make_updates` passes a
shared one, so a schedule or a resumed run changes it without recompiling. Every constant is
float32 so the updates keep the parameters' dtype.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytensor
import pytensor.tensor as pt

from .config import SETTINGS, Config


def _f32(value):
    return value if isinstance(value, pt.Variable) else np.float32(value)


def _state_like(param, name: str):
    return pytensor.shared(np.zeros_like(param.get_value()), name=name)


def sgd(grads, params, learning_rate):
    lr = _f32(learning_rate)
    return [(p, p - lr * g) for p, g in zip(params.values(), grads)], OrderedDict()


def _velocity_updates(grads, params, learning_rate, mu, nesterov):
    lr, mu = _f32(learning_rate), _f32(mu)
    updates, state = [], OrderedDict()
    for (name, p), g in zip(params.items(), grads):
        velocity = _state_like(p, f"{name}.velocity")
        state[velocity.name] = velocity
        new_velocity = mu * velocity - lr * g
        step = mu * new_velocity - lr * g if nesterov else new_velocity
        updates += [(velocity, new_velocity), (p, p + step)]
    return updates, state


def momentum(grads, params, learning_rate, momentum=0.9):
    return _velocity_updates(grads, params, learning_rate, momentum, nesterov=False)


def nesterov(grads, params, learning_rate, momentum=0.9):
    return _velocity_updates(grads, params, learning_rate, momentum, nesterov=True)


def rmsprop(grads, params, learning_rate=0.001, rho=0.9, epsilon=1e-6):
    """E[g^2] = rho E[g^2] + (1 - rho) g^2;  p -= lr g / sqrt(E[g^2] + eps), the notebook's formula."""
    lr, rho, eps = _f32(learning_rate), _f32(rho), _f32(epsilon)
    updates, state = [], OrderedDict()
    for (name, p), g in zip(params.items(), grads):
        acc = _state_like(p, f"{name}.acc")
        state[acc.name] = acc
        new_acc = rho * acc + (_f32(1) - rho) * g**2
        updates += [(acc, new_acc), (p, p - lr * g / pt.sqrt(new_acc + eps))]
    return updates, state


def adam(grads, params, learning_rate=0.001, beta1=0.9, beta2=0.999, epsilon=1e-8):
    lr, b1, b2, eps = (_f32(v) for v in (learning_rate, beta1, beta2, epsilon))
    step = pytensor.shared(np.float32(0), name="adam.t")
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


def hyperparameters(config: Config) -> dict:
    """The keyword arguments the configured optimizer takes, learning rate aside, from the settings table."""
    return {name: getattr(config, name) for name, s in SETTINGS.items()
            if s.optimizers is not None and config.optimizer in s.optimizers}


def decoupled_weight_decay(updates, params, learning_rate, weight_decay):
    """p <- update(p) - lr * wd * p for every weight (biases excepted), as AdamW (Loshchilov and Hutter)."""
    decay = _f32(learning_rate) * _f32(weight_decay)
    weights = {id(p) for name, p in params.items() if not name.startswith("b")}
    return [(p, new - decay * p if id(p) in weights else new) for p, new in updates]


def make_updates(cost, params, config: Config, learning_rate=None):
    """The configured optimizer's updates for `cost`; `learning_rate` defaults to config.learning_rate."""
    grads = pytensor.grad(cost, list(params.values()))
    lr = config.learning_rate if learning_rate is None else learning_rate
    updates, state = OPTIMIZERS[config.optimizer](grads, params, learning_rate=lr, **hyperparameters(config))
    if config.weight_decay:
        updates = decoupled_weight_decay(updates, params, lr, config.weight_decay)
    return updates, state
