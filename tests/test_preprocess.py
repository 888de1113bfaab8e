"""MNIST's preprocessing of any picture of a digit, and `mnistgui predict` on real PNG and JPEG files."""

import json

import numpy as np
import pytest
from PIL import Image

from mnistgui.core.config import Config
from mnistgui.core.modelfile import save_model
from mnistgui.core.preprocess import (
    CENTRE, ImageError, NoInkError, load_digit_file, load_image_file, prepare_digit,
)
from mnistgui.core.training import Trainer, create_model

from .test_cli import run

N_RENDERED = 500


def _centre_of_mass(digit):
    values = digit.astype(np.float64)
    rows, cols = np.indices(values.shape)
    return (values * rows).sum() / values.sum(), (values * cols).sum() / values.sum()


def _ink_extent(digit):
    rows, cols = np.flatnonzero(digit.any(axis=1)), np.flatnonzero(digit.any(axis=0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def test_an_mnist_digit_comes_back_as_itself(mnist):
    digits = mnist.test_images[:200]
    prepared = np.stack([prepare_digit(d) for d in digits])
    assert prepared.dtype == np.uint8 and prepared.shape == (200, 28, 28)
    assert np.abs(prepared.astype(int) - digits).mean() < 0.5  # grey levels of 255
    assert np.mean([np.array_equal(p, d) for p, d in zip(prepared, digits)]) > 0.8


def test_a_large_off_centre_digit_is_boxed_to_20_pixels_and_centred_by_mass():
    canvas = np.zeros((400, 300), dtype=np.float32)
    canvas[50:250, 200:240] = 1.0  # a tall bar: 200 x 40
    canvas[50:70, 160:240] = 1.0  # with a flag: not symmetric, so the box's centre is not the mass's
    digit = prepare_digit(canvas)
    rows, cols = _ink_extent(digit > 127)
    assert rows == 20 and 7 <= cols <= 9  # the longer side is 20, the aspect (200:80) kept
    centre_row, centre_col = _centre_of_mass(digit)
    assert abs(centre_row - CENTRE) <= 0.5 and abs(centre_col - CENTRE) <= 0.5
    assert digit.max() == 255


def test_a_wide_stroke_keeps_its_aspect_and_uint8_matches_float():
    canvas = np.zeros((100, 500), dtype=np.uint8)
    canvas[40:60, 50:450] = 200
    digit = prepare_digit(canvas)
    rows, cols = _ink_extent(digit > 127)
    assert cols == 20 and rows == 1
    np.testing.assert_array_equal(prepare_digit(canvas.astype(np.float32) / 255.0), digit)


def test_a_digit_at_the_edge_stays_in_the_field():
    canvas = np.zeros((50, 50), dtype=np.float32)
    canvas[0:50, 0:12] = 1.0  # a thick upright
    canvas[0:2, 0:50] = 1.0  # with a thin arm: the mass sits far left of the box's centre
    digit = prepare_digit(canvas)
    # Centring the mass would push the arm out of the field; the digit is kept in it instead, whole.
    assert _ink_extent(digit > 127) == (20, 20)
    centre_row, centre_col = _centre_of_mass(digit)
    assert abs(centre_row - CENTRE) <= 0.5 and centre_col < CENTRE - 2


@pytest.mark.parametrize("blank", [np.zeros((28, 28)), np.full((64, 64), 0.05), np.full((30, 40), 0.6),
                                   np.zeros((5, 5), np.uint8)])
def test_a_blank_canvas_has_no_ink(blank):
    with pytest.raises(NoInkError, match="no ink"):
        prepare_digit(blank)


def test_anything_but_a_2d_image_is_refused():
    with pytest.raises(ValueError, match="2-d gray image"):
        prepare_digit(np.zeros((28, 28, 3)))
    with pytest.raises(ValueError, match="2-d gray image"):
        prepare_digit(np.zeros((0, 28)))


# --- image files ----------------------------------------------------------------------------------------


def _render(digit, scale, size, offset, dark_on_light=True, resample=Image.Resampling.BICUBIC):
    """An MNIST digit drawn large on a canvas of `size` (w, h) at `offset`, as a scan or a photo would."""
    ink = Image.fromarray(digit).resize((28 * scale, 28 * scale), resample)
    canvas = Image.new("L", size, 0)
    canvas.paste(ink, offset)
    return Image.fromarray(255 - np.asarray(canvas)) if dark_on_light else canvas


def test_dark_on_light_light_on_dark_and_transparent_files_agree(tmp_path, mnist):
    digit = mnist.test_images[0]
    light = _render(digit, 6, (300, 260), (40, 30))
    light.save(tmp_path / "paper.png")
    Image.fromarray(255 - np.asarray(light)).save(tmp_path / "board.png")
    # Black ink on a transparent ground, as a drawing program exports it.
    alpha = np.asarray(Image.fromarray(255 - np.asarray(light)))
    rgba = np.zeros((*alpha.shape, 4), np.uint8)
    rgba[..., 3] = alpha
    Image.fromarray(rgba, "RGBA").save(tmp_path / "transparent.png")
    # Pencil on grey paper, in colour, as a photo: a ground of 200, ink of 60.
    ink = np.asarray(_render(digit, 5, (260, 240), (20, 40), dark_on_light=False))
    grey = (200 - ink * (140 / 255)).astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, axis=-1), "RGB").save(tmp_path / "photo.jpg", quality=85)

    paper = load_image_file(tmp_path / "paper.png")
    assert paper.dtype == np.float32 and paper.shape == (260, 300) and paper.max() == 1.0
    assert np.median(paper) == 0.0  # the ground is black after inversion
    reference = load_digit_file(tmp_path / "paper.png")
    for name in ("board.png", "transparent.png", "photo.jpg"):
        other = load_digit_file(tmp_path / name)
        assert np.abs(other.astype(int) - reference).mean() < 10, name
    assert np.abs(reference.astype(int) - digit).mean() < 15


