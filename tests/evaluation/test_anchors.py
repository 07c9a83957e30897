"""The bundled judge classifier and every sample metric behave as metrics should on real, blurred,
noise and mode-dropped images."""

import pytest

from mnistgen.data import load
from mnistgen.evaluation.anchors import anchors
from mnistgen.evaluation.fd import judge, load_classifier


@pytest.mark.slow
def test_bundled_classifier_reaches_99_percent(mnist_dir):
    test = load("test", "unit", data_dir=mnist_dir)
    predictions = judge(load_classifier(), test.x).predictions
    assert (predictions == test.y).float().mean().item() >= 0.99


@pytest.fixture(scope="module")
def scores(mnist_dir):
    return anchors(n=3000, data_dir=mnist_dir)


@pytest.mark.slow
def test_fd_and_kid_order_real_blurred_and_noise(scores):
    real, blurred, noise = scores["train_vs_test"], scores["blurred"], scores["noise"]
    assert real.mnist_fd < 0.1 * blurred.mnist_fd and blurred.mnist_fd < 0.5 * noise.mnist_fd
    assert real.kid.mean < 0.1 * blurred.kid.mean and blurred.kid.mean < 0.5 * noise.kid.mean
    assert real.fd_spread.std < 0.2 * blurred.mnist_fd


@pytest.mark.slow
def test_real_digits_score_high_fidelity_and_diversity(scores):
    real, noise = scores["train_vs_test"].prdc, scores["noise"].prdc
    assert min(real.precision, real.recall, real.coverage) > 0.9 and 0.8 < real.density < 1.2
    assert noise.recall < 0.05 and noise.coverage < 0.05
    # Precision (about 1) and density (about 0.5, as much as blurred digits) are fooled here: the noise
    # images' features collapse to one point inside the large balls of a few outlying real digits.


@pytest.mark.slow
def test_dropping_two_digits_lowers_recall_and_coverage_but_not_precision(scores):
    full, dropped = scores["train_vs_test"].prdc, scores["mode_dropped"].prdc
    assert dropped.recall < full.recall - 0.08 and dropped.coverage < full.coverage - 0.1
    assert dropped.precision > 0.97 * full.precision
    assert scores["mode_dropped"].class_histogram[0] < 15 and scores["mode_dropped"].class_histogram[1] < 15
