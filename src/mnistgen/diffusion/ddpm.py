"""The discrete-time DDPM noise process (Ho et al. 2020). It does not own the network.

The schedule is computed once in float64 on the CPU, cast to float32 and moved once to the
device the process is built for (MPS has no float64; a lookup never copies between
devices). No method changes the process after construction (the schedule tensors are not
written to), so one process object serves training and any number of samplers on that device.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from mnistgen.config import DDPMConfig
from mnistgen.diffusion import likelihood, parameterisation
from mnistgen.diffusion.broadcast import per_example
from mnistgen.diffusion.denoiser import Denoiser, Gaussian, Grid, Prediction
from mnistgen.diffusion.registry import POWERED_SPACINGS


class Schedule(NamedTuple):
    """Per-timestep constants, index t = 0 .. T-1 (t = 0 is the paper's t = 1), each computed in float64."""

    betas: torch.Tensor
    alphas: torch.Tensor
    alpha_bars: torch.Tensor  # prod_{s <= t} alpha_s
    alpha_bars_prev: torch.Tensor  # alpha_bar_{t-1}, with alpha_bar_{-1} = 1
    sqrt_alpha_bars: torch.Tensor
    sqrt_one_minus_alpha_bars: torch.Tensor
    posterior_variance: torch.Tensor  # beta~_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t  (eq. 7)
    posterior_coef_x0: torch.Tensor  # sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t)
    posterior_coef_xt: torch.Tensor  # sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)
    snr: torch.Tensor  # alpha_bar_t / (1 - alpha_bar_t)


def linear_schedule(config: DDPMConfig) -> Schedule:
    betas = torch.linspace(config.beta_start, config.beta_end, config.timesteps, dtype=torch.float64)
    alphas = 1.0 - betas
    alpha_bars = torch.cumprod(alphas, 0)
    alpha_bars_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bars[:-1]])
    one_minus = 1.0 - alpha_bars
    values = Schedule(
        betas=betas, alphas=alphas, alpha_bars=alpha_bars, alpha_bars_prev=alpha_bars_prev,
        sqrt_alpha_bars=alpha_bars.sqrt(), sqrt_one_minus_alpha_bars=one_minus.sqrt(),
        posterior_variance=betas * (1.0 - alpha_bars_prev) / one_minus,
        posterior_coef_x0=alpha_bars_prev.sqrt() * betas / one_minus,
        posterior_coef_xt=alphas.sqrt() * (1.0 - alpha_bars_prev) / one_minus,
        snr=alpha_bars / one_minus,
    )
    return Schedule(*(v.float() for v in values))  # float64 only on the CPU, here


def distinct(wanted: list[int]) -> list[int]:
    """``wanted`` timesteps, noisiest first, made strictly decreasing down to >= 0: each kept below the one
    before and at or above the number still to come (|wanted - t| is unimodal, so clamping is exact)."""
    out, above = [], math.inf
    for k, t in enumerate(wanted):
        t = min(max(t, len(wanted) - 1 - k), above - 1)
        out.append(int(t))
        above = t
    return out


