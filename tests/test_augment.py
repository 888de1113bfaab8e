"""Augmentation: exact where it must be (identity, a quarter turn), bounded where it is random."""

from __future__ import annotations

import numpy as np

from mnistgui.core.augment import Augmentation, _resample, augment, gaussian_kernel, smooth


def _centroids(images):
    grid = np.arange(28)
    pictures = images.reshape(-1, 28, 28).astype(np.float64)
    mass = pictures.sum(axis=(1, 2))
    return np.stack([(pictures.sum(axis=2) * grid).sum(axis=1) / mass, (pictures.sum(axis=1) * grid).sum(axis=1) / mass], 1)


def test_no_augmentation_is_the_identity(mnist):
    images = mnist.train_images[:200].reshape(200, -1)
    assert not Augmentation().active
    np.testing.assert_array_equal(augment(images, Augmentation(), np.random.default_rng(0)), images)


def test_a_quarter_turn_is_numpys_rot90(mnist):
    images = np.ascontiguousarray(mnist.train_images[:5].reshape(5, -1))
    quarter = np.tile(np.array([[0.0, 1.0], [-1.0, 0.0]]), (5, 1, 1))
    out = np.empty_like(images)
    _resample(images, quarter, np.zeros((5, 2)), np.zeros((0, 2, 28, 28)), out)
    np.testing.assert_array_equal(out.reshape(5, 28, 28), np.rot90(images.reshape(5, 28, 28), k=1, axes=(1, 2)))


def test_shifts_move_the_ink_by_at_most_the_shift_and_are_reproducible(mnist):
    images = mnist.train_images[:500].reshape(500, -1)
    shifted = augment(images, Augmentation(shift=2.0), np.random.default_rng(1))
    moved = np.abs(_centroids(shifted) - _centroids(images))
    assert moved.max() <= 2.3 and moved.mean() > 0.5  # bilinear resampling blurs the centroid a little
    np.testing.assert_array_equal(augment(images, Augmentation(shift=2.0), np.random.default_rng(1)), shifted)
    assert not np.array_equal(augment(images, Augmentation(shift=2.0), np.random.default_rng(2)), shifted)


def test_rotation_scaling_and_elastic_keep_the_digit_recognisable(mnist):
    images = mnist.train_images[:300].reshape(300, -1)
    for augmentation in (Augmentation(rotate=15), Augmentation(scale=0.15), Augmentation(elastic_alpha=34, elastic_sigma=4)):
        out = augment(images, augmentation, np.random.default_rng(3))
        assert out.dtype == np.uint8 and out.shape == images.shape
        changed = np.mean(out != images)
        correlation = np.mean([np.corrcoef(a.astype(float), b.astype(float))[0, 1] for a, b in zip(out, images)])
        assert changed > 0.02 and correlation > 0.6, (augmentation, changed, correlation)
    np.testing.assert_allclose(gaussian_kernel(4.0).sum(), 1.0)


def test_smoothing_is_the_separable_gaussian():
    from scipy.ndimage import gaussian_filter

    field = np.random.default_rng(0).uniform(-1, 1, (3, 28, 28))
    expected = np.stack([gaussian_filter(f, 2.0, mode="constant", truncate=3.0) for f in field])
    np.testing.assert_allclose(smooth(field, 2.0), expected, atol=1e-12)
