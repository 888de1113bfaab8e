import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

from mnistgui.core import backend
from mnistgui.core.config import Config
from mnistgui.core.layers import RngChain, dropout, init_weights
from mnistgui.core.models import (
    ExistingParameters, LayerFunction, build_layers, forward_flops, init_parameters, parameter_shapes,
)

MODE = backend.compile_mode("c")


def test_convnet_sizes_follow_the_notebook():
    shapes = parameter_shapes(Config.for_model("convnet"))
    assert shapes == {"w": (32, 1, 3, 3), "w2": (64, 32, 3, 3), "w3": (128, 64, 3, 3),
                      "w4": (128 * 3 * 3, 625), "w_o": (625, 10)}
    # 28 -> 30 -> 15 -> 13 -> 7 -> 5 -> 3 -> 1 -> 1: a fourth conv layer leaves 1x1 maps.
    deeper = parameter_shapes(Config.for_model("convnet", conv_filters=(8, 16, 16, 16), use_bias=True))
    assert deeper["w5"] == (16, 625) and deeper["b4"] == (16,)
    assert list(deeper) == ["w", "w2", "w3", "w4", "w5", "w_o", "b", "b2", "b3", "b4", "b5", "b_o"]


def test_flops_are_counted_from_the_graph():
    assert forward_flops(Config.for_model("logreg")) == 2 * 784 * 10
    assert forward_flops(Config.for_model("dropout_mlp")) == 2 * (784 * 625 + 625 * 625 + 625 * 10)
    convs = 30 * 30 * 32 * 1 * 9 + 13 * 13 * 64 * 32 * 9 + 5 * 5 * 128 * 64 * 9
    assert forward_flops(Config.for_model("convnet")) == 2 * (convs + 1152 * 625 + 625 * 10)


def test_parameter_names_follow_the_notebook():
    assert list(parameter_shapes(Config.for_model("logreg"))) == ["w"]
    assert list(parameter_shapes(Config.for_model("mlp"))) == ["w_h", "w_o"]
    assert list(parameter_shapes(Config.for_model("dropout_mlp"))) == ["w_h", "w_h2", "w_o"]
    with_bias = parameter_shapes(Config.for_model("dropout_mlp", use_bias=True))
    assert with_bias["b_h2"] == (625,) and with_bias["b_o"] == (10,)


def test_convnet_layers_and_probabilities():
    config = Config.for_model("convnet", use_bias=True)
    params = init_parameters(config)
    X = pt.matrix(dtype="float32")
    layers = build_layers(X, ExistingParameters(params, config.use_bias), config)
    assert list(layers) == ["conv1", "pool1", "conv2", "pool2", "conv3", "pool3", "hidden", "logits", "probs"]
    fn = pytensor.function([X], list(layers.values()), mode=MODE)
    outputs = dict(zip(layers, fn(np.random.default_rng(0).random((3, 784), dtype=np.float32))))
    assert outputs["conv1"].shape == (3, 32, 30, 30) and outputs["pool1"].shape == (3, 32, 15, 15)
    assert outputs["conv2"].shape == (3, 64, 13, 13) and outputs["pool2"].shape == (3, 64, 7, 7)
    assert outputs["conv3"].shape == (3, 128, 5, 5) and outputs["pool3"].shape == (3, 128, 3, 3)
    assert outputs["hidden"].shape == (3, 625)
    np.testing.assert_allclose(outputs["probs"].sum(axis=1), 1.0, rtol=1e-5)
    assert all(v.dtype == np.float32 for v in outputs.values())


def test_initialisation_schemes_have_their_scale():
    rng = np.random.default_rng(0)
    normal = init_weights((784, 625), "normal", 0.01, rng, "w").get_value()
    glorot = init_weights((784, 625), "glorot", 0.01, rng, "w").get_value()
    he = init_weights((64, 32, 3, 3), "he", 0.01, rng, "w").get_value()
    assert normal.dtype == np.float32 and abs(normal.std() - 0.01) < 0.0002
    assert abs(np.abs(glorot).max() - np.sqrt(6 / (784 + 625))) < 0.001
    assert abs(he.std() - np.sqrt(2 / (32 * 9))) < 0.002


def test_same_seed_same_weights_other_seed_other_weights():
    a = init_parameters(Config.for_model("mlp", seed=1))["w_h"].get_value()
    b = init_parameters(Config.for_model("mlp", seed=1))["w_h"].get_value()
    c = init_parameters(Config.for_model("mlp", seed=2))["w_h"].get_value()
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_zeroes_a_fraction_p_and_keeps_the_mean(p):
    rng = RngChain(seed=3)
    X = pt.matrix(dtype="float32")
    out = dropout(X, p, rng)
    fn = pytensor.function([X], out, updates=[rng.update], mode=MODE)
    ones = np.ones((400, 500), dtype=np.float32)
    first, second = fn(ones), fn(ones)
    assert abs((first == 0).mean() - p) < 0.005
    assert abs(first.mean() - 1.0) < 0.01
    assert not np.array_equal(first, second)  # the RNG state advances between calls
    assert first.dtype == np.float32


