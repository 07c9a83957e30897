"""How well a model edits test digits, judged by mnistgen's classifier: the measures and their result
type. The edits themselves are the model kinds' (inpainting, DDIM inversion, interpolation); this
module only scores what they return.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from mnistgen.files import JsonRecord

CHUNK = 250  # images edited at once: memory stays bounded for any count


@dataclass(frozen=True)
class EditRequest:
    """What ``evaluate --edits`` measures: the first ``digits`` test digits with the ``mask`` half
    hidden, ``pairs`` same-class pairs interpolated, DDIM inversion on ``inversion_steps`` levels."""

    digits: int = 1000
    pairs: int = 100
    inversion_steps: int = 100
    seed: int = 0
    mask: str = "lower"


@dataclass(frozen=True)
class EditScores(JsonRecord):
    """Scores of one model's edits (None: a part the model kind does not do). Accuracies are the share
    of completions the judge reads as the digit asked for."""

    digits: int
    mask: str  # the half hidden
    method: str  # how the model fills in, e.g. "RePaint: 50 steps, jump 5, resample 5"
    known_max_diff: float  # largest change of a known pixel over every completion returned, in [0, 1] units
    accuracy: float  # unguided (VAE: fitted code; CFG: unconditional) completions read as the true digit
    guidance: float | None = None
    guided_accuracy: float | None = None  # guided towards the true digit
    other_label_share: float | None = None  # guided towards (y + 1) mod 10: read as that digit
    inversion_steps: int | None = None
    inversion_psnr: float | None = None  # mean over the digits of the round trip's PSNR, in dB
    interpolation_pairs: int | None = None
    midpoints_keep_class: float | None = None  # midpoints between two digits of one class read as it
    seconds: float | None = None
    method_known_max_diff: float | None = None  # the same before the known pixels are pasted back: how far
    # the method itself moves them (RePaint: rounding only; the VAE's decoder redraws them)


def in_chunks(fn: Callable[..., torch.Tensor], x: torch.Tensor, labels: torch.Tensor | None = None,
              size: int = CHUNK) -> torch.Tensor:
    """``fn(x_chunk, labels_chunk)`` over slices of ``size`` images, concatenated along the batch."""
    parts = [fn(x[i: i + size], None if labels is None else labels[i: i + size]) for i in range(0, len(x), size)]
    return torch.cat(parts)


@torch.no_grad()
def read_as(judge: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The digit (N,) the judge reads in each image (N, 1, 28, 28) in [0, 1]."""
    return in_chunks(lambda x, _: judge(x).argmax(1), images)


def share(read: torch.Tensor, target: torch.Tensor) -> float:
    """The fraction of ``read`` (N,) equal to ``target`` (N,)."""
    return (read.cpu() == target.cpu()).double().mean().item()


def known_max_diff(out: torch.Tensor, images: torch.Tensor, mask: torch.Tensor) -> float:
    """max |out - images| over the pixels where ``mask`` is 1 (known)."""
    return ((out.cpu() - images.cpu()) * mask.cpu()).abs().max().item()


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio (N,) in dB of images in [0, 1]: 10 log10(1 / mean squared error)."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse)


def same_class_pairs(y: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (a, b), each (count,), of pairs of distinct images of one class: each digit's images in
    order, paired (0, 1), (2, 3), ..., taken round the digits 0-9 (the first pair of each digit, then
    the second, ...) until there are ``count``."""
    per_digit = [list(zip(idx[0::2], idx[1::2])) for idx in
                 ((y.cpu() == digit).nonzero().flatten().tolist() for digit in range(10))]
    order = [pairs[k] for k in range(max(map(len, per_digit))) for pairs in per_digit if k < len(pairs)]
    if len(order) < count:
        raise ValueError(f"only {len(order)} same-class pairs in {len(y)} images, {count} asked for")
    a, b = zip(*order[:count])
    return torch.tensor(a, dtype=torch.long), torch.tensor(b, dtype=torch.long)


@dataclass(frozen=True)
class EditExamples:
    """One model's edits of a few test digits, for the study's figures (images (N, 1, 28, 28) in [0, 1];
    None: a part its kind does not do)."""

    title: str
    completions: torch.Tensor  # unguided (VAE: fitted code; CFG: unconditional)
    guided: torch.Tensor | None  # guided towards the true digit
    noise: torch.Tensor | None  # the DDIM inversion's x_T, (N, 1, R, R), standard normal if the trip is exact
    round_trip: torch.Tensor | None  # x_T back to an image
    paths: torch.Tensor  # (P, S, 1, 28, 28): S images along the path between each of P pairs
