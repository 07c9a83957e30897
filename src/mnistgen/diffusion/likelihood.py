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
  Hutchinson's estimator. It is a density: :func:`mnistgen.greylevels.dequantize` and
  :func:`~mnistgen.greylevels.dequantization_nats` turn it into a bound on the levels' probability.

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
from mnistgen.diffusion.samplers import randn_like
from mnistgen.errors import UserError
from mnistgen.greylevels import discretized_nll



class Bound(NamedTuple):
    """A bound on -log P(x) of a batch, in nats per image (B,) for each part, and the sampled steps'
    contributions (B, K) with where they were drawn (B, K): the timestep or the log-SNR."""

    prior: torch.Tensor  # (B,)
    diffusion: torch.Tensor  # (B,) the estimate of the sum (integral) over the steps
    decoder: torch.Tensor  # (B,)
    terms: torch.Tensor  # (B, K) each stratum's contribution, nats (the sum is ``diffusion``)
    levels: torch.Tensor  # (B, K) float: the log-SNR, or the timestep t (this module's, from 0) drawn in each stratum
    centers: torch.Tensor  # (K,) each stratum's middle, float64 on the CPU: lambda, or the paper's t of L_{t-1}
    widths: torch.Tensor  # (K,) its size: timesteps in the run, or the width in lambda
    edge_decoders: torch.Tensor | None = None  # (B, K + 1) a continuous bound's decoder at each stratum edge
    calls: int = 0  # network evaluations per image

    def truncated(self) -> torch.Tensor:
        """(B, K + 1): the continuous bound with its decoder at each stratum edge instead of lambda_max,
        prior + the strata below the edge + the decoder there; the last column is :attr:`total`. Each
        is a bound on -log P(x) of the model whose chain stops at that edge (Kingma et al. 2021 learn
        where it stops)."""
        if self.edge_decoders is None:
            raise ValueError("only a continuous bound has a decoder at each stratum edge")
        below = torch.cat([torch.zeros_like(self.terms[:, :1]), self.terms.cumsum(1)], 1)  # (B, K + 1)
        return self.prior[:, None] + below + self.edge_decoders

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


def decoder_nll(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, discrete: bool) -> torch.Tensor:
    """The last step's -log p(x | the cleanest level), (B,): grey levels (``discrete``) or a density."""
    return discretized_nll(x, mean, std) if discrete else gaussian_nll(x, mean, std)


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


def timestep_runs(process, strata: int) -> list[tuple[int, int]]:
    """t = 1 .. T-1 cut into ``strata`` runs of consecutive timesteps (first, last), their ends
    evenly spaced in log-SNR (:meth:`GaussianDiffusion.timesteps`): the first steps, whose terms are
    the largest and change fastest, get short runs. strata = T - 1 puts each timestep in its own run."""
    ends = sorted(process.timesteps(strata + 1, "log-snr"))  # 0 = e_0 < e_1 < ... < e_K = T-1
    return [(a + 1, b) for a, b in zip(ends, ends[1:])]


# -- the DDPM's variational bound ----------------------------------------------------------------
@torch.no_grad()
def ddpm_vlb(denoiser: Denoiser, process, x0: torch.Tensor, strata: int, generator: torch.Generator | None = None,
             discrete: bool = True) -> Bound:
    """Ho et al. 2020, eq. 5 on images ``x0`` (B, C, H, W) in [-1, 1]: L_T + sum_{t=2}^T L_{t-1} + L_0.
    The T - 1 middle terms are estimated by ``strata`` runs of timesteps (:func:`timestep_runs`; at
    most T - 1, which sums every term once): in each, one t per image drawn uniformly, its L_{t-1}
    times the run's length.
    ``discrete``: L_0 the discretized Gaussian over the grey levels, else a Gaussian density."""
    T = process.T
    if not 1 <= strata <= T - 1:
        raise ValueError(f"strata must be in [1, {T - 1}], got {strata}")
    b, device = x0.shape[0], x0.device
    last = torch.full((b,), T - 1, device=device)
    prior = prior_kl(x0, *process.alpha_sigma(last, x0))
    terms, levels, runs = [], [], timestep_runs(process, strata)
    for first, final in runs:  # our t = 1 .. T-1 is the paper's t = 2 .. T
        t = torch.randint(first, final + 1, (b,), generator=generator, device=device)
        terms.append((final - first + 1) * ddpm_step_kl(denoiser, process, x0, t, generator))
        levels.append(t.float())
    zero = torch.zeros(b, dtype=torch.long, device=device)
    x1 = process.q_sample(x0, zero, randn_like(x0, generator))
    mean, variance = process.p_step(x1, 0, -1, denoiser.eps_at(x1, *process.alpha_sigma(zero, x0),
                                                               process.model_time(zero), denoiser.labels))
    decoder = decoder_nll(x0, mean, variance.sqrt(), discrete)
    terms_, levels_ = torch.stack(terms, 1), torch.stack(levels, 1)  # (B, K) each
    runs = torch.tensor(runs, dtype=torch.float64)  # (K, 2)
    return Bound(prior, terms_.sum(1), decoder, terms_, levels_, runs.mean(1) + 1, runs[:, 1] - runs[:, 0] + 1,
                 calls=strata + 1)


