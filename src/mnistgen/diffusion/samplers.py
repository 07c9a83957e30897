"""Samplers: short explicit loops over a grid of noise levels, one signature for all,
``(denoiser, x, grid, generator, on_step, **options)``, every random draw from the given generator.

A sampler sees only a :class:`~mnistgen.diffusion.denoiser.Grid` (built by the process, apart from
the sampler) and a denoiser (x_0-hat and eps-hat at a level; guided or not), so every sampler
works for both noise processes. ``SAMPLERS`` is the registry: config validation, the command
line, the API's checks and :func:`draw` read it (it lives in the torch-free
:mod:`mnistgen.diffusion.registry`).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from mnistgen.diffusion.denoiser import Denoiser, DenoiserLike, Grid, Guided
from mnistgen.diffusion.registry import GRID_SPACINGS, SAMPLERS, SamplerSettings

__all__ = ["GRID_SPACINGS", "SAMPLERS", "OnStep", "SamplerSettings", "ancestral", "ddim", "ddim_sigma", "draw",
           "dpm_solver_2m", "dpm_solver_2m_sde", "denoiser_for", "to_unit"]

OnStep = Callable[[int, torch.Tensor], None]  # (grid label, x after that step) -> None; the last is the sample


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Diffusion output in [-1, 1] -> image in [0, 1]."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def report_step(on_step: OnStep | None, grid: Grid, i: int, x: torch.Tensor) -> None:
    if on_step is not None:
        on_step(grid.labels[i], x)


@torch.no_grad()
def ancestral(denoiser: DenoiserLike, x: torch.Tensor, grid: Grid, generator: torch.Generator | None = None,
              on_step: OnStep | None = None) -> torch.Tensor:
    """Ancestral sampling: x <- mean + sqrt(variance) z at each step, the mean alone at the last. The
    process gives the step: the DDPM's eq. 11 with sigma^2 = beta_t, on a shorter grid the DDPM
    restricted to it (Nichol & Dhariwal 2021, section 4); the log-SNR process's posterior step with
    the interpolated variance (Ho & Salimans 2022, section 2)."""
    for i in range(grid.steps):
        pred = denoiser(x, grid, i)
        mean, variance = grid.process.ancestral_step(x, pred, grid, i)
        x = mean + variance.sqrt().to(x.dtype) * randn_like(x, generator) if i + 1 < grid.steps else mean
        report_step(on_step, grid, i, x)
    return x


def ddim_sigma(ab: torch.Tensor, ab_next: torch.Tensor, eta: float, s2: torch.Tensor | None = None,
               s2_next: torch.Tensor | None = None) -> torch.Tensor:
    """DDIM eq. 16: sigma = eta sqrt((1 - ab') / (1 - ab)) sqrt(1 - ab / ab'), with 1 - ab given as ``s2``
    where float32 would round ab to 1 (the log-SNR grid's clean end). On consecutive steps with
    eta = 1 this is the DDPM posterior std sqrt(beta~_t) (DDPM eq. 7)."""
    s2 = 1 - ab if s2 is None else s2
    s2_next = 1 - ab_next if s2_next is None else s2_next
    return eta * (s2_next / s2 * (1 - ab / ab_next)).sqrt()


@torch.no_grad()
def ddim(denoiser: DenoiserLike, x: torch.Tensor, grid: Grid, generator: torch.Generator | None = None,
         on_step: OnStep | None = None, eta: float = 0.0, clip_x0: bool = True) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12); eta = 0 is deterministic, eta = 1 has the DDPM posterior
    variance. x' = sqrt(ab') x0 + sqrt(1 - ab' - s^2) eps + s z, s = ddim_sigma(ab, ab', eta); with
    ``clip_x0`` the x0 clipped to [-1, 1] and the eps consistent with it. 1 - ab is the grid's
    ``one_minus_alpha_bar``, exact where ab rounds to 1."""
    for i in range(grid.steps):
        x0, eps = denoiser(x, grid, i)
        ab, ab_next = grid.alpha_bar[i], grid.alpha_bar[i + 1]
        s2, s2_next = grid.one_minus_alpha_bar[i], grid.one_minus_alpha_bar[i + 1]
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
            eps = (x - ab.sqrt() * x0) / s2.sqrt()  # the noise consistent with the clipped x0
        sigma = ddim_sigma(ab, ab_next, eta, s2, s2_next)
        x = ab_next.sqrt() * x0 + (s2_next - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0 and i + 1 < grid.steps:
            x = x + sigma * randn_like(x, generator)
        report_step(on_step, grid, i, x)
    return x


@torch.no_grad()
def dpm_solver_2m(denoiser: DenoiserLike, x: torch.Tensor, grid: Grid, generator: torch.Generator | None = None,
                  on_step: OnStep | None = None, clip_x0: bool = True, sde: bool = False) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, algorithm 2). With lambda = log(alpha / sigma) and h = lambda' - lambda,
    x' = (sigma' / sigma) x - alpha' (e^{-h} - 1) D, where D = x0 on the first step and
    D = (1 + 1 / 2r) x0 - (1 / 2r) x0_prev, r = h_prev / h, after it (x0: the denoiser's, clipped).
    A last step onto sigma = 0 returns x0. ``sde``: the SDE variant (:func:`dpm_solver_2m_sde`)."""
    x0_prev = h_prev = None
    for i in range(grid.steps):
        x0 = denoiser(x, grid, i).x0
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        if i + 1 == grid.steps and grid.ends_clean:
            x = x0
        else:
            h = 0.5 * (grid.log_snr[i + 1] - grid.log_snr[i])  # lambda' - lambda > 0
            d = x0 if x0_prev is None else x0 + h / (2 * h_prev) * (x0 - x0_prev)
            ratio, alpha_next, sigma_next = grid.sigma[i + 1] / grid.sigma[i], grid.alpha[i + 1], grid.sigma[i + 1]
            if sde:  # no noise after the last step, as in the other samplers
                x = ratio * torch.exp(-h) * x - alpha_next * torch.expm1(-2 * h) * d
                if i + 1 < grid.steps:
                    x = x + sigma_next * (-torch.expm1(-2 * h)).sqrt() * randn_like(x, generator)
            else:
                x = ratio * x - alpha_next * torch.expm1(-h) * d
            x0_prev, h_prev = x0, h
        report_step(on_step, grid, i, x)
    return x


def dpm_solver_2m_sde(denoiser: DenoiserLike, x: torch.Tensor, grid: Grid, generator: torch.Generator | None = None,
                      on_step: OnStep | None = None, clip_x0: bool = True) -> torch.Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", the second-order multistep solver of the
    reverse SDE in data prediction; the midpoint form of diffusers' "sde-dpmsolver++"):
    x' = (sigma' / sigma) e^{-h} x + alpha' (1 - e^{-2h}) D + sigma' sqrt(1 - e^{-2h}) z, with D as in
    :func:`dpm_solver_2m`. With D = x0 (its first step) this is exactly DDIM at eta = 1."""
    return dpm_solver_2m(denoiser, x, grid, generator, on_step, clip_x0=clip_x0, sde=True)


def denoiser_for(network: nn.Module, prediction: str, labels: torch.Tensor | None = None,
                 guidance: float | None = None, null_label: int | None = None) -> DenoiserLike:
    """The network as a denoiser: guided with weight ``guidance`` around ``labels`` when both are given
    (``null_label``: the network's unconditional label), else conditioned on ``labels`` or on none."""
    if guidance is not None and labels is not None:
        if null_label is None:
            raise ValueError("guidance needs the network's null label")
        return Guided(Denoiser(network, prediction), labels, null_label, guidance)
    return Denoiser(network, prediction, labels)


def draw(network: nn.Module, process, noise: torch.Tensor, settings: SamplerSettings,
         generator: torch.Generator | None = None, labels: torch.Tensor | None = None,
         on_step: OnStep | None = None, null_label: int | None = None) -> torch.Tensor:
    """The resolved ``settings``' sampler from ``noise`` (B, C, H, W) on the process's grid; output in the
    model's scale ([-1, 1]). ``settings`` must name every field its sampler needs (a kind's ``resolve``)."""
    spec = SAMPLERS[settings.sampler]
    grid = process.grid(settings.steps, settings.grid or GRID_SPACINGS[0], noise.device,
                        1.0 if settings.grid_power is None else settings.grid_power)
    denoiser = denoiser_for(network, process.config.prediction, labels, settings.guidance, null_label)
    options = {"eta": settings.eta} if "eta" in spec.options else {}
    return spec.loop()(denoiser, noise, grid, generator, on_step, **options)

