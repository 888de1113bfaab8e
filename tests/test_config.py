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
        (dict(hidden_sizes=()), "hidden_sizes: sigmoid mlp needs 1 to 8 layers, not 0"),
        (dict(hidden_sizes=(0,)), r"hidden_sizes: each in \[1, 8192\], not 0"),
        (dict(hidden_sizes=(8193,)), r"hidden_sizes: each in \[1, 8192\], not 8193"),
        (dict(seed=2**31), r"seed must be in \[0, 2147483647\]"),
        (dict(hidden_dropout=0.96), r"hidden_dropout must be in \[0, 0.95\]"),
    ],
)
def test_invalid_values_are_named(changes, message):
    with pytest.raises(ConfigError, match=message):
        Config.for_model("mlp", **changes)


def test_convnet_shape_rules():
    with pytest.raises(ConfigError, match="conv_filters: convnet needs 1 to 4 layers, not 0"):
        Config.for_model("convnet", conv_filters=())
    with pytest.raises(ConfigError, match="conv_filters: convnet needs 1 to 4 layers, not 5"):
        Config.for_model("convnet", conv_filters=(8,) * 5)
    with pytest.raises(ConfigError, match="hidden_sizes: convnet needs exactly 1 layer, not 2"):
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


def test_every_field_is_a_setting_and_defaults_come_from_the_table():
    import dataclasses

    from mnistgui.core.config import NOTEBOOK_DEFAULTS, SETTINGS

    assert [f.name for f in dataclasses.fields(Config)] == list(SETTINGS)
    assert NOTEBOOK_DEFAULTS["convnet"]["conv_filters"] == (32, 64, 128)
    for model in MODELS:
        config = Config.for_model(model)
        for name, setting in SETTINGS.items():
            assert getattr(config, name) == (model if name == "model" else setting.default_for(model))


def test_resume_applies_changeable_settings_and_names_the_fixed_ones():
    from mnistgui.core.config import resume_config

    config = Config.for_model("convnet")
    resumed = resume_config(config, dict(learning_rate=0.0005, batch_size=64, hidden_dropout=0.3, epochs=4,
                                         conv_filters=(32, 64, 128)))  # a fixed setting at its value is fine
    assert (resumed.learning_rate, resumed.batch_size, resumed.hidden_dropout, resumed.epochs) == (0.0005, 64, 0.3, 4)
    with pytest.raises(ConfigError) as caught:
        resume_config(config, dict(learning_rate=0.1, optimizer="adam", seed=7, hidden_sizes=(100,)))
    message = str(caught.value)
    for named in ("--optimizer", "--seed", "--hidden"):
        assert named in message
    assert "--lr" not in message
    with pytest.raises(ConfigError, match="learning_rate must be in"):
        resume_config(config, dict(learning_rate=-1.0))


def test_unused_reasons_follow_model_optimizer_and_init():
    from mnistgui.core.config import SETTINGS

    sgd = Config.for_model("mlp")
    assert SETTINGS["rho"].unused_reason(sgd) == "only used by RMSprop"
    assert SETTINGS["momentum"].unused_reason(sgd) == "only used by Momentum and Nesterov"
    assert SETTINGS["conv_dropout"].unused_reason(sgd) == "not used by sigmoid mlp"
    assert SETTINGS["init_std"].unused_reason(sgd.replace(init="he")) == "only used by the normal initialisation"
    assert SETTINGS["learning_rate"].unused_reason(sgd) == ""


def test_non_finite_numbers_and_oversized_models_are_refused():
    from mnistgui.core.training import create_model

    with pytest.raises(ConfigError, match="learning_rate must be a finite number, not nan"):
        Config.for_model("mlp", learning_rate=float("nan"))
    with pytest.raises(ConfigError, match="needs 476,266,496 parameters; mnistgui builds at most 268,435,456"):
        create_model(Config.for_model("mlp", hidden_sizes=(8192,) * 8))
