"""How likely a diffusion model finds an image, in nats per image, for images on 256 grey levels
scaled to [-1, 1] (level k at 2k/255 - 1). The process and the denoiser are passed in; neither owns
the other, and every random draw takes a generator.

* :func:`ddpm_vlb`, the DDPM's variational bound (Ho et al. 2020, eq. 5), term by term:
  L_T = KL(q(x_T | x_0) || N(0, I)), L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) and
  L_0 = -log p(x_0 | x_1), the discretized Gaussian decoder (section 3.3). The model's step is the
  one its ancestral sampler takes: the mean of eq. 11 (unclipped) and the variance sigma_t^2 = beta_t.
* :func:`continuous_vlb`, the bound of a continuous-time process in log-SNR lambda (Kingma et al.
  2021, eq. 17, with dt SNR'(t) written as e^lambda dlambda and e^lambda ||x - x-hat||^2 = ||eps - eps-hat||^2):
  KL(q(z_min | x) || N(0, I)) + 1/2 int_{lambda_min}^{lambda_max} E ||eps - eps-hat(z_lambda, lambda)||^2 dlambda
  - log p(x | z_max), the decoder a discretized Gaussian around z / alpha with scale sigma / alpha.
* :func:`ode_nll`, the probability-flow ODE (Song et al. 2021, section 4.3 and appendix D.2) in
  lambda: dx/dlambda = (sigma^2 x - sigma eps-hat(x, lambda)) / 2, integrated from the image to
  lambda_min, with -log p(x) = -log N(x(lambda_min); 0, I) + int div f dlambda and the divergence by
  Hutchinson's estimator. It is a density: :func:`dequantize` and :data:`DEQUANTIZATION_NATS` turn
  it into a bound on the probability of the grey levels.

Both bounds sum many terms; each is estimated by stratified sampling, one level drawn uniformly in
each of ``strata`` equal parts of the range, weighted by its part's size: unbiased, and exact for
the DDPM's sum when every timestep is its own stratum.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, NamedTuple

import torch
from torch import nn

from mnistgen.diffusion.broadcast import per_example
from mnistgen.diffusion.denoiser import Denoiser

LEVELS = 256  # grey levels of an 8-bit image
BIN = 2.0 / (LEVELS - 1)  # their spacing in [-1, 1]
DEQUANTIZATION_NATS = math.log(1 / BIN)  # per dimension: -log P(levels) <= -log p(dequantized) + D log(255 / 2)
OnCall = Callable[[int], None]  # told the batch size after each network evaluation (a progress bar's update)


class Bound(NamedTuple):
    """A bound on -log P(x) of a batch, in nats per image (B,) for each part, and the sampled steps'
    contributions (B, K) with where they were drawn (B, K): the timestep or the log-SNR."""

    prior: torch.Tensor  # (B,)
    diffusion: torch.Tensor  # (B,) the estimate of the sum (integral) over the steps
    decoder: torch.Tensor  # (B,)
    terms: torch.Tensor  # (B, K) each stratum's contribution, nats (the sum is ``diffusion``)
    levels: torch.Tensor  # (B, K) float: the timestep t (DDPM) or the log-SNR lambda drawn in each stratum

    @property
    def total(self) -> torch.Tensor:
        return self.prior + self.diffusion + self.decoder  # (B,)


# -- the Gaussian pieces --------------------------------------------------------------------
def gaussian_kl(mean_q: torch.Tensor, var_q: torch.Tensor, mean_p: torch.Tensor, var_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mean_q, var_q) || N(mean_p, var_p)) summed over every non-batch dimension, (B,):
    1/2 [log var_p - log var_q + (var_q + (mean_q - mean_p)^2) / var_p - 1] per dimension."""
    per = 0.5 * (var_p.log() - var_q.log() + (var_q + (mean_q - mean_p).pow(2)) / var_p - 1)
    return per.expand_as(mean_q).flatten(1).sum(1)


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """-log N(x; mean, std^2 I) summed over every non-batch dimension, (B,)."""
    per = 0.5 * math.log(2 * math.pi) + std.log() + 0.5 * ((x - mean) / std).pow(2)
    return per.expand_as(x).flatten(1).sum(1)


