import json
import os
import tracemalloc

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
    np.testing.assert_equal([vars(r) for r in loaded.history], [vars(r) for r in trainer.model.history])  # NaN == NaN


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
    """Failures root cannot wave through: no folder, a file where the folder should be, a folder as target."""
    trainer, path = saved_mlp
    target = tmp_path / "model.h5"
    save_model(trainer.model, target)
    before = target.read_bytes()
    trainer.model.history.append(EpochResult(2, 0.1, 0.1, 0.1, 1.0, 1.0))
    try:
        with pytest.raises(ModelFileError, match="cannot write to .*no-such-folder: No such file or directory"):
            save_model(trainer.model, tmp_path / "no-such-folder" / "model.h5")
        (tmp_path / "blocker").write_bytes(before)
        with pytest.raises(ModelFileError, match="cannot write to .*blocker: Not a directory"):
            save_model(trainer.model, tmp_path / "blocker" / "model.h5")
        taken = tmp_path / "taken.h5"  # a folder in the way: the rename fails after the whole write
        taken.mkdir()
        (taken / "keep").write_bytes(b"mine")
        with pytest.raises(ModelFileError, match="cannot save .*taken.h5: Is a directory"):
            save_model(trainer.model, taken)
        assert [p.name for p in taken.iterdir()] == ["keep"] and (taken / "keep").read_bytes() == b"mine"
    finally:
        trainer.model.history.pop()
    assert target.read_bytes() == before and (tmp_path / "blocker").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits; "
                    "test_save_is_atomic_and_failure_keeps_the_old_file covers unwritable destinations as root")
def test_save_into_a_read_only_folder_keeps_the_old_file(saved_mlp, tmp_path):
    trainer, _ = saved_mlp
    folder = tmp_path / "read-only"
    folder.mkdir()
    target = folder / "model.h5"
    save_model(trainer.model, target)
    before = target.read_bytes()
    trainer.model.history.append(EpochResult(2, 0.1, 0.1, 0.1, 1.0, 1.0))
    folder.chmod(0o500)
    try:
        with pytest.raises(ModelFileError, match="cannot write to .*read-only: Permission denied"):
            save_model(trainer.model, target)
    finally:
        folder.chmod(0o700)
        trainer.model.history.pop()
    assert target.read_bytes() == before and [p.name for p in folder.iterdir()] == ["model.h5"]


# --- datasets whose metadata lies: refused from h5py's metadata, before anything is read ----------


def _lie(path, tmp_path, key, shape, dtype="f4", **options):
    def edit(f):
        del f[key]
        f.create_dataset(key, shape=shape, dtype=dtype, **options)

    return _copy_with(path, tmp_path, edit)


@pytest.mark.parametrize("key, shape, message", [
    ("params/w_h", (784, 10**9), r"'params/w_h' has shape \(784, 1000000000\), but the configuration needs \(784, 32\)"),
    ("optimizer/w_o.acc", (10**9, 10), r"'optimizer/w_o.acc' has shape \(1000000000, 10\), but the configuration"),
    ("history/cost", (10**9,), "history columns disagree in length"),
])
def test_huge_claimed_shapes_are_refused_unread(saved_mlp, tmp_path, key, shape, message):
    edited = _lie(saved_mlp[1], tmp_path, key, shape, chunks=(1, 10)[-len(shape):], maxshape=(None,) * len(shape),
                  compression="gzip")
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match=message):
            load_model(edited)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 16 << 20


def test_history_longer_than_any_run_is_refused(saved_mlp, tmp_path):
    def edit(f):
        for column in list(f["history"]):
            del f[f"history/{column}"]
            f.create_dataset(f"history/{column}", shape=(10**8,), dtype="f8", chunks=(4096,), compression="gzip")
        f.attrs["epochs_done"] = 10**8

    with pytest.raises(ModelFileError, match="says 100000000 epochs done; a model file holds 0 to 100000"):
        read_header(_copy_with(saved_mlp[1], tmp_path, edit))


def test_oversized_chunks_are_refused(saved_mlp, tmp_path):
    edited = _lie(saved_mlp[1], tmp_path, "params/w_o", (16, 10), chunks=(2**20, 64), maxshape=(None, None))
    with pytest.raises(ModelFileError, match=r"'params/w_o' is stored in chunks of \(1048576, 64\), too large"):
        load_model(edited)


def test_data_from_outside_the_file_is_refused(saved_mlp, tmp_path):
    """HDF5 can name external raw files as a dataset's storage; a model file may not read the machine's files."""
    outside = tmp_path / "outside.bin"
    outside.write_bytes(np.arange(160, dtype=np.float32).tobytes())
    edited = _lie(saved_mlp[1], tmp_path, "params/w_o", (16, 10), external=[(str(outside), 0, 640)])
    with pytest.raises(ModelFileError, match="'params/w_o' refers to data outside the model file"):
        load_model(edited)


def test_external_link_to_another_file_is_refused(saved_mlp, tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["w_o"] = np.ones((16, 10), np.float32)

    def edit(f):
        del f["params/w_o"]
        f["params/w_o"] = h5py.ExternalLink(str(other), "/w_o")

    with pytest.raises(ModelFileError, match="'params/w_o' refers to data outside the model file"):
        load_model(_copy_with(saved_mlp[1], tmp_path, edit))


def test_integer_or_text_where_numbers_belong(saved_mlp, tmp_path):
    edited = _lie(saved_mlp[1], tmp_path, "history/epoch", (1,), dtype=h5py.string_dtype())
    with pytest.raises(ModelFileError, match="dataset 'history/epoch' has type object, expected numbers"):
        read_header(edited)


def test_array_attribute_is_refused(saved_mlp, tmp_path):
    edited = _copy_with(saved_mlp[1], tmp_path, lambda f: f.attrs.__setitem__("saved_at", ["a"] * 1000))
    with pytest.raises(ModelFileError, match=r"attribute 'saved_at' holds an array of shape \(1000,\)"):
        read_header(edited)


def test_configuration_too_large_to_build_is_refused_before_building(saved_mlp, tmp_path):
    def edit(f):
        config = json.loads(f.attrs["config"])
        config["hidden_sizes"] = [8192] * 8
        f.attrs["config"] = json.dumps(config)

    # 784 x 8192 + 7 x 8192 x 8192 + 8192 x 10 weights: 1.9 GB of float32 before a single value is read
    with pytest.raises(ModelFileError, match="its configuration needs 476,266,496 parameters; mnistgui loads at most"):
        load_model(_copy_with(saved_mlp[1], tmp_path, edit))
