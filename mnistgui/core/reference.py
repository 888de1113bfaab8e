"""The models' forward pass in plain NumPy, from a weights snapshot, dropout off.

The feature-map viewer uses it to show any epoch's activations for one image without touching the
compiled model (which may be training in another thread). Tests check it against the PyTensor graph.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .config import Config
from .ops import corr2d_valid_numpy, max_pool_numpy

ACTIVATIONS = {
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "relu": lambda x: np.maximum(x, 0.0),
    "tanh": np.tanh,
}


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _dense(h, weights, name):
    out = h @ weights[name]
    bias = "b" + name[1:]
    return out + weights[bias] if bias in weights else out


def forward(config: Config, weights: dict[str, np.ndarray], images: np.ndarray) -> OrderedDict[str, np.ndarray]:
    """Every named layer for uint8 `images` (n, 784) or (n, 28, 28), as the PyTensor model names them."""
    act = ACTIVATIONS[config.activation]
    h = images.reshape(len(images), -1).astype(np.float32) / np.float32(255.0)
    layers = OrderedDict()
    if config.model == "convnet":
        h = h.reshape(-1, 1, 28, 28)
        n_conv = len(config.conv_filters)
        for index in range(n_conv):
            name = "w" if index == 0 else f"w{index + 1}"
            kernel = weights[name]
            if index == 0:  # 'full' convolution: pad by the filter size minus one
                ph, pw = kernel.shape[2] - 1, kernel.shape[3] - 1
                h = np.pad(h, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
            pre = corr2d_valid_numpy(h, kernel[:, :, ::-1, ::-1])
            bias = "b" + name[1:]
            if bias in weights:
                pre = pre + weights[bias][None, :, None, None]
            layers[f"conv{index + 1}"] = h = act(pre)
            layers[f"pool{index + 1}"] = h = max_pool_numpy(h)
        h = h.reshape(len(h), -1)
        layers["hidden"] = h = act(_dense(h, weights, f"w{n_conv + 1}"))
        layers["logits"] = logits = _dense(h, weights, "w_o")
    elif config.model in ("mlp", "dropout_mlp"):
        names = ["w_h"] + [f"w_h{i}" for i in range(2, len(config.hidden_sizes) + 1)]
        for index, name in enumerate(names, start=1):
            layers[f"hidden{index}"] = h = act(_dense(h, weights, name))
        layers["logits"] = logits = _dense(h, weights, "w_o")
    else:
        layers["logits"] = logits = _dense(h, weights, "w")
    layers["probs"] = _softmax(logits)
    return layers
