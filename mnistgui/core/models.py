"""The notebook's four trained models, each written once, as a pure function from symbols to symbols.

A model function takes the pixels X (n, 784) in [0, 1], a parameter source `p`, the configuration
and a dropout function, and returns every intermediate layer by name, ending with "logits". Each
weight is asked for by the notebook's name and shape (`p.weight("w_h", (784, 625))`), so the same
function gives, depending on the source:

- the training and prediction graphs over shared variables (`SharedParameters`; the training twin
  gets a `dropout` that draws, the prediction twin none);
- the feature-map viewer's function of any epoch's weights (`InputParameters`: weights as inputs);
- every parameter's name and shape (`parameter_shapes`), and the FLOP count (`forward_flops`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.traversal import io_toposort
from pytensor.tensor.math import Dot

from .config import Config
from .errors import ConfigError
from .layers import ACTIVATION_FUNCTIONS, RngChain, dense, dropout, init_weights, softmax, zeros_bias
from .ops import Corr2dValid, MatMulInParts, conv2d_nhwc, matmul_in_parts, max_pool_2d_nhwc

IMAGE_SIDE = 28
N_CLASSES = 10
MAX_PARAMETERS = 1 << 28  # 1 GiB of float32 weights, 300 times the notebook's largest model


# --- where a model's parameters come from ---------------------------------------------------------


class ParameterSource:
    """Hands out parameters by name and shape, in the order the model asks for them."""

    def __init__(self, use_bias: bool):
        self.use_bias = use_bias
        self.shapes: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self.variables: OrderedDict[str, pt.TensorVariable] = OrderedDict()

    def weight(self, name: str, shape: tuple[int, ...]):
        return self._get(name, tuple(int(s) for s in shape), is_bias=False)

    def bias(self, name: str, size: int):
        """A bias of `size` units, or None when the configuration has no biases (the notebook's)."""
        return self._get(name, (int(size),), is_bias=True) if self.use_bias else None

    def _get(self, name, shape, is_bias):
        if name in self.variables:
            if self.shapes[name] != shape:
                raise ValueError(f"parameter {name} asked for as {shape} and as {self.shapes[name]}")
            return self.variables[name]
        self.shapes[name] = shape
        self.variables[name] = self._make(name, shape, is_bias)
        return self.variables[name]

    def _make(self, name, shape, is_bias):
        return pt.tensor(name=name, dtype="float32", shape=(None,) * len(shape))


class InputParameters(ParameterSource):
    """Parameters as symbolic inputs: a function of the weights, as for a snapshot viewer."""


class SharedParameters(ParameterSource):
    """Fresh shared variables: weights drawn by `config.init` from a generator seeded with `seed`."""

    def __init__(self, config: Config):
        super().__init__(config.use_bias)
        self.config = config
        self.rng = np.random.default_rng(config.seed)

    def _make(self, name, shape, is_bias):
        if is_bias:
            return zeros_bias(shape[0], name)
        return init_weights(shape, self.config.init, self.config.init_std, self.rng, name)


class ExistingParameters(ParameterSource):
    """The shared variables of a model already built: the twin graphs share them."""

    def __init__(self, params: OrderedDict, use_bias: bool):
        super().__init__(use_bias)
        self.existing = params

    def _make(self, name, shape, is_bias):
        return self.existing[name]


def _weights_then_biases(names) -> list[str]:
    # Weights first, then biases, each in the model's order: the order the optimizer and files use.
    return [n for n in names if not n.startswith("b")] + [n for n in names if n.startswith("b")]


Dropout = Callable[[pt.TensorVariable, float], pt.TensorVariable]


def no_dropout(h, p):
    return h


def dropout_from(rng: RngChain | None) -> Dropout:
    return no_dropout if rng is None else (lambda h, p: dropout(h, p, rng))


# --- the models -------------------------------------------------------------------------------------


def logreg(X, p: ParameterSource, c: Config, drop: Dropout):
    """py_x = softmax(X w): the notebook's logistic regression."""
    return OrderedDict(logits=dense(X, p.weight("w", (784, 10)), p.bias("b", 10)))


def mlp(X, p: ParameterSource, c: Config, drop: Dropout):
    """784 -> 625 -> 10 (sigmoid MLP) or 784 -> 625 -> 625 -> 10 (dropout ReLU MLP): one recipe.

    The dropout MLP drops input pixels, then each hidden layer's units, as the notebook's
    model(X, w_h, w_h2, w_o, p_drop_input, p_drop_hidden).
    """
    act = ACTIVATION_FUNCTIONS[c.activation]
    layers = OrderedDict()
    h, fan_in = drop(X, c.input_dropout), 784
    for index, units in enumerate(c.hidden_sizes, start=1):
        suffix = "_h" if index == 1 else f"_h{index}"  # w_h, w_h2, ...
        h = act(dense(h, p.weight("w" + suffix, (fan_in, units)), p.bias("b" + suffix, units)))
        layers[f"hidden{index}"] = h
        h, fan_in = drop(h, c.hidden_dropout), units
    layers["logits"] = dense(h, p.weight("w_o", (fan_in, 10)), p.bias("b_o", 10))
    return layers


def convnet(X, p: ParameterSource, c: Config, drop: Dropout):
    """The notebook's convnet: conv + pool stages, a hidden layer and the output, with dropout.

    With the defaults (filters 32, 64, 128) the maps' side goes 28 -> 30 (3x3 'full' conv) -> 15
    (2x2 max pool, rounding up) -> 13 ('valid') -> 7 -> 5 -> 3, so w4 is (128 * 3 * 3, 625):
        l1 = pool(relu(conv(X, w, 'full')))   (n, 32, 15, 15), computed as relu(pool(conv))
        l2 = pool(relu(conv(l1, w2)))         (n, 64, 7, 7)
        l3 = pool(relu(conv(l2, w3)))         (n, 128, 3, 3), flattened to (n, 1152)
        l4 = relu(l3 w4)                      (n, 625)
        py_x = softmax(l4 w_o)                (n, 10)
    each followed by dropout in training. Maps stay channels-last, (n, rows, cols, channels), between
    the Ops (see ops.py); the layers it reports are channels-first, as Theano's were.
    """
    act = ACTIVATION_FUNCTIONS[c.activation]
    layers = OrderedDict()
    h = X.reshape((X.shape[0], IMAGE_SIDE, IMAGE_SIDE, 1))
    channels, side = 1, IMAGE_SIDE
    for index, filters in enumerate(c.conv_filters, start=1):
        suffix = "" if index == 1 else str(index)  # w, w2, w3, w4
        mode = "full" if index == 1 else "valid"
        shape = (filters, channels, 3, 3)
        pre = conv2d_nhwc(h, p.weight("w" + suffix, shape), mode, filter_shape=shape)
        bias = p.bias("b" + suffix, filters)
        layers[f"conv{index}"] = act(pre if bias is None else pre + bias).dimshuffle(0, 3, 1, 2)
        # pool(act(pre + b)) computed as act(pool(pre) + b): the same values (every activation here is
        # monotone and the bias is one number a channel), with the elementwise work on a quarter of
        # the pixels; the gradient differs only where a window holds two equal maxima.
        pooled = max_pool_2d_nhwc(pre)
        pooled_pre = pooled if bias is None else pooled + bias
        h = act(pooled_pre)
        layers[f"pool{index}"] = h.dimshuffle(0, 3, 1, 2)
        side = side + 2 if mode == "full" else side - 2
        channels, side = filters, (side + 1) // 2
        if index == len(c.conv_filters):
            # Flatten channels-first, so w4 means what it did in Theano; the activation after the
            # flattening (the same values), so that a ReLU and the dropout after it are one Op.
            h = act(pt.flatten(pooled_pre.dimshuffle(0, 3, 1, 2), ndim=2))
        h = drop(h, c.conv_dropout)
    suffix = str(len(c.conv_filters) + 1)
    units = c.hidden_sizes[0]
    # The hidden layer's products in parts over the cores, as the convolutions' (see ops.py).
    h = act(dense(h, p.weight("w" + suffix, (channels * side * side, units)), p.bias("b" + suffix, units),
                  product=matmul_in_parts))
    layers["hidden"] = h
    h = drop(h, c.hidden_dropout)
    layers["logits"] = dense(h, p.weight("w_o", (units, 10)), p.bias("b_o", 10))
    return layers


MODEL_FUNCTIONS = {"logreg": logreg, "mlp": mlp, "dropout_mlp": mlp, "convnet": convnet}


def build_layers(X, p: ParameterSource, config: Config, rng: RngChain | None = None) -> OrderedDict:
    """All named layers of `config.model` over X, with "probs" (softmax) appended."""
    if config.model not in MODEL_FUNCTIONS:
        raise ValueError(f"{config.model} has no graph")
    layers = MODEL_FUNCTIONS[config.model](X, p, config, dropout_from(rng))
    layers["probs"] = softmax(layers["logits"])
    return layers


def pixel_graph(model):
    """A float32 pixel matrix (n, 784) in [0, 1] and the dropout-free layers of `model` over it, on its
    shared weights: what attacks and saliency differentiate with respect to the input."""
    pixels = pt.matrix("pixels", dtype="float32")
    layers = build_layers(pixels, ExistingParameters(model.params, model.config.use_bias), model.config, None)
    return pixels, layers


# --- what follows from the definitions --------------------------------------------------------------


def parameter_shapes(config: Config) -> OrderedDict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in the order the optimizer and the model file use."""
    source = InputParameters(config.use_bias)
    build_layers(pt.matrix("X", dtype="float32"), source, config)
    return OrderedDict((n, source.shapes[n]) for n in _weights_then_biases(source.shapes))


def parameter_count(config: Config) -> int:
    return sum(int(np.prod(shape)) for shape in parameter_shapes(config).values())


def check_size(config: Config) -> None:
    """Refuse, before any weight is drawn, a configuration too large to build (ConfigError)."""
    count = parameter_count(config)
    if count > MAX_PARAMETERS:
        raise ConfigError(f"the configuration needs {count:,} parameters; mnistgui builds at most {MAX_PARAMETERS:,}")


def init_parameters(config: Config) -> OrderedDict:
    """Fresh shared parameters, drawn from a generator seeded with config.seed."""
    source = SharedParameters(config)
    build_layers(pt.matrix("X", dtype="float32"), source, config)
    return OrderedDict((n, source.variables[n]) for n in _weights_then_biases(source.variables))


def forward_flops(config: Config) -> int:
    """Multiply-adds x 2 of one image's forward pass, counted over the graph's products and convolutions."""
    from . import backend

    X = pt.matrix("X", dtype="float32")
    source = InputParameters(config.use_bias)
    layers = build_layers(X, source, config)
    inputs = [X, *source.variables.values()]
    products = [node for node in io_toposort(inputs, [layers["logits"]]) if isinstance(node.op, (Dot, MatMulInParts, Corr2dValid))]
    shapes = backend.function(
        inputs,
        [s for node in products for s in (node.inputs[0].shape, node.inputs[1].shape)],
        mode="FAST_COMPILE", on_unused_input="ignore",
    )(np.zeros((1, 784), np.float32), *(np.zeros(s, np.float32) for s in source.shapes.values()))
    total = 0
    for index, node in enumerate(products):
        a, b = shapes[2 * index], shapes[2 * index + 1]
        if isinstance(node.op, Corr2dValid):  # x (n, H, W, C) with filters (F, C, kh, kw)
            rows, cols = a[1] - b[2] + 1, a[2] - b[3] + 1
            total += 2 * a[0] * rows * cols * int(np.prod(b))
        else:  # (n, k) @ (k, m)
            total += 2 * a[0] * a[1] * b[1]
    return int(total)


class LayerFunction:
    """Every layer of a model for given weights and images, compiled once: the feature-map viewer's.

    Built from the same model function as training, with the weights as inputs, dropout off; pixels
    arrive as uint8 (n, 784) and are scaled inside, as in training. Compile it off the GUI thread.
    """

    def __init__(self, config: Config, mode=None):
        from . import backend

        images = pt.matrix("images", dtype="uint8")
        pixels = pt.cast(images, "float32") * np.float32(1.0 / 255.0)
        source = InputParameters(config.use_bias)
        layers = build_layers(pixels, source, config)
        self.config = config
        self.names = list(layers)
        self.parameter_names = list(source.variables)
        self._fn = backend.function(
            [images, *source.variables.values()], list(layers.values()),
            mode=mode or backend.compile_mode(config.backend),
        )

    def __call__(self, weights: dict[str, np.ndarray], images: np.ndarray) -> OrderedDict[str, np.ndarray]:
        images = np.ascontiguousarray(np.asarray(images).reshape(len(images), -1), dtype=np.uint8)
        values = [np.asarray(weights[name], dtype=np.float32) for name in self.parameter_names]
        return OrderedDict(zip(self.names, self._fn(images, *values)))
