"""The bundled judge classifier and MNIST-FD behave as a metric should on real, blurred and noise images."""

from mnistgen.data import load
from mnistgen.evaluation.anchors import anchors
from mnistgen.evaluation.fd import judge, load_classifier


def test_bundled_classifier_reaches_99_percent(mnist_dir):
    test = load("test", "unit", data_dir=mnist_dir)
    predictions = judge(load_classifier(), test.x).predictions
    assert (predictions == test.y).float().mean().item() >= 0.99


def test_fd_orders_real_blurred_and_noise(mnist_dir):
    a = anchors(n=3000, data_dir=mnist_dir)
    assert a.train_vs_test < 0.1 * a.blurred
    assert a.blurred < 0.5 * a.noise
