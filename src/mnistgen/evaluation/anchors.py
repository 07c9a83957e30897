"""Sanity anchors for every sample metric: real training digits, blurred real digits, uniform noise,
and real digits with two classes removed, each judged against the MNIST test set as samples are.

``python -m mnistgen.evaluation.anchors`` prints the table the README quotes.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from mnistgen.data.mnist import load
from mnistgen.diffusion.samplers import SamplerSettings
from mnistgen.evaluation.fd import load_classifier
from mnistgen.evaluation.metrics import reference_set, sample_quality
from mnistgen.evaluation.results import SampleQuality

DROPPED = (0, 1)  # the digits the mode-dropped anchor leaves out


def gaussian_blur(images: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    radius = int(3 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=images.dtype)
    k = torch.exp(-x**2 / (2 * sigma**2))
    k = k / k.sum()
    out = F.conv2d(images, k.view(1, 1, 1, -1), padding=(0, radius))
    return F.conv2d(out, k.view(1, 1, -1, 1), padding=(radius, 0))


def anchor_images(n: int, data_dir: str | os.PathLike | None, seed: int = 0) -> dict[str, torch.Tensor]:
    """The anchor image sets, (N, 1, 28, 28) in [0, 1]: n real training digits, the same blurred
    (sigma = 1.5 px), n uniform-noise images, and the n real digits without the DROPPED classes."""
    train = load("train", "unit", data_dir=data_dir)
    x, y = train.x[:n], train.y[:n]
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed))
    kept = ~torch.isin(y, torch.tensor(DROPPED))
    return {"train_vs_test": x, "blurred": gaussian_blur(x), "noise": noise, "mode_dropped": x[kept]}


def anchors(n: int = 10_000, data_dir: str | os.PathLike | None = None, seed: int = 0) -> dict[str, SampleQuality]:
    """Each anchor scored exactly as ``evaluate`` scores samples."""
    classifier = load_classifier()
    reference = reference_set(classifier, data_dir, "cpu")
    return {name: sample_quality(iter(images.split(1000)), None, classifier, reference, SamplerSettings(), seed)
            for name, images in anchor_images(n, data_dir, seed).items()}


def table(scores: dict[str, SampleQuality]) -> str:
    """The anchors as a Markdown table."""
    rows = ["| anchor | n | MNIST-FD | FD_inf | KID | precision | recall | density | coverage |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, q in scores.items():
        inf = q.fd_spread.at_infinity
        rows.append(f"| {name} | {q.n_samples:,} | {q.mnist_fd:.2f} | {'-' if inf is None else f'{inf:.2f}'} | "
                    f"{q.kid.mean:.2f} | {q.prdc.precision:.3f} | {q.prdc.recall:.3f} | {q.prdc.density:.3f} | "
                    f"{q.prdc.coverage:.3f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table(anchors()))
