"""Inpainting (RePaint), DDIM inversion and slerp against closed forms: a Gaussian toy whose exact
denoiser and exact conditionals are known, written here in float64 from the formulas."""

import math

import numpy as np
import pytest
import torch

from mnistgen.config import CFGConfig, DDPMConfig
from mnistgen.diffusion.ddpm import GaussianDiffusion
from mnistgen.diffusion.denoiser import Prediction
from mnistgen.diffusion.editing import RePaintSettings, ddim_invert, renoise, repaint, slerp
from mnistgen.diffusion.logsnr import LogSNRDiffusion
from mnistgen.diffusion.samplers import ddim

RHO = 0.9  # the toy's two pixels: x ~ N(0, [[1, rho], [rho, 1]]) * SCALE^2
SCALE = 0.5
COV = SCALE**2 * torch.tensor([[1.0, RHO], [RHO, 1.0]], dtype=torch.float64)


class GaussianOracle:
    """The exact denoiser of x_0 ~ N(0, COV) in two pixels (B, 1, 1, 2): E[x_0 | x] = alpha COV (alpha^2 COV +
    sigma^2 I)^{-1} x, the conditional mean of a joint Gaussian; eps from x = alpha x_0 + sigma eps."""

    def __call__(self, x, grid, i):
        alpha, sigma = grid.alpha[i].double(), grid.sigma[i].double()
        gain = alpha * COV @ torch.linalg.inv(alpha**2 * COV + sigma**2 * torch.eye(2, dtype=torch.float64))
        x0 = (x.double().view(-1, 2) @ gain.T).view_as(x)
        return Prediction(x0.float(), ((x.double() - alpha * x0) / sigma).float())


def _repaint_schedule(k: int, j: int, r: int) -> list[int]:
    """RePaint's jump schedule as its paper's code writes it, in time t (the network's step, K-1 .. 0,
    and -1 for the end), turned into grid levels (level = K-1-t), its j single forward steps of a jump
    joined into one move (q of j steps is one step of q: test_renoise_... checks that draw)."""
    jumps = {t: r - 1 for t in range(0, k - j, j)}
    t, ts = k, []
    while t >= 1:
        t -= 1
        ts.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(j):
                t += 1
                ts.append(t)
    ts.append(-1)
    levels = [k - 1 - t for t in ts]
    joined = levels[:1]
    for a, b, c in zip(levels, levels[1:], levels[2:] + [None]):
        if not (b < a and c is not None and c < b):  # inside a run of upward moves: skip the middle
            joined.append(b)
    return joined


@pytest.mark.parametrize("k, j, r", [(10, 3, 2), (50, 5, 5), (20, 10, 10), (8, 1, 3), (12, 4, 1)])
def test_the_schedule_is_repaints(k, j, r):
    settings = RePaintSettings(k, j, r)
    assert settings.schedule() == _repaint_schedule(k, j, r)
    # a jump of j levels between single steps: denoising steps = K + (r - 1) j per jump point
    assert settings.evaluations() == k + (r - 1) * j * len(range(0, k - j, j))


@pytest.mark.parametrize("make", [lambda: GaussianDiffusion(DDPMConfig()), lambda: LogSNRDiffusion(CFGConfig())])
def test_renoise_draws_the_forward_process_between_two_levels(make):
    """x_frm ~ q(x_frm | x_0), then renoise to a noisier level: the result has q(x_to | x_0)'s moments."""
    grid = make().grid(20)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000, 1, 1, 1), 0.7)
    for frm, to in ((15, 5), (20, 0), (3, 2)):
        x = grid.alpha[frm] * x0 + grid.sigma[frm] * torch.randn(x0.shape, generator=g)
        out = renoise(x, grid, frm, to, g).double()
        assert out.mean().item() == pytest.approx(grid.alpha[to].item() * 0.7, abs=0.005)
        assert out.var().item() == pytest.approx(grid.sigma[to].item() ** 2, rel=0.02, abs=1e-4)