def test_dropout_is_identity_without_rng_or_probability():
    X = pt.matrix(dtype="float32")
    assert dropout(X, 0.5, None) is X and dropout(X, 0.0, RngChain(1)) is X


def _numpy_forward(config, weights, images):
    """An independent forward pass, written from the notebook with NumPy and scipy, dropout off."""
    from scipy.signal import convolve

    act = {"sigmoid": lambda x: 1 / (1 + np.exp(-x)), "relu": lambda x: np.maximum(x, 0), "tanh": np.tanh}[config.activation]

    def dense(h, w, b):
        return h @ weights[w] + weights.get(b, 0)

    h = images.reshape(len(images), -1).astype(np.float64) / 255
    layers = {}
    if config.model == "convnet":
        h = h.reshape(-1, 1, 28, 28)
        for index in range(len(config.conv_filters)):
            suffix = "" if index == 0 else str(index + 1)
            kernels = weights["w" + suffix]
            mode = "full" if index == 0 else "valid"
            maps = np.stack([
                sum(convolve(image[c], kernels[f, c], mode=mode) for c in range(kernels.shape[1]))
                for image in h for f in range(kernels.shape[0])
            ]).reshape(len(h), kernels.shape[0], *((h.shape[2] + 2, h.shape[3] + 2) if index == 0 else
                                                     (h.shape[2] - 2, h.shape[3] - 2)))
            layers[f"conv{index + 1}"] = maps = act(maps + weights.get("b" + suffix, np.zeros(len(kernels)))[None, :, None, None])
            rows, cols = maps.shape[2], maps.shape[3]  # ignore_border=False: pad odd sides with -inf
            padded = np.full((*maps.shape[:2], rows + rows % 2, cols + cols % 2), -np.inf)
            padded[:, :, :rows, :cols] = maps
            h = padded.reshape(*maps.shape[:2], padded.shape[2] // 2, 2, padded.shape[3] // 2, 2).max(axis=(3, 5))
            layers[f"pool{index + 1}"] = h
        hidden = f"w{len(config.conv_filters) + 1}"
        layers["hidden"] = h = act(dense(h.reshape(len(h), -1), hidden, "b" + hidden[1:]))
    elif config.model != "logreg":
        for index in range(1, len(config.hidden_sizes) + 1):
            suffix = "_h" if index == 1 else f"_h{index}"
            layers[f"hidden{index}"] = h = act(dense(h, "w" + suffix, "b" + suffix))
    out = ("w", "b") if config.model == "logreg" else ("w_o", "b_o")
    layers["logits"] = logits = dense(h, *out)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    layers["probs"] = e / e.sum(axis=1, keepdims=True)
    return layers


@pytest.mark.parametrize("model", ["logreg", "mlp", "dropout_mlp", "convnet"])
def test_layer_function_of_a_snapshot_matches_an_independent_forward_and_the_model(model, mnist):
    from mnistgui.core.training import NeuralModel

    config = Config.for_model(model, init="he", use_bias=True, seed=3, backend="c")
    network = NeuralModel(config)
    images = mnist.test_images[:3].reshape(3, -1)
    weights = {name: value + np.float32(0.01) for name, value in network.weights().items()}  # biases non-zero
    viewer = LayerFunction(config)
    outputs = viewer(weights, images)
    reference = _numpy_forward(config, weights, images)
    assert list(outputs) == list(network.layers) and set(reference) == set(outputs)
    for name in outputs:
        assert outputs[name].dtype == np.float32
        np.testing.assert_allclose(outputs[name], reference[name], rtol=2e-4, atol=2e-5, err_msg=name)
    # The same function over the model's own weights gives what the model's compiled graph gives.
    own = network.layer_outputs(images)
    for name in own:
        np.testing.assert_allclose(viewer(network.weights(), images)[name], own[name], rtol=1e-5, atol=1e-6)


def test_tiles_layout_and_weight_views():
    from mnistgui.core.tiles import tile_grid, weight_tiles

    grid = tile_grid(np.ones((5, 2, 3)), columns=3, gap=1)
    assert grid.shape == (2 * 2 + 1, 3 * 3 + 2)
    assert np.isnan(grid[2]).all() and np.isnan(grid[3:, 7:]).all() and grid[0, 0] == grid[3, 6] == 1
    config = Config.for_model("convnet")
    weights = {k: v.get_value() for k, v in init_parameters(config).items()}
    assert weight_tiles(config, weights, "w").shape == (32, 3, 3)
    assert weight_tiles(config, weights, "w3", channel=2).shape == (128, 3, 3)
    np.testing.assert_allclose(weight_tiles(config, weights, "w2"), np.abs(weights["w2"]).mean(axis=1))