def log_normal_mass(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """log(Phi(high) - Phi(low)) for low < high, accurate in float32 in either tail: computed on the
    side of 0 where the two values are not both near 1 (Phi(-a) - Phi(-b) = Phi(b) - Phi(a))."""
    flip = (low + high) > 0
    low, high = torch.where(flip, -high, low), torch.where(flip, -low, high)  # now low + high <= 0
    log_high, log_low = torch.special.log_ndtr(high), torch.special.log_ndtr(low)
    return log_high + torch.log(-torch.expm1(log_low - log_high))


def discretized_gaussian_nll(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """-log P(x) of grey levels ``x`` in [-1, 1] under N(mean, std^2) integrated over each level's bin
    (Ho et al. 2020, section 3.3): [x - 1/255, x + 1/255], the bins of -1 and 1 extended to -inf and
    +inf. Summed over every non-batch dimension, (B,)."""
    low = torch.where(x <= -1 + BIN / 2, torch.full_like(x, -math.inf), (x - BIN / 2 - mean) / std)
    high = torch.where(x >= 1 - BIN / 2, torch.full_like(x, math.inf), (x + BIN / 2 - mean) / std)
    return -log_normal_mass(low, high).flatten(1).sum(1)


def decoder_nll(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, discrete: bool) -> torch.Tensor:
    """The last step's -log p(x | the cleanest level), (B,): grey levels (``discrete``) or a density."""
    return discretized_gaussian_nll(x, mean, std) if discrete else gaussian_nll(x, mean, std)


def prior_kl(x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(q(x_T | x) || N(0, I)) with q(x_T | x) = N(alpha x, sigma^2 I), (B,)."""
    one = torch.ones((), device=x.device)
    return gaussian_kl(alpha * x, sigma.pow(2).expand_as(x), torch.zeros((), device=x.device), one)


# -- stratified draws -------------------------------------------------------------------------
def strata_edges(low: float, high: float, strata: int) -> torch.Tensor:
    """``strata + 1`` edges of equal parts of [low, high], float64 on the CPU."""
    return torch.linspace(low, high, strata + 1, dtype=torch.float64)


def uniform_in(low: torch.Tensor, high: torch.Tensor, n: int, device: torch.device,
               generator: torch.Generator | None) -> torch.Tensor:
    """n draws (n,) float32, uniform in [low, high)."""
    u = torch.rand(n, generator=generator, device=device)
    return low.float().to(device) + u * (high - low).float().to(device)


def split_timesteps(first: int, last: int, strata: int) -> list[tuple[int, int]]:
    """[first, last] cut into ``strata`` runs of consecutive timesteps, as equal as whole numbers allow."""
    count = last - first + 1
    bounds = [first + (count * k) // strata for k in range(strata + 1)]
    return [(a, b - 1) for a, b in zip(bounds, bounds[1:])]


# -- the DDPM's variational bound ----------------------------------------------------------------
@torch.no_grad()
def ddpm_vlb(denoiser: Denoiser, process, x0: torch.Tensor, strata: int, generator: torch.Generator | None = None,
             discrete: bool = True, on_call: OnCall | None = None) -> Bound:
    """Ho et al. 2020, eq. 5 on images ``x0`` (B, C, H, W) in [-1, 1]: L_T + sum_{t=2}^T L_{t-1} + L_0.
    The T - 1 middle terms are estimated by ``strata`` runs of timesteps (at most T - 1; T - 1 sums
    every term once): in each, one t per image drawn uniformly, its L_{t-1} times the run's length.
    ``discrete``: L_0 the discretized Gaussian over the grey levels, else a Gaussian density."""
    T, s = process.T, process.schedule
    if not 1 <= strata <= T - 1:
        raise ValueError(f"strata must be in [1, {T - 1}], got {strata}")
    b, device = x0.shape[0], x0.device
    last = torch.full((b,), T - 1, device=device)
    prior = prior_kl(x0, *process.alpha_sigma(last, x0))
    terms, levels = [], []
    for first, final in split_timesteps(1, T - 1, strata):  # our t = 1 .. T-1 is the paper's t = 2 .. T
        t = torch.randint(first, final + 1, (b,), generator=generator, device=device)
        terms.append((final - first + 1) * ddpm_step_kl(denoiser, process, x0, t, generator))
        levels.append(t.float())
        if on_call is not None:
            on_call(b)
    zero = torch.zeros(b, dtype=torch.long, device=device)
    x1 = process.q_sample(x0, zero, noise_like(x0, generator))
    mean, variance = process.p_step(x1, 0, -1, denoiser.eps_at(x1, *process.alpha_sigma(zero, x0),
                                                               process.model_time(zero), denoiser.labels))
    decoder = decoder_nll(x0, mean, variance.sqrt(), discrete)
    if on_call is not None:
        on_call(b)
    terms_, levels_ = torch.stack(terms, 1), torch.stack(levels, 1)  # (B, K) each
    return Bound(prior, terms_.sum(1), decoder, terms_, levels_)


def ddpm_step_kl(denoiser: Denoiser, process, x0: torch.Tensor, t: torch.Tensor,
                 generator: torch.Generator | None) -> torch.Tensor:
    """L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || N(mu_theta(x_t, t), beta_t I)) at x_t ~ q(x_t | x_0), per
    image (B,), t (B,) >= 1 in this module's indexing (the paper's t + 1)."""
    alpha, sigma = process.alpha_sigma(t, x0)
    xt = alpha * x0 + sigma * noise_like(x0, generator)
    eps = denoiser.eps_at(xt, alpha, sigma, process.model_time(t), denoiser.labels)
    s = process.schedule
    beta, alpha_t = per_example(s.betas[t], x0), per_example(s.alphas[t], x0)
    model_mean = (xt - beta / sigma * eps) / alpha_t.sqrt()  # eq. 11
    mean_q, var_q = process.q_posterior(x0, xt, t)  # eq. 7
    return gaussian_kl(mean_q, var_q, model_mean, beta)


def noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


# -- the continuous-time bound --------------------------------------------------------------------
def alpha_sigma(lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha = sqrt(sigmoid(lambda)), sigma = sqrt(sigmoid(-lambda)) (variance preserving)."""
    return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()


@torch.no_grad()
def continuous_vlb(denoiser: Denoiser, process, x: torch.Tensor, strata: int,
                   generator: torch.Generator | None = None, discrete: bool = True,
                   on_call: OnCall | None = None) -> Bound:
    """Kingma et al. 2021, eq. 17 in lambda over the process's :meth:`log_snr_range`
    [lambda_min, lambda_max], for images ``x`` (B, C, H, W): the prior KL at lambda_min, the
    diffusion integral by ``strata`` equal parts of the range (one lambda per image in each, the
    integrand 1/2 ||eps - eps-hat||^2 times the part's width), and -log p(x | z_max), the discretized
    Gaussian around z_max / alpha with scale sigma / alpha (``discrete``; else that Gaussian's density)."""
    low, high = process.log_snr_range()
    b, device = x.shape[0], x.device
    ends = torch.tensor([low, high], device=device)
    a_min, s_min = alpha_sigma(ends[0])
    prior = prior_kl(x, a_min, s_min)
    edges = strata_edges(low, high, strata)
    terms, levels = [], []
    for k in range(strata):
        lam = uniform_in(edges[k], edges[k + 1], b, device, generator)  # (B,)
        alpha, sigma = (per_example(v, x) for v in alpha_sigma(lam))
        noise = noise_like(x, generator)
        eps = denoiser.eps_at(alpha * x + sigma * noise, alpha, sigma, process.time_at(lam), denoiser.labels)
        width = float(edges[k + 1] - edges[k])
        terms.append(0.5 * width * (noise - eps).pow(2).flatten(1).sum(1))
        levels.append(lam)
        if on_call is not None:
            on_call(b)
    a_max, s_max = alpha_sigma(ends[1])
    z = a_max * x + s_max * noise_like(x, generator)
    decoder = decoder_nll(x, z / a_max, s_max / a_max, discrete)
    terms_, levels_ = torch.stack(terms, 1), torch.stack(levels, 1)  # (B, K)
    return Bound(prior, terms_.sum(1), decoder, terms_, levels_)


# -- the probability-flow ODE ----------------------------------------------------------------------
def rademacher(probes: int, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``probes`` vectors of independent +-1 entries shaped like ``like``: (P, B, C, H, W)."""
    bits = torch.randint(0, 2, (probes, *like.shape), generator=generator, device=like.device)
    return (2 * bits - 1).to(like.dtype)


def hutchinson_trace(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                     probes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """f(x) (B, ...) detached and the estimate of tr(df/dx) per example (B,): the mean over the
    probes v of v^T (df/dx) v (Hutchinson 1990; unbiased for E[v v^T] = I), one vector-Jacobian
    product per probe on one forward pass. Each example's output must depend on its own input only."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = f(x)
        estimates = []
        for i, v in enumerate(probes):
            (vjp,) = torch.autograd.grad(out, x, v, retain_graph=i + 1 < len(probes))
            estimates.append((vjp * v).flatten(1).sum(1))
    return out.detach(), torch.stack(estimates).mean(0)


def flow(denoiser: Denoiser, process, x: torch.Tensor, lam: torch.Tensor,
         probes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The probability-flow ODE in lambda, f = dx/dlambda = (sigma^2 x - sigma eps-hat(x, lambda)) / 2
    (from x / alpha = x_0 + e^{-lambda/2} eps, whose flow is d(x/alpha)/d(sigma/alpha) = eps-hat), and
    its divergence sigma^2 D / 2 - sigma tr(d eps-hat / dx) / 2 by :func:`hutchinson_trace`; lam () float32."""
    alpha, sigma = alpha_sigma(lam)
    time = process.time_at(lam.reshape(1))
    eps, trace = hutchinson_trace(lambda z: denoiser.eps_at(z, alpha, sigma, time, denoiser.labels), x, probes)
    dims = x[0].numel()
    return 0.5 * (sigma.pow(2) * x - sigma * eps), 0.5 * (sigma.pow(2) * dims - sigma * trace)


@contextlib.contextmanager
def frozen(network: nn.Module) -> Iterator[None]:
    """The network's weights need no gradient while an input's does (the divergence's
    vector-Jacobian products): no weight gradients are computed; each weight's flag is restored."""
    flags = [p.requires_grad for p in network.parameters()]
    try:
        for p in network.parameters():
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(network.parameters(), flags):
            p.requires_grad_(flag)


@torch.no_grad()
def ode_nll(denoiser: Denoiser, process, x: torch.Tensor, steps: int, probes: int = 1,
            generator: torch.Generator | None = None, on_call: OnCall | None = None) -> torch.Tensor:
    """-log p(x) (B,) in nats of the model's density at lambda_max, by the probability-flow ODE (:func:`flow`)
    from x at lambda_max to lambda_min in ``steps`` Heun steps evenly spaced in lambda (2 steps
    evaluations, each a forward pass and ``probes`` vector-Jacobian products), the same Rademacher
    probes all the way (Grathwohl et al. 2019): -log N(x(lambda_min); 0, I) + int div f dlambda."""
    with frozen(denoiser.network):
        return _ode_nll(denoiser, process, x, steps, probes, generator, on_call)


def _ode_nll(denoiser: Denoiser, process, x: torch.Tensor, steps: int, probes: int,
             generator: torch.Generator | None, on_call: OnCall | None) -> torch.Tensor:
    low, high = process.log_snr_range()
    grid = torch.linspace(high, low, steps + 1, dtype=torch.float64).float().to(x.device)  # (steps + 1,)
    v = rademacher(probes, x, generator)
    x = x.float()
    integral = torch.zeros(x.shape[0], device=x.device)  # int_{lambda_max}^{lambda} div f dlambda
    f, div = flow(denoiser, process, x, grid[0], v)
    for i in range(steps):
        h = grid[i + 1] - grid[i]  # < 0
        guess = x + h * f
        f_next, div_next = flow(denoiser, process, guess, grid[i + 1], v)
        x = x + 0.5 * h * (f + f_next)
        integral = integral + 0.5 * h * (div + div_next)
        if i + 1 < steps:  # Heun: the next step starts from its corrected point
            f, div = flow(denoiser, process, x, grid[i + 1], v)
        if on_call is not None:
            on_call(x.shape[0])
    zero, one = torch.zeros((), device=x.device), torch.ones((), device=x.device)
    return gaussian_nll(x, zero, one) - integral


def dequantize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Grey levels in [-1, 1] plus noise uniform over each level's bin (width 2/255): a continuous
    point whose density bounds the levels' probability, -log P(x) <= E[-log p(x + u)] + D log(255 / 2)."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + (u - 0.5) * BIN


def bits_per_dim(nats: torch.Tensor | float, dims: int) -> torch.Tensor | float:
    """Nats per image -> bits per dimension."""
    return nats / (dims * math.log(2))
