"""A digit from anywhere made into an MNIST digit, the way the data set was made.

LeCun et al. made MNIST from NIST's scans like this: crop to the ink, scale the longer side to 20
pixels keeping the aspect ratio, anti-aliased (so the edges turn grey), then place the 20-pixel box
in a 28x28 field so that the ink's centre of mass is at the field's centre. Measured on the training
set, the centre of mass sits at (14.0, 14.0) in pixel indices (std 0.29: whole-pixel shifts) and every
digit's ink spans 20 pixels along its longer side. `prepare_digit` does the same to any image with
bright ink on a dark ground (a drawing pad's canvas); `load_image_file` reads a PNG or JPEG, dark ink
on light paper or light on dark, and hands `prepare_digit` bright ink on black.

Measured: 500 MNIST test digits drawn 4 to 8 times larger, dark on light, off-centre on larger canvases
and saved as PNG and JPEG, are classified from the files within 0.6 points of the 28x28 arrays' accuracy
(eight draws; tests/test_preprocess.py).
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from .errors import MnistguiError
from .models import IMAGE_SIDE

BOX_SIDE = 20  # the longer side of the ink, in pixels, as in MNIST
CENTRE = 14.0  # where MNIST's centres of mass sit, in pixel indices
# The ink's box is where pixels are at least this bright (ink scaled to 1), and EDGE target pixels of
# the fainter edge around it come along. MNIST boxed NIST's binary scans, whose edges sit part-way up
# the anti-aliased ones; with these values an MNIST digit comes back as itself (mean absolute
# difference 0.02 grey levels) and JPEG noise around a scanned digit stays out of the box.
INK_THRESHOLD = 0.3
EDGE = 1
# Below this contrast between the ink and the ground (in [0, 1]) an image holds no digit.
MIN_CONTRAST = 0.1
MAX_PIXELS = 50_000_000  # larger images are refused: a decompression bomb, not a digit


class ImageError(MnistguiError, ValueError):
    """An image cannot be made into a digit: unreadable, or without ink. The message names the file."""


class NoInkError(ImageError):
    """The image is blank: nothing stands out from the ground."""


def _as_unit_float(gray: np.ndarray) -> np.ndarray:
    array = np.asarray(gray)
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"expected a 2-d gray image, not an array of shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255.0)
    if array.dtype == bool:
        return array.astype(np.float32)
    values = np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(values, 0.0, 1.0)


def ink_box(gray: np.ndarray, threshold: float = INK_THRESHOLD) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right), bottom and right exclusive, of the pixels brighter than `threshold`
    times the brightest; None when nothing stands out (a dark or uniform image)."""
    values = _as_unit_float(gray)
    peak = float(values.max())
    if peak - float(values.min()) < MIN_CONTRAST:  # dark, or one grey throughout
        return None
    ink = values >= threshold * peak
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _resize(values: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Anti-aliased resize: Pillow widens the Lanczos filter with the reduction (ringing is clipped)."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32))
    resized = image.resize((cols, rows), Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def prepare_digit(gray: np.ndarray) -> np.ndarray:
    """An MNIST digit, uint8 (28, 28), from `gray`: any size, bright ink on a dark ground.

    `gray` is float in [0, 1] or uint8. The ink's box is scaled so its longer side is 20 pixels
    (anti-aliased, aspect kept), its brightest pixel made 255, and placed in 28x28 with its centre of
    mass at the centre (whole-pixel shift, kept inside the field). Raises NoInkError for a blank image.
    """
    values = _as_unit_float(gray)
    box = ink_box(values)
    if box is None:
        raise NoInkError("no ink: the image is blank")
    top, bottom, left, right = box
    scale = BOX_SIDE / max(bottom - top, right - left)
    # The faint edge beyond the box comes along (a margin of EDGE target pixels), anti-aliased as the rest.
    margin = int(np.ceil(EDGE / scale))
    top, left = max(0, top - margin), max(0, left - margin)
    bottom, right = min(values.shape[0], bottom + margin), min(values.shape[1], right + margin)
    crop = values[top:bottom, left:right]
    rows = min(IMAGE_SIDE, max(1, round(crop.shape[0] * scale)))
    cols = min(IMAGE_SIDE, max(1, round(crop.shape[1] * scale)))
    digit = _resize(crop, rows, cols)
    if digit.max() <= 0:
        raise NoInkError("no ink: the image is blank")
    digit /= digit.max()
    mass = digit.sum()
    centre_row = float((digit.sum(axis=1) * np.arange(rows)).sum() / mass)
    centre_col = float((digit.sum(axis=0) * np.arange(cols)).sum() / mass)
    # Place so the centre of mass lands on CENTRE, but never push ink out of the field.
    top = int(np.clip(round(CENTRE - centre_row), 0, IMAGE_SIDE - rows))
    left = int(np.clip(round(CENTRE - centre_col), 0, IMAGE_SIDE - cols))
    field = np.zeros((IMAGE_SIDE, IMAGE_SIDE), dtype=np.float32)
    field[top : top + rows, left : left + cols] = digit
    return np.round(field * 255.0).astype(np.uint8)


def _luminance(image) -> tuple[np.ndarray, np.ndarray | None]:
    """Gray values in [0, 1] and, where the image has transparency, its alpha in [0, 1]."""
    mode = image.mode
    alpha = None
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
        gray = np.asarray(rgba.convert("L"), dtype=np.float32) / 255.0
    elif mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        values = np.asarray(image, dtype=np.float64)
        gray = (values / (65535.0 if values.max() > 255 else 255.0)).astype(np.float32)
    elif mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float32))
        gray = values if values.max() <= 1.0 else values / 255.0
    elif mode == "1":
        gray = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    else:
        gray = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    return np.clip(gray, 0.0, 1.0), alpha


