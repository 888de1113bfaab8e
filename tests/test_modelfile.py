import json

import h5py
import numpy as np
import pytest

from mnistgui.core.config import Config
from mnistgui.core.errors import ModelFileError
from mnistgui.core.modelfile import FORMAT_VERSION, load_model, read_header, save_model
from mnistgui.core.training import EpochResult, KnnModel, Trainer, create_model


def _trained(config, mnist, epochs=None):
    dataset = mnist.subset(config.train_size, config.test_size)
    trainer = Trainer(create_model(config), dataset)
    list(trainer.train(epochs))
    return trainer


@pytest.fixture(scope="module")
def saved_mlp(mnist, tmp_path_factory):
    config = Config.for_model("dropout_mlp", train_size=600, test_size=200, hidden_sizes=(32, 16))
    trainer = _trained(config, mnist)
    path = tmp_path_factory.mktemp("models") / "mlp.h5"
    save_model(trainer.model, path, mnist.name, mnist.digest)
    return trainer, path


def test_loaded_model_predicts_exactly_as_before(saved_mlp, mnist):
    trainer, path = saved_mlp
    loaded, header = load_model(path)
    images = mnist.test_images[:300]
    assert np.array_equal(loaded.predict_proba(images), trainer.model.predict_proba(images))
    assert header["epochs_done"] == 1 and header["dataset_digest"] == mnist.digest
    assert [vars(r) for r in loaded.history] == [vars(r) for r in trainer.model.history]


def test_file_is_self_describing(saved_mlp):
    _, path = saved_mlp
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "mnistgui-model" and f.attrs["format_version"] == FORMAT_VERSION
        assert json.loads(f.attrs["config"])["hidden_sizes"] == [32, 16]
        assert set(f["params"]) == {"w_h", "w_h2", "w_o"}
        assert set(f["optimizer"]) == {"w_h.acc", "w_h2.acc", "w_o.acc"}
        assert json.loads(f.attrs["rng_state"])["bit_generator"] == "PCG64"
        assert set(json.loads(f.attrs["versions"])) >= {"mnistgui", "pytensor", "numpy"}
        assert list(f["history/test_error"][()]) == [read_header(path)["history"][0].test_error]


@pytest.mark.parametrize("model", ["dropout_mlp", "convnet"])
def test_resume_is_exact_bit_for_bit(model, mnist, tmp_path):
    """2 epochs, save, load, 1 more == 3 uninterrupted epochs, with dropout RNG and RMSprop state."""
    extra = dict(hidden_sizes=(32, 32)) if model == "dropout_mlp" else dict(conv_filters=(4, 8), hidden_sizes=(16,))
    config = Config.for_model(model, train_size=256, test_size=64, batch_size=64, shuffle=True, **extra)
    straight = _trained(config, mnist, epochs=3).model
    first = _trained(config, mnist, epochs=2).model
    save_model(first, tmp_path / "two.h5")
    resumed, _ = load_model(tmp_path / "two.h5")
    trainer = Trainer(resumed, mnist.subset(256, 64))
    list(trainer.train(1))
    assert resumed.epochs_done == 3
    for name, value in straight.weights().items():
        assert np.array_equal(resumed.weights()[name], value), name
    assert [r.cost for r in resumed.history] == [r.cost for r in straight.history]


def test_knn_round_trip(mnist, tmp_path):
    config = Config.for_model("knn", k=3, train_size=500, test_size=50)
    trainer = _trained(config, mnist)
    save_model(trainer.model, tmp_path / "knn.h5")
    loaded, _ = load_model(tmp_path / "knn.h5")
    assert isinstance(loaded, KnnModel)
    images = mnist.test_images[:50]
    assert np.array_equal(loaded.predict_proba(images), trainer.model.predict_proba(images))


# --- files that must be refused, each with its reason ------------------------------------------------


def _copy_with(path, tmp_path, edit):
    target = tmp_path / "edited.h5"
    target.write_bytes(path.read_bytes())
    with h5py.File(target, "r+") as f:
        edit(f)
    return target


def test_not_hdf5(tmp_path):
    (tmp_path / "x.h5").write_text("hello")
    with pytest.raises(ModelFileError, match="x.h5: not an HDF5 model file, or truncated"):
        load_model(tmp_path / "x.h5")


def test_foreign_hdf5(tmp_path):
    with h5py.File(tmp_path / "keras.h5", "w") as f:
        f.create_dataset("weights", data=np.zeros(3))
    with pytest.raises(ModelFileError, match="an HDF5 file, but not an mnistgui model file"):
        load_model(tmp_path / "keras.h5")


def test_truncated(saved_mlp, tmp_path):
    _, path = saved_mlp
    data = path.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="cut.h5: .*(truncated|damaged)"):
        load_model(tmp_path / "cut.h5")


def test_newer_format(saved_mlp, tmp_path):
    edited = _copy_with(saved_mlp[1], tmp_path, lambda f: f.attrs.modify("format_version", FORMAT_VERSION + 1))
    with pytest.raises(ModelFileError, match=f"format {FORMAT_VERSION + 1} by a newer mnistgui"):
        load_model(edited)


def test_wrong_shape_is_named(saved_mlp, tmp_path):
    def edit(f):
        del f["params/w_h2"]
        f.create_dataset("params/w_h2", data=np.zeros((32, 99), dtype=np.float32))

    with pytest.raises(ModelFileError, match=r"'params/w_h2' has shape \(32, 99\), but the configuration needs \(32, 16\)"):
        load_model(_copy_with(saved_mlp[1], tmp_path, edit))


def test_missing_parameter_is_named(saved_mlp, tmp_path):
    with pytest.raises(ModelFileError, match="missing parameter w_o"):
        load_model(_copy_with(saved_mlp[1], tmp_path, lambda f: f.__delitem__("params/w_o")))


def test_unknown_model_is_named(saved_mlp, tmp_path):
    def edit(f):
        config = json.loads(f.attrs["config"])
        config["model"] = "transformer"
        f.attrs["config"] = json.dumps(config)

    with pytest.raises(ModelFileError, match="model must be one of .* not 'transformer'"):
        load_model(_copy_with(saved_mlp[1], tmp_path, edit))


def test_nan_weights_are_refused(saved_mlp, tmp_path):
    def edit(f):
        f["params/w_o"][0, 0] = np.nan

    with pytest.raises(ModelFileError, match="w_o holds NaN"):
        load_model(_copy_with(saved_mlp[1], tmp_path, edit))


def test_save_is_atomic_and_failure_keeps_the_old_file(saved_mlp, tmp_path):
    trainer, path = saved_mlp
    target = tmp_path / "model.h5"
    save_model(trainer.model, target)
    before = target.read_bytes()
    trainer.model.history.append(EpochResult(2, 0.1, 0.1, 0.1, 1.0, 1.0))
    try:
        with pytest.raises(ModelFileError, match="cannot write to .*no-such-folder: No such file or directory"):
            save_model(trainer.model, tmp_path / "no-such-folder" / "model.h5")
        target.parent.chmod(0o500)
        try:
            with open(tmp_path / "probe", "w"):
                writable = True
        except PermissionError:
            writable = False
        if not writable:  # root ignores permission bits, so only check where they bite
            with pytest.raises(ModelFileError, match="cannot write to"):
                save_model(trainer.model, target)
    finally:
        target.parent.chmod(0o700)
        trainer.model.history.pop()
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