def _conditional_moments(settings: RePaintSettings, process, known_value: float, n: int = 10_000):
    """Mean and std of the filled pixel given the known one, from RePaint with the exact denoiser."""
    g = torch.Generator().manual_seed(1)
    known = torch.tensor([known_value, 0.0]).view(1, 1, 1, 2).expand(n, 1, 1, 2)
    mask = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    out = repaint(GaussianOracle(), known, mask, process.grid(settings.steps), settings, g)
    assert torch.equal(out[..., 0], known[..., 0])  # the known pixel exactly as given
    filled = out[..., 1].double()
    return filled.mean().item(), filled.std().item()


@pytest.mark.parametrize("make", [lambda: GaussianDiffusion(DDPMConfig()), lambda: LogSNRDiffusion(CFGConfig())])
def test_repaint_fills_in_from_the_true_conditional(make):
    """x_2 | x_1 = a is N(rho a, (1 - rho^2) SCALE^2). The plain replacement method (no resampling) misses
    its mean by a third, the failure RePaint fixes; the paper's setting (250 steps, jump 10, resample 10)
    lands near it, and this module's default lies in between, much nearer the truth than no resampling."""
    process, a = make(), 0.6
    true_mean, true_std = RHO * a, math.sqrt(1 - RHO**2) * SCALE
    plain, _ = _conditional_moments(RePaintSettings(50, 5, 1), process, a)
    assert abs(plain - true_mean) > 0.15
    mean, std = _conditional_moments(RePaintSettings(250, 10, 10), process, a)
    assert mean == pytest.approx(true_mean, abs=0.035) and std == pytest.approx(true_std, rel=0.12)
    default, _ = _conditional_moments(RePaintSettings(), process, a)
    assert abs(default - true_mean) < 0.5 * abs(plain - true_mean)


@pytest.mark.parametrize("make, steps", [(lambda: GaussianDiffusion(DDPMConfig()), 100),
                                         (lambda: LogSNRDiffusion(CFGConfig()), 100)])
def test_ddim_inversion_round_trip(make, steps):
    """Invert with the exact denoiser, sample back with DDIM (eta = 0, no clipping): the start comes back,
    with an error of first order in the step (a quarter of it on a grid four times finer); the inverted
    noise has nearly the prior's scale."""
    process = make()
    x0 = (torch.randn(4000, 1, 1, 2, generator=torch.Generator().manual_seed(2)).view(-1, 2)
          @ torch.linalg.cholesky(COV).float().T).view(-1, 1, 1, 2)
    errors = []
    for k in (steps // 4, steps):
        grid = process.grid(k)
        noise = ddim_invert(GaussianOracle(), x0, grid)
        back = ddim(GaussianOracle(), noise, grid, clip_x0=False)
        errors.append((back - x0).pow(2).mean().sqrt().item())  # RMS
    assert errors[1] < 0.02 and 3 < errors[0] / errors[1] < 5
    assert noise.double().std().item() == pytest.approx(1.0, abs=0.04)


def test_slerp_keeps_the_norm_and_turns_at_a_constant_rate():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(1, 28, 28, generator=g), torch.randn(1, 28, 28, generator=g)
    b = b * (a.norm() / b.norm())  # equal norms: the arc is a great circle's, at a constant rate
    s = torch.linspace(0, 1, 11)
    path = slerp(a, b, s).double().flatten(1)  # (11, 784)
    torch.testing.assert_close(path[0], a.double().flatten(), atol=1e-5, rtol=0)
    torch.testing.assert_close(path[-1], b.double().flatten(), atol=1e-5, rtol=0)
    an, bn = a.double().flatten().numpy(), b.double().flatten().numpy()
    theta = np.arccos(an @ bn / (np.linalg.norm(an) * np.linalg.norm(bn)))
    angles = [np.arccos(np.clip(p @ an / (np.linalg.norm(p) * np.linalg.norm(an)), -1, 1)) for p in path.numpy()]
    np.testing.assert_allclose(angles, s.double().numpy() * theta, atol=1e-3)
    np.testing.assert_allclose(path.norm(dim=1).numpy(), np.linalg.norm(an), rtol=1e-5)  # on the sphere
    assert torch.equal(slerp(a, a, torch.tensor([0.5]))[0], a)  # parallel: the straight line, exact
