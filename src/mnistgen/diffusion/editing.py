"""Editing with a trained diffusion model: inpainting (RePaint), DDIM inversion and spherical interpolation.

Every function here sees only a denoiser and a :class:`~mnistgen.diffusion.denoiser.Grid`, like the
samplers, so it works for both noise processes, guided or not. Images are in the model's scale
([-1, 1]); masks are 1 where a pixel is known, 0 where the model fills it in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mnistgen.diffusion.denoiser import DenoiserLike, Grid
from mnistgen.diffusion.samplers import randn_like


@dataclass(frozen=True)
class RePaintSettings:
    """RePaint's schedule (Lugmayr et al. 2022, section 4.2 and algorithm 1) on a grid of ``steps``
    levels: after every ``jump`` denoising steps the state is noised ``jump`` levels back up and
    denoised again, ``resample`` times in all per block (``resample = 1``: no resampling, the plain
    replacement method). The paper uses T = 250, jump 10, resample 10 (about 2,400 network calls);
    the defaults here are the cheaper setting of its ablation (table 6) on a shorter grid."""

    steps: int = 50
    jump: int = 5
    resample: int = 5

    def schedule(self) -> list[int]:
        """The grid levels visited in order, from 0 (the noisiest) to ``steps`` (the end): a move to the
        next level is a denoising step, a move back is a jump. Jumps start from levels K-1, K-1-j, ...
        that lie at least ``jump`` levels below level 0, ``resample - 1`` times each, as RePaint's
        ``get_schedule_jump`` does in time t = K-1-level."""
        k, j = self.steps, self.jump
        left = {k - 1 - t: self.resample - 1 for t in range(0, k - j, j)}  # level -> jumps still to make
        path, level = [0], 0
        while level < k:
            level += 1
            path.append(level)
            if left.get(level, 0) > 0:
                left[level] -= 1
                level -= j
                path.append(level)
        return path

    def evaluations(self) -> int:
        """Network calls of one pass: the denoising moves of :meth:`schedule`."""
        path = self.schedule()
        return sum(b > a for a, b in zip(path, path[1:]))


def renoise(x: torch.Tensor, grid: Grid, frm: int, to: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A draw of q(x_to | x_frm) for a level ``to`` noisier than ``frm`` (to < frm): with a = alpha_to /
    alpha_frm, x_to = a x_frm + sqrt(sigma_to^2 - a^2 sigma_frm^2) z (the forward process between two
    levels of a variance-preserving process; Kingma et al. 2021, eq. 2 and 3)."""
    ratio2 = grid.alpha_bar[to] / grid.alpha_bar[frm]  # a^2
    variance = (grid.one_minus_alpha_bar[to] - ratio2 * grid.one_minus_alpha_bar[frm]).clamp(min=0)
    return ratio2.sqrt() * x + variance.sqrt() * randn_like(x, generator)


@torch.no_grad()
def repaint(denoiser: DenoiserLike, known: torch.Tensor, mask: torch.Tensor, grid: Grid,
            settings: RePaintSettings = RePaintSettings(), generator: torch.Generator | None = None) -> torch.Tensor:
    """RePaint (Lugmayr et al. 2022, algorithm 1) on ``grid``: from noise, each denoising step is the
    process's ancestral step for the unknown pixels and a fresh draw of q(x_i | x_0) of ``known``
    for the known ones, joined by ``mask`` (1 = known); the jumps of ``settings.schedule()`` noise
    the joined state back up (:func:`renoise`) so that the two parts harmonise. ``known`` (B, C, H, W)
    in the model's scale; ``grid`` must have ``settings.steps`` levels. Returns the last state with
    the known pixels set to ``known`` exactly."""
    if grid.steps != settings.steps:
        raise ValueError(f"the grid has {grid.steps} steps, the RePaint settings {settings.steps}")
    x = randn_like(known, generator)
    path = settings.schedule()
    for frm, to in zip(path, path[1:]):
        if to < frm:  # a jump back up
            x = renoise(x, grid, frm, to, generator)
            continue
        mean, variance = grid.process.ancestral_step(x, denoiser(x, grid, frm), grid, frm)
        unknown = mean + variance.sqrt().to(x.dtype) * randn_like(x, generator) if to < grid.steps else mean
        seen = (grid.alpha[to] * known + grid.sigma[to] * randn_like(known, generator)) if to < grid.steps else known
        x = mask * seen + (1 - mask) * unknown
    return mask * known + (1 - mask) * x


@torch.no_grad()
def ddim_invert(denoiser: DenoiserLike, x0: torch.Tensor, grid: Grid) -> torch.Tensor:
    """DDIM inversion (Song et al. 2021, section 4.3; eq. 13 run from x_0 to x_T): the deterministic
    DDIM step (eta = 0) taken backwards, from the grid's last level to its first. Level i+1 -> i uses the
    network at level i with the current state (the usual approximation eps(x_{i+1}) ~ eps(x_i)):
    x_0-hat = (x - sigma_{i+1} eps) / alpha_{i+1}, then x_i = alpha_i x_0-hat + sigma_i eps. Sampling
    the result with DDIM (eta = 0, no clipping) on the same grid returns close to ``x0``."""
    x = x0
    for i in range(grid.steps - 1, -1, -1):
        eps = denoiser(x, grid, i).eps
        x0_hat = (x - grid.sigma[i + 1] * eps) / grid.alpha[i + 1]
        x = grid.alpha[i] * x0_hat + grid.sigma[i] * eps
    return x


def slerp(a: torch.Tensor, b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (Shoemake 1985) of two noises a, b (C, H, W) at fractions s (S,):
    sin((1 - s) theta) / sin(theta) a + sin(s theta) / sin(theta) b, theta the angle between them; it
    keeps the norm that Gaussian noise concentrates at, where a straight line would shrink it.
    Returns (S, C, H, W); the straight line when a and b are (nearly) parallel. The weights are
    computed in Python floats, the sum in the tensors' dtype on their device."""
    cos = float((a.flatten() @ b.flatten()) / (a.norm() * b.norm()))
    theta = math.acos(min(1.0, max(-1.0, cos)))
    weights = [(1 - f, f) if theta < 1e-4 else (math.sin((1 - f) * theta) / math.sin(theta),
                                                 math.sin(f * theta) / math.sin(theta)) for f in s.tolist()]
    return torch.stack([w_a * a + w_b * b for w_a, w_b in weights])  # (S, C, H, W)
