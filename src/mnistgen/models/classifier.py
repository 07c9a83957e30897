"""A small MNIST CNN: the judge behind class accuracy, mode coverage and MNIST-FD."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mnistgen.config import ClassifierConfig


def _stage(c_in: int, c_out: int) -> nn.Sequential:
    # GroupNorm, not BatchNorm: each image is judged alone, and data-parallel training needs no statistics sync.
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.GroupNorm(8, c_out), nn.ReLU(), nn.MaxPool2d(2))


class Classifier(nn.Module):
    """(B, 1, 28, 28) in [0, 1] -> logits (B, 10); ``features`` gives the penultimate layer (B, feature_dim).

    Three conv-GroupNorm-ReLU-maxpool stages (28 -> 14 -> 7 -> 3), a hidden layer, a linear read-out.
    32x32 inputs are centre-cropped to 28x28 first.
    """

    def __init__(self, config: ClassifierConfig = ClassifierConfig()):
        super().__init__()
        self.config = config
        w = config.width
        self.body = nn.Sequential(_stage(1, w), _stage(w, 2 * w), _stage(2 * w, 4 * w), nn.Flatten())
        self.hidden = nn.Linear(4 * w * 9, config.feature_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(config.feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == 32:
            x = x[..., 2:30, 2:30]  # undo the diffusion models' padding
        return F.relu(self.hidden(self.body(x)))  # (B, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(self.features(x)))


class ClassifierObjective:
    """Cross-entropy for the shared trainer."""

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None):
        return F.cross_entropy(model(x), y)