def ddpm_step_kl(denoiser: Denoiser, process, x0: torch.Tensor, t: torch.Tensor,
                 generator: torch.Generator | None) -> torch.Tensor:
    """L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || N(mu_theta(x_t, t), beta_t I)) at x_t ~ q(x_t | x_0), per
    image (B,), t (B,) >= 1 in this module's indexing (the paper's t + 1)."""
    alpha, sigma = process.alpha_sigma(t, x0)
    xt = alpha * x0 + sigma * randn_like(x0, generator)
    eps = denoiser.eps_at(xt, alpha, sigma, process.model_time(t), denoiser.labels)
    s = process.schedule
    beta, alpha_t = per_example(s.betas[t], x0), per_example(s.alphas[t], x0)
    model_mean = (xt - beta / sigma * eps) / alpha_t.sqrt()  # eq. 11
    mean_q, var_q = process.q_posterior(x0, xt, t)  # eq. 7
    return gaussian_kl(mean_q, var_q, model_mean, beta)


# -- the continuous-time bound --------------------------------------------------------------------
def alpha_sigma(lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha = sqrt(sigmoid(lambda)), sigma = sqrt(sigmoid(-lambda)) (variance preserving)."""
    return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()


@torch.no_grad()
def continuous_vlb(denoiser: Denoiser, process, x: torch.Tensor, strata: int,
                   generator: torch.Generator | None = None, discrete: bool = True) -> Bound:
    """Kingma et al. 2021, eq. 17 in lambda over the process's :meth:`log_snr_range`
    [lambda_min, lambda_max], for images ``x`` (B, C, H, W): the prior KL at lambda_min, the
    diffusion integral by ``strata`` equal parts of the range (one lambda per image in each, the
    integrand 1/2 ||eps - eps-hat||^2 times the part's width), and -log p(x | z_max), the discretized
    Gaussian around z_max / alpha with scale sigma / alpha (``discrete``; else that Gaussian's density).
    The decoder is also evaluated at every stratum edge, for :meth:`Bound.truncated`."""
    if strata < 1:
        raise ValueError(f"strata must be at least 1, got {strata}")
    low, high = process.log_snr_range()
    b, device = x.shape[0], x.device
    ends = torch.tensor([low, high], device=device)
    prior = prior_kl(x, *alpha_sigma(ends[0]))
    edges = strata_edges(low, high, strata)
    terms, levels = [], []
    for k in range(strata):
        lam = uniform_in(edges[k], edges[k + 1], b, device, generator)  # (B,)
        alpha, sigma = (per_example(v, x) for v in alpha_sigma(lam))
        noise = randn_like(x, generator)
        eps = denoiser.eps_at(alpha * x + sigma * noise, alpha, sigma, process.time_at(lam), denoiser.labels)
        width = float(edges[k + 1] - edges[k])
        terms.append(0.5 * width * (noise - eps).pow(2).flatten(1).sum(1))
        levels.append(lam)
    noise = randn_like(x, generator)
    decoders = torch.stack([decoder_at(x, noise, lam, discrete) for lam in edges.float().to(device)], 1)  # (B, K + 1)
    terms_, levels_ = torch.stack(terms, 1), torch.stack(levels, 1)  # (B, K)
    return Bound(prior, terms_.sum(1), decoders[:, -1], terms_, levels_, (edges[1:] + edges[:-1]) / 2, edges.diff(),
                 decoders, strata)


def decoder_at(x: torch.Tensor, noise: torch.Tensor, lam: torch.Tensor, discrete: bool) -> torch.Tensor:
    """-log p(x | z_lambda) (B,) at z_lambda = alpha x + sigma noise: the discretized Gaussian around
    z / alpha with scale sigma / alpha (``discrete``; else its density)."""
    alpha, sigma = alpha_sigma(lam)
    return decoder_nll(x, (alpha * x + sigma * noise) / alpha, sigma / alpha, discrete)


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
def ode_nll(denoiser: Denoiser, process, x: torch.Tensor, tolerance: float = 1e-3, probes: int = 1,
            generator: torch.Generator | None = None) -> OdeResult:
    """-log p(x) (B,) in nats of the model's density at lambda_max, by the
    probability-flow ODE (:func:`flow`) from x there to lambda_min, solved by :func:`bogacki_shampine`
    with relative and absolute ``tolerance`` (on x and on the log-density per dimension), the same
    Rademacher probes all the way (Grathwohl et al. 2019): -log N(x(lambda_min); 0, I) + int div f dlambda."""
    low, high = process.log_snr_range()
    v = rademacher(probes, x, generator)
    x = x.float()
    dims = x[0].numel()

    def rate(lam: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        f, div = flow(denoiser, process, state[0], lam, v)
        return f, div / dims  # the log-density's rate per dimension: one tolerance serves both

    with frozen(denoiser.network):
        (end, integral), calls = bogacki_shampine(rate, (x, torch.zeros(x.shape[0], device=x.device)), high, low,
                                                  tolerance)
    zero, one = torch.zeros((), device=x.device), torch.ones((), device=x.device)
    return OdeResult(gaussian_nll(end, zero, one) - dims * integral, calls)


class OdeResult(NamedTuple):
    nll: torch.Tensor  # (B,) nats
    calls: int  # network evaluations (each with its vector-Jacobian products)


State = tuple[torch.Tensor, torch.Tensor]  # (x (B, C, H, W), a per-image quantity (B,)), integrated together


def bogacki_shampine(rate: Callable[[torch.Tensor, State], State], state: State, start: float, end: float,
                     tolerance: float, first_step: float = 0.05, most_calls: int = 5_000) -> tuple[State, int]:
    """Integrate d(state)/dlambda = rate(lambda, state) from ``start`` to ``end`` by the Bogacki-Shampine
    3(2) pair (1989; MATLAB's ode23) with adaptive steps: the step is accepted when the RMS of the
    embedded error, each entry scaled by tolerance (1 + |value|), is at most 1 for each part
    of the state (x alone would drown out the log-density's few entries), and the
    next step is h (0.9 / error)^(1/3), within 0.2 h .. 5 h. The last stage is the next step's first
    (three evaluations per step). ``first_step`` is a fraction of the range. The error is an RMS
    over the whole batch: one image's error can hide among the others' (the tolerance bounds the
    batch's, not each image's). Returns the state at ``end`` and the number of evaluations; a
    non-finite state or more than ``most_calls`` evaluations raise. lambda is a float32 scalar
    tensor on the state's device."""
    device = state[0].device
    at = lambda value: torch.tensor(value, dtype=torch.float32, device=device)  # noqa: E731
    lam, h = start, (end - start) * first_step
    k1, calls = rate(at(lam), state), 1
    while (end - lam) * (end - start) > 0:
        h = max(h, end - lam) if end < start else min(h, end - lam)  # never past the end
        k2 = rate(at(lam + h / 2), add(state, h / 2, k1))
        k3 = rate(at(lam + 3 * h / 4), add(state, 3 * h / 4, k2))
        new = add(add(add(state, 2 * h / 9, k1), h / 3, k2), 4 * h / 9, k3)
        k4 = rate(at(lam + h), new)
        calls += 3
        error = [h * (-5 / 72 * a + 1 / 12 * b + 1 / 9 * c - 1 / 8 * d) for a, b, c, d in zip(k1, k2, k3, k4)]
        scale = [tolerance * (1 + torch.maximum(old.abs(), now.abs())) for old, now in zip(state, new)]
        norm = max((e / s).pow(2).mean().sqrt().item() for e, s in zip(error, scale))
        if not math.isfinite(norm):
            raise UserError(f"the probability-flow ODE's state is not finite at log-SNR {lam:.3g}: the network "
                            f"returned inf or nan")
        if calls > most_calls:
            raise UserError(f"the probability-flow ODE passed {most_calls} evaluations at log-SNR {lam:.3g} "
                            f"without reaching {end:g}; loosen --ode-tolerance ({tolerance:g})")
        if norm <= 1:
            lam, state, k1 = lam + h, new, k4
        h = h * min(5.0, max(0.2, 0.9 * max(norm, 1e-10) ** (-1 / 3)))
    return state, calls


def add(state: State, h: float, rate: State) -> State:
    return tuple(s + h * r for s, r in zip(state, rate))
