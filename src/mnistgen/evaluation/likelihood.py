"""Likelihood estimates for the VAE: the negative ELBO and the importance-weighted bound (IWAE)."""

from __future__ import annotations

import torch

from mnistgen.models.vae import VAE, log_likelihood_normal, log_mean_exp, neg_elbo


@torch.no_grad()
def iwae_log_likelihood(model: VAE, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """IWAE bound (Burda et al. 2016, eq. 8) on log p(x), shape (B,):
    log (1/k) sum_i p(x | z_i) p(z_i) / q(z_i | x), z_i ~ q(z | x). k = 1 gives the ELBO; it grows with k."""
    b = x.shape[0]
    mu, logvar = model.encode(x)  # (B, L) each
    eps = torch.randn(k, *mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    z = (mu + (0.5 * logvar).exp() * eps).reshape(k * b, -1)  # (k*B, L), sample-major
    repeat = lambda t: t.expand(k, *t.shape).reshape(k * b, *t.shape[1:])  # noqa: E731
    log_px_z = model.log_likelihood(model.decode_logits(z), repeat(x))  # (k*B,)
    log_pz = log_likelihood_normal(torch.zeros_like(z), torch.zeros_like(z), z)
    log_qz = log_likelihood_normal(repeat(mu), repeat(logvar), z)
    log_w = (log_px_z + log_pz - log_qz).reshape(k, b).T  # (B, k)
    return log_mean_exp(log_w)


@torch.no_grad()
def mean_over_batches(fn, x: torch.Tensor, batch_size: int) -> float:
    """Mean of a per-example function ``fn(x_batch) -> (b,)`` over ``x`` in batches: each batch summed in
    float32 on the device (MPS has no float64), the batch sums added up on the host in double."""
    total = sum(fn(chunk).float().sum().item() for chunk in x.split(batch_size))
    return total / x.shape[0]


def neg_elbo_mean(model: VAE, x: torch.Tensor, generator: torch.Generator | None = None) -> float:
    return mean_over_batches(lambda xb: neg_elbo(model, xb, generator), x, 1000)


def iwae_nll_mean(model: VAE, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> float:
    """Mean IWAE estimate of -log p(x) in nats (an upper bound on the true NLL)."""
    batch = max(1, 20_000 // k)
    return -mean_over_batches(lambda xb: iwae_log_likelihood(model, xb, k, generator), x, batch)
