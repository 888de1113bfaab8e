"""The notebook's four trained models as pure functions from symbols to a dict of named layers.

Each model function takes the input X (rows of 784 pixels in [0, 1]), its parameters by name, the
configuration, and an `RngChain` (None gives the deterministic graph used for prediction, the
notebook's "noise" twin gets one). It returns every intermediate layer, ending with "logits".
Parameter names follow the notebook: w, w_h, w_h2, w_o, and w, w2, w3, w4, w_o for the convnet.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytensor.tensor as pt

from .config import Config
from .layers import ACTIVATION_FUNCTIONS, RngChain, dense, dropout, init_weights, softmax, zeros_bias
from .ops import conv2d_nhwc, max_pool_2d_nhwc

IMAGE_SIDE = 28
N_CLASSES = 10


def _bias_name(weight_name: str) -> str:
    return "b" + weight_name[1:]


def _mlp_weight_names(count: int) -> list[str]:
    return ["w_h"] + [f"w_h{i}" for i in range(2, count + 1)]


def convnet_sides(n_conv: int) -> list[int]:
    """Side of the feature maps after each conv and pool: 28 -> 30 -> 15 -> 13 -> 7 -> 5 -> 3."""
    sides, side = [], IMAGE_SIDE
    for index in range(n_conv):
        side = side + 2 if index == 0 else side - 2  # 3x3 'full' first, then 3x3 'valid'
        pooled = (side + 1) // 2  # 2x2 max pooling, ignore_border=False
        sides.append((side, pooled))
        side = pooled
    return sides


def parameter_shapes(config: Config) -> OrderedDict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in the order the optimizer and the model file use."""
    shapes: OrderedDict[str, tuple[int, ...]] = OrderedDict()
    if config.model == "logreg":
        shapes["w"] = (IMAGE_SIDE * IMAGE_SIDE, N_CLASSES)
    elif config.model in ("mlp", "dropout_mlp"):
        fan_in = IMAGE_SIDE * IMAGE_SIDE
        for name, size in zip(_mlp_weight_names(len(config.hidden_sizes)), config.hidden_sizes):
            shapes[name] = (fan_in, size)
            fan_in = size
        shapes["w_o"] = (fan_in, N_CLASSES)
    elif config.model == "convnet":
        channels = 1
        for index, filters in enumerate(config.conv_filters):
            shapes["w" if index == 0 else f"w{index + 1}"] = (filters, channels, 3, 3)
            channels = filters
        last_side = convnet_sides(len(config.conv_filters))[-1][1]
        hidden = config.hidden_sizes[0]
        shapes[f"w{len(config.conv_filters) + 1}"] = (channels * last_side * last_side, hidden)
        shapes["w_o"] = (hidden, N_CLASSES)
    else:
        raise ValueError(f"{config.model} has no parameters")
    if config.use_bias:
        for name, shape in list(shapes.items()):
            shapes[_bias_name(name)] = (shape[0] if len(shape) == 4 else shape[1],)
    return shapes


def init_parameters(config: Config) -> OrderedDict:
    """Fresh shared parameters, drawn from a generator seeded with config.seed."""
    rng = np.random.default_rng(config.seed)
    params = OrderedDict()
    for name, shape in parameter_shapes(config).items():
        if name.startswith("b"):
            params[name] = zeros_bias(shape[0], name)
        else:
            params[name] = init_weights(shape, config.init, config.init_std, rng, name)
    return params


def logreg(X, params, config: Config, rng: RngChain | None):
    return OrderedDict(logits=dense(X, params["w"], params.get("b")))


def mlp(X, params, config: Config, rng: RngChain | None):
    """The sigmoid MLP and the dropout ReLU MLP: the same recipe with other settings."""
    act = ACTIVATION_FUNCTIONS[config.activation]
    layers = OrderedDict()
    h = dropout(X, config.input_dropout, rng)
    for index, name in enumerate(_mlp_weight_names(len(config.hidden_sizes)), start=1):
        h = act(dense(h, params[name], params.get(_bias_name(name))))
        layers[f"hidden{index}"] = h
        h = dropout(h, config.hidden_dropout, rng)
    layers["logits"] = dense(h, params["w_o"], params.get("b_o"))
    return layers


def convnet(X, params, config: Config, rng: RngChain | None):
    """Three conv + pool stages, a hidden layer and the output, with the notebook's dropout.

    Feature maps stay channels-last, (batch, rows, cols, channels), from the first conv to the last
    pool (see ops.py); the layers it reports are channels-first, as Theano's were.
    """
    act = ACTIVATION_FUNCTIONS[config.activation]
    shapes = parameter_shapes(config)
    layers = OrderedDict()
    h = X.reshape((X.shape[0], IMAGE_SIDE, IMAGE_SIDE, 1))
    n_conv = len(config.conv_filters)
    for index in range(n_conv):
        name = "w" if index == 0 else f"w{index + 1}"
        # 28 -> 30 ('full'), then 15 -> 13 and 7 -> 5 ('valid'); pooling halves, rounding up.
        mode = "full" if index == 0 else "valid"
        pre = conv2d_nhwc(h, params[name], mode, filter_shape=shapes[name])
        if _bias_name(name) in params:
            pre = pre + params[_bias_name(name)]
        h = act(pre)
        layers[f"conv{index + 1}"] = h.dimshuffle(0, 3, 1, 2)
        h = max_pool_2d_nhwc(h)
        layers[f"pool{index + 1}"] = h.dimshuffle(0, 3, 1, 2)
        if index == n_conv - 1:
            # Flatten channels-first, (batch, 128 * 3 * 3) with the defaults, so w4 means what it did in Theano.
            h = pt.flatten(layers[f"pool{index + 1}"], ndim=2)
        h = dropout(h, config.conv_dropout, rng)
    w_hidden = f"w{n_conv + 1}"
    h = act(dense(h, params[w_hidden], params.get(_bias_name(w_hidden))))
    layers["hidden"] = h
    h = dropout(h, config.hidden_dropout, rng)
    layers["logits"] = dense(h, params["w_o"], params.get("b_o"))
    return layers


MODEL_FUNCTIONS = {"logreg": logreg, "mlp": mlp, "dropout_mlp": mlp, "convnet": convnet}


def build_layers(X, params, config: Config, rng: RngChain | None = None):
    """All named layers of `config.model` over X, with "probs" (softmax) appended."""
    layers = MODEL_FUNCTIONS[config.model](X, params, config, rng)
    layers["probs"] = softmax(layers["logits"])
    return layers