def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] shaped (B, 1, 1, 1) against ``like`` (B, C, H, W): a gather on the device, never a copy."""
    return per_example(values[t], like)


class GaussianDiffusion:
    """q(x_t | x_0), the posterior q(x_{t-1} | x_t, x_0), the reverse step of eq. 11 and the training loss
    (eps, v or x_0 target)."""

    def __init__(self, config: DDPMConfig = DDPMConfig(), device: torch.device | str = "cpu"):
        self.config = config
        self.T = config.timesteps
        schedule = linear_schedule(config)
        self.schedule = Schedule(*(v.to(device) for v in schedule))
        self.device = self.schedule.betas.device  # with its index: "cuda" becomes cuda:0, as the data's device reads
        log_snr = torch.log(schedule.snr)  # (T,), decreasing in t
        self._log_snr_ascending = log_snr.flip(0).to(self.device)  # t = T-1, ..., 0
        # The cosine quantile lambda(u) = -2 log tan(a u + b), truncated to [lambda_{T-1}, lambda_0].
        self._cosine_b = math.atan(math.exp(-log_snr[0].item() / 2))
        self._cosine_a = math.atan(math.exp(-log_snr[-1].item() / 2)) - self._cosine_b

    # -- forward process ----------------------------------------------------------------
    def alpha_sigma(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha_t = sqrt(alpha_bar_t) and sigma_t = sqrt(1 - alpha_bar_t), each (B, 1, 1, 1) against ``like``."""
        s = self.schedule
        return _at(s.sqrt_alpha_bars, t, like), _at(s.sqrt_one_minus_alpha_bars, t, like)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps."""
        alpha, sigma = self.alpha_sigma(t, x0)
        return alpha * x0 + sigma * noise

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I) with
        mu~_t = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0 + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t  (eq. 7)."""
        s = self.schedule
        mean = _at(s.posterior_coef_x0, t, xt) * x0 + _at(s.posterior_coef_xt, t, xt) * xt
        return mean, _at(s.posterior_variance, t, xt).expand_as(xt)

    # -- reverse process ----------------------------------------------------------------
    def timesteps(self, steps: int, spacing: str = "time", power: float = 1.0) -> list[int]:
        """Exactly ``steps`` distinct timesteps t_0 > ... > t_{K-1}, noisiest first (one step: T-1 alone):
            time      t_k = (T-1) (1 - k/(K-1))^power, both ends included (DDIM section 4.2; power 2 is its
                      quadratic selection, appendix D.2);
            trailing  t_k = round(T ((K-k)/K)^power) - 1: at power 1 every T/K-th timestep counted back from T
                      (Lin et al. 2023, table 2), so the last lies at T/K - 1 rather than 0 and the sampler's
                      last step lands on the clean image from there instead of spending an evaluation at
                      t = 0, where x_t already is the image; a power < 1 moves every level up in noise;
            log-snr   for each of ``steps`` evenly spaced values between lambda_{T-1} and lambda_0, the
                      timestep whose log-SNR lies nearest.
        Each is rounded, then kept below the one before and above the room the rest need (where the
        wanted values are closer than one timestep, neighbours move apart instead of merging)."""
        if not 1 <= steps <= self.T:
            raise ValueError(f"steps must be in [1, {self.T}], got {steps}")
        if power != 1.0 and spacing not in POWERED_SPACINGS:
            raise ValueError(f"the {spacing} spacing takes no power (got {power})")
        if spacing == "time":
            wanted = torch.linspace(self.T - 1, 0, steps)  # float32, as the grids have always been
            if power != 1.0:
                wanted = (self.T - 1) * (wanted.double() / (self.T - 1)) ** power
        elif spacing == "trailing":
            left = torch.arange(steps, 0, -1, dtype=torch.float64) / steps  # (K,) K/K .. 1/K
            wanted = (self.T * left**power).round() - 1  # rounded, then one below, as Lin et al. count
        elif spacing == "log-snr":
            lam = self._log_snr_ascending.cpu().double()  # (T,) at t = T-1 .. 0, increasing
            values = torch.linspace(lam[0].item(), lam[-1].item(), steps, dtype=torch.float64)
            wanted = torch.tensor([self.T - 1 - int((lam - v).abs().argmin()) for v in values])
        else:
            raise ValueError(f"unknown grid spacing {spacing!r}")
        return distinct(wanted.round().long().tolist())

    def grid(self, steps: int, spacing: str = "time", device: torch.device | str | None = None,
             power: float = 1.0) -> Grid:
        """The levels at :meth:`timesteps` and, last, the clean image (alpha = 1, sigma = 0), on the
        process's device (``device``, if given, must be it): each constant read from the float64-built
        schedule."""
        if device is not None and torch.empty(0, device=device).device != self.device:
            raise ValueError(f"the process's schedule is on {self.device}, not {device}; "
                             f"build the process with device={device}")
        t = self.timesteps(steps, spacing, power)
        index = torch.tensor(t, device=self.device)
        s = self.schedule
        one, zero = torch.ones(1, device=self.device), torch.zeros(1, device=self.device)
        return Grid(alpha=torch.cat([s.sqrt_alpha_bars[index], one]),
                    sigma=torch.cat([s.sqrt_one_minus_alpha_bars[index], zero]),
                    alpha_bar=torch.cat([s.alpha_bars[index], one]),
                    one_minus_alpha_bar=torch.cat([1 - s.alpha_bars[index], zero]),
                    log_snr=torch.cat([s.snr[index].log(), torch.full((1,), math.inf, device=self.device)]),
                    time=torch.cat([self.model_time(index), -one]), labels=tuple(t), process=self, index=(*t, -1),
                    ends_clean=True)

    def p_step(self, xt: torch.Tensor, t: int, t_next: int, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reverse step (eq. 11) from t down to t_next (-1 after the last step) of the process restricted to a
        grid of timesteps (Nichol & Dhariwal 2021, section 4): with beta' = 1 - alpha_bar_t / alpha_bar_{t_next},
        mean = (x_t - beta' / sqrt(1 - alpha_bar_t) eps) / sqrt(1 - beta') and variance sigma^2 = beta'
        (DDPM's sigma_t^2 = beta_t). On consecutive steps beta' is the schedule's beta_t. The variance is 0-dim."""
        s = self.schedule
        if t_next == t - 1:
            beta, alpha = s.betas[t], s.alphas[t]
        else:  # alpha_bar after the last step is 1
            alpha = s.alpha_bars[t] / s.alpha_bars[t_next] if t_next >= 0 else s.alpha_bars[t]
            beta = 1 - alpha
        return (xt - beta / s.sqrt_one_minus_alpha_bars[t] * eps) / alpha.sqrt(), beta

    def ancestral_step(self, x: torch.Tensor, prediction: Prediction, grid: Grid, i: int) -> Gaussian:
        """The ancestral sampler's step i of ``grid``: :meth:`p_step` with the denoiser's eps."""
        return Gaussian(*self.p_step(x, grid.index[i], grid.index[i + 1], prediction.eps))

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """What the network sees as time: the integer step as a float."""
        return t.float()

    def log_snr_range(self) -> tuple[float, float]:
        """(lambda_{T-1}, lambda_0): the noisiest and the cleanest log-SNR the network was trained on."""
        lam = self._log_snr_ascending
        return lam[0].item(), lam[-1].item()

    def time_at(self, lam: torch.Tensor) -> torch.Tensor:
        """The network's time at any log-SNR in :meth:`log_snr_range` (the probability-flow ODE's
        levels): t interpolated linearly in lambda between the two timesteps whose log-SNRs enclose
        it. The network saw integer t in training; its sinusoidal embedding is smooth in t."""
        table = self._log_snr_ascending  # (T,) at t = T-1 .. 0, increasing
        lam = lam.to(table.dtype).clamp(table[0], table[-1])
        j = torch.searchsorted(table, lam.contiguous()).clamp(1, self.T - 1)  # table[j-1] <= lam <= table[j]
        low, high = table[j - 1], table[j]
        position = (j - 1).to(table.dtype) + (lam - low) / (high - low)  # in the ascending table
        return self.T - 1 - position

    # -- likelihood ---------------------------------------------------------------------
    bound_method = "vlb"  # the discrete-time bound, as the evaluation's tables name it
    bound_axis = "t"  # what its terms are drawn over

    def variational_bound(self, denoiser: Denoiser, x0: torch.Tensor, strata: int,
                          generator: torch.Generator | None = None) -> likelihood.Bound:
        """The bound on -log P(x_0) of Ho et al. 2020, eq. 5, term by term (:func:`likelihood.ddpm_vlb`)."""
        return likelihood.ddpm_vlb(denoiser, self, x0, strata, generator)

    def most_strata(self) -> int:
        return self.T - 1

    # -- training -----------------------------------------------------------------------
    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        """Per-example weights of the squared error of what the network predicts (config.loss_weighting):
        1 (uniform; DDPM eq. 14 for eps), or a chosen weight on the x_0 error (min-SNR, clamped SNR),
        see :func:`parameterisation.loss_weight`."""
        c = self.config
        return parameterisation.loss_weight(c.prediction, c.loss_weighting, self.schedule.snr[t], c.min_snr_gamma)

    def sample_t(self, n: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        """n training timesteps (n,) long: uniform on 0 .. T-1 (DDPM algorithm 1), or, for ``cosine``,
        :meth:`cosine_timestep` of u uniform on [0, 1)."""
        if self.config.t_distribution == "uniform":
            return torch.randint(0, self.T, (n,), generator=generator, device=device)
        return self.cosine_timestep(torch.rand(n, generator=generator, device=device))

    def cosine_timestep(self, u: torch.Tensor) -> torch.Tensor:
        """The first timestep whose log-SNR is at or below lambda(u) = -2 log tan(a u + b), the cosine
        schedule's log-SNR (Nichol & Dhariwal 2021; the CFG process's) truncated to this linear schedule's
        range [lambda_{T-1}, lambda_0]; for u uniform, the timesteps' log-SNRs follow the cosine schedule's
        distribution. u (n,) in [0, 1] -> t (n,) long."""
        lam = -2.0 * torch.log(torch.tan(self._cosine_a * u + self._cosine_b))  # (n,), lambda_0 .. lambda_{T-1}
        below = torch.searchsorted(self._log_snr_ascending, lam, right=True) - 1  # largest entry <= lam
        return (self.T - 1 - below).clamp(0, self.T - 1)  # float rounding past lambda_{T-1}: t = T-1

    def loss(self, model: nn.Module, x0: torch.Tensor, y: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """E_{t, eps} w(t) || target - f_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t) ||^2, t drawn
        by :meth:`sample_t`; the target is eps (DDPM eq. 14), v or x_0 (config.prediction). The weights
        w(t) are what :meth:`loss_weights` says per example; with ``cosine`` timesteps the objective's
        weight on step t is also proportional to how often t is drawn."""
        t = self.sample_t(x0.shape[0], x0.device, generator)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        alpha, sigma = self.alpha_sigma(t, x0)  # (B, 1, 1, 1) each
        return parameterisation.regression_loss(model, self.q_sample(x0, t, noise), x0, noise, alpha, sigma,
                                                self.model_time(t), self.config.prediction, self.loss_weights(t))
