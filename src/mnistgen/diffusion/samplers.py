"""Samplers: short explicit loops over a time grid, every random draw from the given generator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from mnistgen.diffusion.logsnr import LogSNRDiffusion
from mnistgen.diffusion.ddpm import GaussianDiffusion

OnStep = Callable[[int, torch.Tensor], None]  # (t, x after the step at t) -> None; t counts down to 0, the last


@dataclass(frozen=True)
class SamplerSettings:
    """How to sample: ``sampler`` is ancestral | ddim | dpm++2m | dpm++2m-sde (DDPM), cfg (guided) or prior
    (VAE). Fields left None take the run's defaults; a model kind's ``resolve`` fills them in, and fields that do not
    apply to the model stay None."""

    sampler: str | None = None
    steps: int | None = None
    eta: float | None = None  # DDIM
    guidance: float | None = None  # CFG: w

    def to_json(self) -> dict:
        return {k: v for k, v in vars(self).items() if v is not None}


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Diffusion output in [-1, 1] -> image in [0, 1]."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def run(model: nn.Module, process: GaussianDiffusion | LogSNRDiffusion, noise: torch.Tensor,
        settings: SamplerSettings, generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None, on_step: OnStep | None = None) -> torch.Tensor:
    """The sampler that resolved ``settings`` name, from ``noise`` (B, C, H, W); output in [-1, 1]."""
    if settings.sampler == "ancestral":
        return ancestral(model, process, noise, generator, on_step, settings.steps)
    if settings.sampler == "dpm++2m":
        return dpm_solver_2m(model, process, noise, settings.steps, on_step=on_step)
    if settings.sampler == "dpm++2m-sde":
        return dpm_solver_2m_sde(model, process, noise, settings.steps, generator, on_step=on_step)
    if settings.sampler == "ddim":
        return ddim(model, process, noise, settings.steps, settings.eta, generator, on_step=on_step)
    if settings.sampler == "cfg":
        return guided(model, process, noise, labels, settings.guidance, settings.steps, generator, on_step=on_step)
    raise ValueError(f"unknown sampler {settings.sampler!r}")


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


@torch.no_grad()
def ancestral(model: nn.Module, process: GaussianDiffusion, x: torch.Tensor, generator: torch.Generator | None = None,
              on_step: OnStep | None = None, steps: int | None = None) -> torch.Tensor:
    """DDPM algorithm 2 on ``steps`` evenly spaced timesteps (default all T): for t = T-1 .. 0,
    x <- mean(x_t, eps_theta) + sigma z with sigma^2 = beta_t, no noise at the last step. On fewer
    steps, beta_t is that of the process restricted to the grid (:meth:`GaussianDiffusion.p_step`)."""
    grid = ddim_timesteps(process.T, steps or process.T)
    for i, t in enumerate(grid):
        t_next = grid[i + 1] if i + 1 < len(grid) else -1
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        mean, variance = process.p_step(x, t, t_next, process.eps(model, x, tt))
        x = mean + variance.sqrt() * _randn_like(x, generator) if t_next >= 0 else mean
        if on_step is not None:
            on_step(t, x)
    return x


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """``steps`` timesteps from T-1 down to 0, evenly spaced (both ends included)."""
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in [1, {T}], got {steps}")
    grid = torch.linspace(T - 1, 0, steps).round().long().tolist()
    return list(dict.fromkeys(grid))


def ddim_sigma(ab: torch.Tensor, ab_next: torch.Tensor, eta: float) -> torch.Tensor:
    """DDIM eq. 16: sigma = eta sqrt((1 - ab') / (1 - ab)) sqrt(1 - ab / ab'). On consecutive steps
    with eta = 1 this is the DDPM posterior std sqrt(beta~_t) (DDPM eq. 7)."""
    return eta * ((1 - ab_next) / (1 - ab) * (1 - ab / ab_next)).sqrt()


@torch.no_grad()
def ddim(model: nn.Module, process: GaussianDiffusion, x: torch.Tensor, steps: int = 50, eta: float = 0.0,
         generator: torch.Generator | None = None, clip_x0: bool = True, on_step: OnStep | None = None) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) on a subsequence of the DDPM steps; eta = 0 is deterministic,
    eta = 1 has the DDPM posterior variance. x_{t'} = sqrt(ab') x0 + sqrt(1 - ab' - s^2) eps + s z,
    s = eta sqrt((1 - ab') / (1 - ab)) sqrt(1 - ab / ab')."""
    alpha_bars = process.schedule.alpha_bars  # (T,) on the process's device
    grid = ddim_timesteps(process.T, steps)
    for i, t in enumerate(grid):
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        eps = process.eps(model, x, tt)
        ab = alpha_bars[t]
        ab_next = alpha_bars[grid[i + 1]] if i + 1 < len(grid) else torch.ones((), device=x.device)
        x0 = process.predict_x0(x, tt, eps)
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
            eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()  # the noise consistent with the clipped x0
        sigma = ddim_sigma(ab, ab_next, eta)
        x = ab_next.sqrt() * x0 + (1 - ab_next - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0 and i + 1 < len(grid):
            x = x + sigma * _randn_like(x, generator)
        if on_step is not None:
            on_step(t, x)
    return x


@torch.no_grad()
def dpm_solver_2m(model: nn.Module, process: GaussianDiffusion, x: torch.Tensor, steps: int = 20,
                  clip_x0: bool = True, on_step: OnStep | None = None, sde: bool = False,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, algorithm 2) on ``steps`` timesteps of the DDPM grid: deterministic,
    or with ``sde`` its SDE variant.
    With lambda = log(alpha / sigma) and h = lambda' - lambda, x' = (sigma' / sigma) x - alpha' (e^{-h} - 1) D,
    where D = x0 on the first step and D = (1 + 1 / 2r) x0 - (1 / 2r) x0_prev, r = h_prev / h, after it (x0:
    the network's clipped prediction). The last step lands on sigma = 0, where x' = x0. ``sde``: the
    SDE variant instead (:func:`dpm_solver_2m_sde`), its noise drawn from ``generator``."""
    snr = process.schedule.snr
    ab = process.schedule.alpha_bars
    grid = ddim_timesteps(process.T, steps)
    x0_prev = h_prev = None
    for i, t in enumerate(grid):
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        x0 = process.predict_x0(x, tt, process.eps(model, x, tt))
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        if i + 1 == len(grid):
            x = x0
        else:
            t_next = grid[i + 1]
            h = 0.5 * torch.log(snr[t_next] / snr[t])  # lambda' - lambda > 0
            d = x0 if x0_prev is None else x0 + h / (2 * h_prev) * (x0 - x0_prev)
            ratio = ((1 - ab[t_next]) / (1 - ab[t])).sqrt()  # sigma' / sigma
            if sde:
                x = (ratio * torch.exp(-h) * x - ab[t_next].sqrt() * torch.expm1(-2 * h) * d
                     + (1 - ab[t_next]).sqrt() * (-torch.expm1(-2 * h)).sqrt() * _randn_like(x, generator))
            else:
                x = ratio * x - ab[t_next].sqrt() * torch.expm1(-h) * d
            x0_prev, h_prev = x0, h
        if on_step is not None:
            on_step(t, x)
    return x


def dpm_solver_2m_sde(model: nn.Module, process: GaussianDiffusion, x: torch.Tensor, steps: int = 50,
                      generator: torch.Generator | None = None, clip_x0: bool = True,
                      on_step: OnStep | None = None) -> torch.Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", the second-order multistep solver of the
    reverse SDE in data prediction; the midpoint form of diffusers' "sde-dpmsolver++"). With
    lambda = log(alpha / sigma), h = lambda' - lambda:
    x' = (sigma' / sigma) e^{-h} x + alpha' (1 - e^{-2h}) D + sigma' sqrt(1 - e^{-2h}) z, with D as in
    :func:`dpm_solver_2m`. With D = x0 (its first step) this is exactly DDIM at eta = 1; the second-order
    D corrects it with the previous step's x0. The last step lands on sigma = 0, where x' = x0."""
    return dpm_solver_2m(model, process, x, steps=steps, clip_x0=clip_x0, on_step=on_step, sde=True,
                         generator=generator)


@torch.no_grad()
def guided(model: nn.Module, process: LogSNRDiffusion, z: torch.Tensor, labels: torch.Tensor, w: float,
           steps: int = 256, generator: torch.Generator | None = None, clip_x: bool = True,
           on_step: OnStep | None = None) -> torch.Tensor:
    """CFG sampling: walk lambda_min -> lambda_max; at each step eps~ = (1 + w) eps(z, c) - w eps(z, null),
    then z' ~ N(mean with x_theta, (sigma~^2)^(1-v) (sigma^2)^v); the last step returns its mean."""
    grid = process.lambda_grid(steps, z.device)
    for i in range(steps):
        lam, lam_next = grid[i], grid[i + 1]
        eps = process.guided_eps(model, z, lam.float(), labels, w)
        mean, variance = process.p_step(z, lam, lam_next, eps, clip_x)
        z = mean + variance.sqrt().to(z.dtype) * _randn_like(z, generator) if i + 1 < steps else mean
        if on_step is not None:
            on_step(steps - 1 - i, z)  # steps still to go
    return z
