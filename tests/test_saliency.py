"""Saliency maps on real MNIST models: the gradient against finite differences, integrated gradients' axioms."""

import numpy as np
import pytest

from mnistgui.core.config import Config
from mnistgui.core.saliency import Saliency, normalised
from mnistgui.core.training import Trainer, create_model


def _trained(mnist, model, train_size, **settings):
    config = Config.for_model(model, epochs=1, train_size=train_size, test_size=100, **settings)
    network = create_model(config)
    for _ in Trainer(network, mnist.subset(train_size, 100)).train(evaluate=False):
        pass
    return network


@pytest.fixture(scope="module")
def relu_mlp(mnist):
    return _trained(mnist, "dropout_mlp", 5000, hidden_sizes=(64, 32), use_bias=True, init="he")


@pytest.fixture(scope="module")
def saliency(relu_mlp):
    return Saliency(relu_mlp)


def test_integrated_gradients_add_up_to_the_score_difference(saliency, mnist):
    # Completeness (Sundararajan et al. 2017): sum of attributions = score(x) - score(black).
    differences = []
    for image in mnist.test_images[:20]:
        explanation = saliency.explain(image, steps=64)
        difference = explanation.score - explanation.baseline_score
        differences.append(abs(difference))
        gap = explanation.completeness_gap
        assert abs(gap) <= 0.03 * abs(difference) + 1e-3, (gap, difference)
        assert explanation.integrated.shape == (28, 28) and explanation.integrated.dtype == np.float32
    assert np.mean(differences) > 0.5  # real differences to account for (measured: gaps within 1.2% of them)


def test_integrated_gradients_credit_only_pixels_that_differ_from_the_baseline(saliency, mnist):
    image = mnist.test_images[3]
    integrated = saliency.integrated_gradients(image, target=4, steps=32)
    assert np.all(integrated[image == 0] == 0)  # black pixels equal the black baseline
    assert np.count_nonzero(integrated) > 0
    # From a baseline equal to the image, nothing is attributed.
    assert np.all(saliency.integrated_gradients(image, steps=8, baseline=image) == 0)


def test_the_gradient_matches_finite_differences(saliency, mnist):
    rng = np.random.default_rng(0)
    for image in mnist.test_images[:5]:
        pixels = image.reshape(-1).astype(np.float64) / 255.0
        target = int(np.argmax(saliency.logits(image[None])[0]))
        gradient = saliency.gradient(image).reshape(-1).astype(np.float64)
        for direction in (gradient / np.linalg.norm(gradient), rng.standard_normal(784) / 28.0):
            h = 1e-2
            scores = saliency.logits(np.stack([pixels + h * direction, pixels - h * direction]).astype(np.float32))
            numeric = (scores[0, target] - scores[1, target]) / (2 * h)
            assert numeric == pytest.approx(gradient @ direction, rel=0.02, abs=1e-3)
        # And pixel by pixel, where the gradient is largest.
        for index in np.argsort(-np.abs(gradient))[:5]:
            step = np.zeros(784)
            step[index] = 1e-2
            scores = saliency.logits(np.stack([pixels + step, pixels - step]).astype(np.float32))
            numeric = (scores[0, target] - scores[1, target]) / 2e-2
            assert numeric == pytest.approx(gradient[index], rel=0.05, abs=1e-3)


def test_logistic_regression_maps_are_its_weights(mnist):
    model = _trained(mnist, "logreg", 2000)
    saliency = Saliency(model)
    weights = model.params["w"].get_value()
    image = mnist.test_images[0]
    for target in (0, 7):
        np.testing.assert_allclose(saliency.gradient(image, target), weights[:, target].reshape(28, 28), atol=1e-6)
        integrated = saliency.integrated_gradients(image, target, steps=4)
        expected = (image.reshape(-1) / 255.0) * weights[:, target]
        np.testing.assert_allclose(integrated.reshape(-1), expected, atol=1e-5)


def test_the_default_class_is_the_prediction_and_bad_input_is_refused(saliency, mnist):
    image = mnist.test_images[1]
    explanation = saliency.explain(image, steps=8)
    assert explanation.target == explanation.predicted == int(np.argmax(explanation.probs))
    assert explanation.probs.sum() == pytest.approx(1.0, abs=1e-5)
    float_image = image.astype(np.float32) / 255.0
    np.testing.assert_allclose(saliency.gradient(float_image), saliency.gradient(image), atol=1e-6)
    with pytest.raises(ValueError, match="class must be in 0..9"):
        saliency.gradient(image, target=10)
    with pytest.raises(ValueError, match="one 28x28 image"):
        saliency.gradient(np.zeros((27, 28)))
    with pytest.raises(ValueError, match="steps must be"):
        saliency.explain(image, steps=0)
    with pytest.raises(ValueError, match="nearest neighbours has no gradient"):
        Saliency(create_model(Config.for_model("knn")))


def test_a_convnet_satisfies_completeness_too(mnist):
    model = _trained(mnist, "convnet", 1000, conv_filters=(4, 8), hidden_sizes=(16,), use_bias=True, init="he",
                     optimizer="adam", conv_dropout=0.0, hidden_dropout=0.0)
    saliency = Saliency(model)
    for image in mnist.test_images[:3]:
        explanation = saliency.explain(image, steps=64)
        difference = explanation.score - explanation.baseline_score
        assert abs(explanation.completeness_gap) <= 0.05 * abs(difference) + 0.02


def test_maps_are_normalised_for_display_with_zero_kept(saliency, mnist):
    heat = saliency.integrated_gradients(mnist.test_images[0], steps=16)
    shown = normalised(heat)
    assert shown.min() >= -1 and shown.max() <= 1 and (np.abs(shown) == 1).any()
    np.testing.assert_array_equal(np.sign(shown), np.sign(heat))
    assert np.all(normalised(np.zeros((28, 28))) == 0)
    single = np.zeros((28, 28))
    single[3, 4] = -2.0  # one pixel: the 99th percentile is 0, so the maximum scales
    assert normalised(single)[3, 4] == -1.0
