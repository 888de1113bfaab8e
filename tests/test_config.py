import pytest

from mnistgui.core.config import MODELS, Config, relevant_fields
from mnistgui.core.errors import ConfigError


def test_notebook_defaults():
    logreg = Config.for_model("logreg")
    assert (logreg.optimizer, logreg.learning_rate, logreg.batch_size, logreg.init_std) == ("sgd", 0.05, 128, 0.01)
    mlp = Config.for_model("mlp")
    assert mlp.hidden_sizes == (625,) and mlp.activation == "sigmoid" and mlp.learning_rate == 0.05
    drop = Config.for_model("dropout_mlp")
    assert drop.hidden_sizes == (625, 625) and (drop.input_dropout, drop.hidden_dropout) == (0.2, 0.5)
    assert (drop.optimizer, drop.learning_rate, drop.rho, drop.epsilon) == ("rmsprop", 0.001, 0.9, 1e-6)
    conv = Config.for_model("convnet")
    assert conv.conv_filters == (32, 64, 128) and conv.hidden_sizes == (625,)
    assert (conv.conv_dropout, conv.hidden_dropout, conv.optimizer) == (0.2, 0.5, "rmsprop")
    assert not any(Config.for_model(m).use_bias for m in MODELS)
    assert not any(Config.for_model(m).shuffle for m in MODELS)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(learning_rate=0), "learning_rate must be in"),
        (dict(hidden_dropout=1.0), "hidden_dropout must be in"),
        (dict(batch_size=0), "batch_size must be in"),
        (dict(optimizer="lbfgs"), "optimizer must be one of"),
        (dict(hidden_sizes=()), "needs at least one hidden layer"),
        (dict(hidden_sizes=(0,)), "hidden layer sizes"),
    ],
)
def test_invalid_values_are_named(changes, message):
    with pytest.raises(ConfigError, match=message):
        Config.for_model("mlp", **changes)


def test_convnet_shape_rules():
    with pytest.raises(ConfigError, match="1 to 4 conv layers"):
        Config.for_model("convnet", conv_filters=())
    with pytest.raises(ConfigError, match="exactly one fully connected"):
        Config.for_model("convnet", hidden_sizes=(10, 10))


def test_json_round_trip_and_strictness():
    config = Config.for_model("convnet", seed=7)
    assert Config.from_json(config.to_json()) == config
    with pytest.raises(ConfigError, match="unknown configuration keys: colour"):
        Config.from_json('{"colour": "blue"}')
    with pytest.raises(ConfigError, match="not valid JSON"):
        Config.from_json("{")
    with pytest.raises(ConfigError, match="unknown model"):
        Config.for_model("resnet")


def test_relevant_fields():
    assert "k" in relevant_fields("knn") and "learning_rate" not in relevant_fields("knn")
    assert "conv_dropout" in relevant_fields("convnet") and "conv_dropout" not in relevant_fields("mlp")
