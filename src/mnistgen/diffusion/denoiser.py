"""One interface between a network and every sampler: a grid of noise levels and a denoiser.

Both noise processes write a noisy image as x = alpha x_0 + sigma eps with alpha^2 + sigma^2 = 1
(variance preserving), so a noise level is (alpha, sigma), or its log-SNR lambda = log(alpha^2 /
sigma^2) (Kingma et al. 2021; Karras et al. 2022 write the same with sigma / alpha). A process
turns a number of steps into a :class:`Grid` of levels; a :class:`Denoiser` turns a network and
what it predicts (eps, v or x_0) into the pair (x_0-hat, eps-hat) at any level of a grid; a
sampler needs nothing else. Classifier-free guidance is :class:`Guided`, a denoiser around a
conditional one: it works with any process and any sampler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch
from torch import nn

from mnistgen.diffusion import parameterisation


class Gaussian(NamedTuple):
    mean: torch.Tensor
    variance: torch.Tensor


@dataclass(frozen=True, eq=False)
class Grid:
    """K + 1 noise levels, the noisiest first; the network is evaluated at the first K, and a sampler's
    K steps end at the last level (alpha = 1, sigma = 0 for the DDPM's grids: the clean image).

    ``alpha_bar`` is alpha^2 as the process tabulates it (the DDPM's samplers use it as written in
    the papers) and ``one_minus_alpha_bar`` is 1 - alpha^2 = sigma^2; ``time`` is the network's time input at each level; ``labels`` what ``on_step``
    reports after each step (the DDPM's timestep, the log-SNR process's steps still to go);
    ``process`` gives the ancestral step, the only step that differs between processes."""

    alpha: torch.Tensor  # (K + 1,) float32 on the sampling device
    sigma: torch.Tensor  # (K + 1,)
    alpha_bar: torch.Tensor  # (K + 1,)
    one_minus_alpha_bar: torch.Tensor  # (K + 1,) = sigma^2, exact where alpha_bar rounds to 1 in float32
    log_snr: torch.Tensor  # (K + 1,), +inf where sigma = 0
    time: torch.Tensor  # (K + 1,)
    labels: tuple[int, ...]  # (K,)
    process: Any  # GaussianDiffusion | LogSNRDiffusion: ancestral_step(x, prediction, grid, i) -> Gaussian
    index: tuple[int, ...] = ()  # the DDPM's integer timesteps (K + 1,), -1 = after the last step
    ends_clean: bool = False  # the last level is sigma = 0: a sampler's last step returns x_0-hat

    @property
    def steps(self) -> int:
        return len(self.labels)


class Prediction(NamedTuple):
    x0: torch.Tensor  # (B, C, H, W) float32
    eps: torch.Tensor  # (B, C, H, W) float32

    @staticmethod
    def from_eps(x: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> "Prediction":
        """x_0 = (x - sigma eps) / alpha, from x = alpha x_0 + sigma eps."""
        return Prediction((x - sigma.to(x.dtype) * eps) / alpha.to(x.dtype), eps)


class DenoiserLike(Protocol):
    def __call__(self, x: torch.Tensor, grid: Grid, i: int) -> Prediction: ...


class Denoiser:
    """A network at the levels of a grid: x_0-hat and eps-hat in float32. The network's output is
    converted once from what it predicts (eps, DDPM eq. 14; v = alpha eps - sigma x_0, Salimans & Ho
    2022, section 4; or x_0), then x_0-hat = (x - sigma eps-hat) / alpha. ``labels`` (B,) condition
    a conditional network; None calls it without labels."""

    def __init__(self, network: nn.Module, prediction: str, labels: torch.Tensor | None = None):
        self.network = network
        self.prediction = prediction
        self.labels = labels

    def eps(self, x: torch.Tensor, grid: Grid, i: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        """eps-hat (B, C, H, W) float32 of the network at level i, for ``labels`` (or none)."""
        return self.eps_at(x, grid.alpha[i], grid.sigma[i], grid.time[i], labels)

    def eps_at(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, time: torch.Tensor,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        """eps-hat (B, C, H, W) float32 at any level: ``alpha`` and ``sigma`` () or (B, 1, 1, 1), the
        network's ``time`` () or (B,)."""
        time = time.expand(x.shape[0])  # (B,)
        out = (self.network(x, time) if labels is None else self.network(x, time, labels)).float()
        if self.prediction == "eps":
            return out
        return parameterisation.to_eps(self.prediction, out, x.float(), alpha, sigma)

    def __call__(self, x: torch.Tensor, grid: Grid, i: int) -> Prediction:
        return Prediction.from_eps(x, self.eps(x, grid, i, self.labels), grid.alpha[i], grid.sigma[i])


class Guided:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6) around a conditional denoiser:
    eps~ = (1 + w) eps(x, c) - w eps(x, null), both in one batched call of 2B, then
    x_0-hat = (x - sigma eps~) / alpha. w = 0 is the conditional model."""

    def __init__(self, denoiser: Denoiser, labels: torch.Tensor, null_label: int, w: float):
        self.denoiser = denoiser
        self.labels = labels
        self.null_label = null_label
        self.w = w

    def __call__(self, x: torch.Tensor, grid: Grid, i: int) -> Prediction:
        b = x.shape[0]
        null = torch.full_like(self.labels, self.null_label)
        both = self.denoiser.eps(torch.cat([x, x]), grid, i, torch.cat([self.labels, null]))  # (2B, C, H, W)
        eps = (1 + self.w) * both[:b] - self.w * both[b:]
        return Prediction.from_eps(x, eps, grid.alpha[i], grid.sigma[i])