def test_sixteen_bit_and_palette_files_are_read(tmp_path, mnist):
    digit = _render(mnist.test_images[1], 4, (150, 150), (10, 20))
    wide = (np.asarray(digit).astype(np.uint16) * 257)
    Image.fromarray(wide).save(tmp_path / "deep.png")
    digit.convert("P").save(tmp_path / "palette.png")
    reference = load_digit_file(tmp_path / "palette.png")
    assert np.abs(load_digit_file(tmp_path / "deep.png").astype(int) - reference).mean() < 2


def test_unreadable_and_blank_files_name_themselves(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    Image.new("L", (100, 80), 255).save(tmp_path / "white.png")
    Image.new("RGB", (100, 80), (30, 30, 30)).save(tmp_path / "dark.jpg")
    truncated = tmp_path / "cut.png"
    Image.new("L", (200, 200), 128).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    cases = {
        tmp_path / "notes.png": "not an image Pillow can read",
        tmp_path / "none.png": "no such file",
        tmp_path: "is a folder",
        truncated: "cannot read the image",
    }
    for path, message in cases.items():
        with pytest.raises(ImageError, match=message) as caught:
            load_digit_file(path)
        assert str(caught.value).startswith(str(path))
    for name in ("white.png", "dark.jpg"):
        with pytest.raises(NoInkError, match=f"{name}: no ink"):
            load_digit_file(tmp_path / name)


# --- mnistgui predict -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_file(mnist, tmp_path_factory):
    config = Config.for_model("dropout_mlp", hidden_sizes=(256,), use_bias=True, init="he", optimizer="adam",
                              learning_rate=0.002, epochs=1, train_size=20000, test_size=100, seed=3)
    model = create_model(config)
    for _ in Trainer(model, mnist.subset(20000, 100)).train(evaluate=False):
        pass
    path = tmp_path_factory.mktemp("predict") / "mlp.h5"
    save_model(model, path, "mnist")
    return model, path


def test_predict_classifies_rendered_files_as_well_as_the_arrays(model_file, mnist, tmp_path):
    model, path = model_file
    digits, labels = mnist.test_images[:N_RENDERED], mnist.test_labels[:N_RENDERED]
    rng = np.random.default_rng(11)
    files = []
    for index, digit in enumerate(digits):
        scale = int(rng.integers(4, 9))
        side = 28 * scale
        size = (side + int(rng.integers(10, 300)), side + int(rng.integers(10, 300)))
        offset = (int(rng.integers(0, size[0] - side)), int(rng.integers(0, size[1] - side)))
        picture = _render(digit, scale, size, offset)
        name = tmp_path / (f"{index}.png" if index % 2 else f"{index}.jpg")
        picture.save(name, quality=90) if name.suffix == ".jpg" else picture.save(name)
        files.append(str(name))
    result = run("predict", str(path), *files, "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [row["file"] for row in rows] == files
    assert all(len(row["probs"]) == 10 and abs(sum(row["probs"]) - 1) < 1e-4 for row in rows)
    from_files = np.mean([row["class"] == label for row, label in zip(rows, labels)])
    from_arrays = np.mean(model.predict_proba(digits).argmax(axis=1) == labels)
    assert from_arrays > 0.85
    print(f"accuracy: {from_files:.3f} from files, {from_arrays:.3f} from arrays")
    assert abs(from_files - from_arrays) <= 0.01, (from_files, from_arrays)


def test_predict_names_bad_files_and_still_classifies_the_rest(model_file, mnist, tmp_path):
    _, path = model_file
    _render(mnist.test_images[0], 5, (200, 200), (30, 30)).save(tmp_path / "seven.png")
    Image.new("L", (90, 90), 255).save(tmp_path / "blank.png")
    (tmp_path / "text.jpg").write_text("hello")
    result = run("predict", str(path), str(tmp_path / "seven.png"), str(tmp_path / "blank.png"),
                 str(tmp_path / "text.jpg"), str(tmp_path / "gone.png"))
    assert result.returncode == 2
    assert result.stdout.startswith(f"{tmp_path / 'seven.png'}: 7 (") and result.stdout.count("\n") == 1
    errors = result.stderr.splitlines()
    assert errors == [
        f"mnistgui: error: {tmp_path / 'blank.png'}: no ink: the image is blank",
        f"mnistgui: error: {tmp_path / 'text.jpg'}: not an image Pillow can read (PNG, JPEG, ...)",
        f"mnistgui: error: {tmp_path / 'gone.png'}: no such file",
    ]


def test_predict_text_output_and_a_bad_model_file(model_file, mnist, tmp_path):
    _, path = model_file
    _render(mnist.test_images[1], 4, (150, 120), (5, 5), dark_on_light=False).save(tmp_path / "two.png")
    result = run("predict", str(path), str(tmp_path / "two.png"))
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith(f"{tmp_path / 'two.png'}: 2 (")
    assert line.count(":") == 11  # after the file, and in each of the 10 probabilities
    missing = run("predict", str(tmp_path / "nomodel.h5"), str(tmp_path / "two.png"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "nomodel.h5" in missing.stderr


def test_predict_with_a_nearest_neighbours_model(mnist, tmp_path):
    knn = create_model(Config.for_model("knn", k=3))
    knn.fit(mnist.train_images[:2000], mnist.train_labels[:2000])
    save_model(knn, tmp_path / "knn.h5", "mnist")
    for index in range(3):
        _render(mnist.test_images[index], 5, (220, 200), (10 * index, 20)).save(tmp_path / f"{index}.png")
    result = run("predict", str(tmp_path / "knn.h5"), *(str(tmp_path / f"{i}.png") for i in range(3)), "--json")
    assert result.returncode == 0, result.stderr
    assert [row["class"] for row in json.loads(result.stdout)] == list(mnist.test_labels[:3])