def _border(values: np.ndarray) -> np.ndarray:
    return np.concatenate([values[0], values[-1], values[:, 0], values[:, -1]])


def load_image_file(path: str | os.PathLike) -> np.ndarray:
    """A picture of a digit as gray float32 in [0, 1], bright ink on a black ground, any size.

    Reads PNG, JPEG (turned upright by its EXIF orientation) and whatever else Pillow reads. Dark ink
    on light paper is inverted: the ground is the median of the image's border. The ground is then
    made 0 and the ink's brightest pixel 1. A transparent ground counts as paper. Raises ImageError
    naming the file when it cannot be read, and NoInkError when nothing stands out from the ground.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    name = os.fspath(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(name) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise ImageError(f"{name}: {image.width}x{image.height} pixels is too large for a digit")
                image = ImageOps.exif_transpose(image)
                image.load()
                gray, alpha = _luminance(image)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: is a folder, not an image") from None
    except PermissionError:
        raise ImageError(f"{name}: permission denied") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image Pillow can read (PNG, JPEG, ...)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name}: too many pixels for a digit") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # truncated or corrupt data
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ImageError(f"{name}: cannot read the image ({reason})") from None
    if alpha is not None and alpha.min() < 1.0:
        # Ink drawn on a transparent ground: lay it on a ground that contrasts with the ink.
        ink_level = float((gray * alpha).sum() / max(alpha.sum(), 1e-6))
        ground = 1.0 if ink_level < 0.5 else 0.0
        gray = alpha * gray + (1.0 - alpha) * ground
    if float(np.median(_border(gray))) > 0.5:
        gray = 1.0 - gray  # dark ink on light paper
    ground = float(np.median(_border(gray)))
    peak = float(gray.max())
    if peak - ground < MIN_CONTRAST:
        raise NoInkError(f"{name}: no ink: the image is blank")
    return np.clip((gray - ground) / (peak - ground), 0.0, 1.0).astype(np.float32)


def load_digit_file(path: str | os.PathLike) -> np.ndarray:
    """`prepare_digit(load_image_file(path))`: the uint8 (28, 28) digit a model classifies."""
    gray = load_image_file(path)
    try:
        return prepare_digit(gray)
    except NoInkError:
        raise NoInkError(f"{os.fspath(path)}: no ink: the image is blank") from None
