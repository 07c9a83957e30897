"""Sanity anchors for MNIST-FD: real training digits, blurred real digits and uniform noise vs the test set."""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import torch.nn.functional as F

from mnistgen.data.mnist import load
from mnistgen.evaluation.fd import feature_stats, frechet_distance, judge, load_classifier


class Anchors(NamedTuple):
    train_vs_test: float  # 10,000 real training images: should be near 0
    blurred: float  # the same images, Gaussian-blurred (sigma = 1.5 px): in between
    noise: float  # uniform noise: large


def gaussian_blur(images: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    radius = int(3 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=images.dtype)
    k = torch.exp(-x**2 / (2 * sigma**2))
    k = k / k.sum()
    out = F.conv2d(images, k.view(1, 1, 1, -1), padding=(0, radius))
    return F.conv2d(out, k.view(1, 1, -1, 1), padding=(radius, 0))


def anchors(n: int = 10_000, data_dir: str | os.PathLike | None = None, seed: int = 0) -> Anchors:
    classifier = load_classifier()
    reference = feature_stats(judge(classifier, load("test", "unit", data_dir=data_dir).x).features)
    train = load("train", "unit", data_dir=data_dir).x[:n]
    noise = torch.rand(train.shape, generator=torch.Generator().manual_seed(seed))
    fd = lambda images: frechet_distance(feature_stats(judge(classifier, images).features), reference)  # noqa: E731
    return Anchors(fd(train), fd(gaussian_blur(train)), fd(noise))


if __name__ == "__main__":
    for name, value in anchors()._asdict().items():
        print(f"{name:15s} {value:10.2f}")
