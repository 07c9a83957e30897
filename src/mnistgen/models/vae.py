"""The study's VAE (Kingma & Welling 2014) and the likelihood / KL functions it needs.

All functions map ``(batch, ...)`` tensors to ``(batch,)``: sums run over every
non-batch dimension.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mnistgen.config import VAEConfig
from mnistgen.greylevels import discretized_pixel_nll

_LOG_2PI = math.log(2 * math.pi)


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)  # (B, D)


def log_likelihood_bernoulli(mu: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """log p(target | mu) = sum_i target_i log mu_i + (1 - target_i) log(1 - mu_i); target may be grey levels."""
    mu = _flat(mu).clamp(eps, 1 - eps)
    target = _flat(target)
    return (target * mu.log() + (1 - target) * (-mu).log1p()).sum(1)


def log_likelihood_bernoulli_logits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The same Bernoulli log-likelihood with mu = sigmoid(logits), stable for any logit."""
    return -F.binary_cross_entropy_with_logits(_flat(logits), _flat(target), reduction="none").sum(1)


def log_likelihood_normal(mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))) = -1/2 sum_i [log 2 pi + logvar_i + (z_i - mu_i)^2 / exp(logvar_i)]."""
    mu, logvar, z = _flat(mu), _flat(logvar), _flat(z)
    return -0.5 * (_LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(1)


def log_mean_exp(y: torch.Tensor) -> torch.Tensor:
    """log (1/K) sum_k exp(y[:, k]) for y of shape (B, K), shifted by the row maximum for stability."""
    m = y.max(dim=1, keepdim=True).values  # (B, 1)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return (y - m).exp().mean(1).log() + m.squeeze(1)


def kl_gaussian_gaussian_analytic(mu_q: torch.Tensor, logvar_q: torch.Tensor,
                                  mu_p: torch.Tensor, logvar_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_q, var_q) || N(mu_p, var_p)) = 1/2 sum [logvar_p - logvar_q + (var_q + (mu_q - mu_p)^2) / var_p - 1]."""
    mu_q, logvar_q, mu_p, logvar_p = map(_flat, (mu_q, logvar_q, mu_p, logvar_p))
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).pow(2)) * torch.exp(-logvar_p) - 1).sum(1)


def kl_gaussian_gaussian_mc(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor, logvar_p: torch.Tensor,
                            num_samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """Monte-Carlo KL: mean over z_k ~ q of log q(z_k) - log p(z_k), with ``num_samples`` draws per row."""
    mu_q, logvar_q, mu_p, logvar_p = map(_flat, (mu_q, logvar_q, mu_p, logvar_p))
    b, d = mu_q.shape
    noise = torch.randn(num_samples, b, d, generator=generator, device=mu_q.device, dtype=mu_q.dtype)
    z = mu_q + (0.5 * logvar_q).exp() * noise  # (K, B, D)
    flat = lambda t: t.expand(num_samples, b, d).reshape(num_samples * b, d)  # noqa: E731
    log_q = log_likelihood_normal(flat(mu_q), flat(logvar_q), z.reshape(-1, d))
    log_p = log_likelihood_normal(flat(mu_p), flat(logvar_p), z.reshape(-1, d))
    return (log_q - log_p).reshape(num_samples, b).mean(0)


class VAEOutput(NamedTuple):
    logits: torch.Tensor  # (B, K, 28, 28) the decoder's outputs (:meth:`VAE.decode_logits`)
    mu: torch.Tensor  # (B, latent)
    logvar: torch.Tensor  # (B, latent)
    z: torch.Tensor  # (B, latent)


MIN_LOG_SCALE = math.log(1 / (8 * 255))  # the logistic decoder's scale: at least 1/8 of a grey level's bin on [0, 1]


class VAE(nn.Module):
    """Encoder 784-400(ReLU)-{mu, logvar}; decoder latent-400(ReLU)-784 Bernoulli logits, or (the
    ``logistic`` decoder) 2 x 784: each pixel's logistic location (unbounded, so that the first and
    last levels, whose bins reach -inf and +inf, can take almost all the mass) and log-scale,
    integrated over the 256 grey levels' bins on [0, 1] (Salimans et al. 2017, eq. 2; one component)."""

    def __init__(self, config: VAEConfig = VAEConfig(), image_size: int = 28):
        super().__init__()
        self.config = config
        self.image_size = image_size
        pixels = image_size * image_size
        self.channels = 2 if config.decoder == "logistic" else 1
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(pixels, config.hidden), nn.ReLU())
        self.to_mu = nn.Linear(config.hidden, config.latent)
        self.to_logvar = nn.Linear(config.hidden, config.latent)
        self.decoder = nn.Sequential(nn.Linear(config.latent, config.hidden), nn.ReLU(),
                                     nn.Linear(config.hidden, self.channels * pixels))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)  # (B, hidden)
        return self.to_mu(h), self.to_logvar(h)  # (B, latent) each

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """(B, K, 28, 28): K = 1 Bernoulli logits, or K = 2 the logistic's location and log-scale. The
        logistic's last layer runs in float32 even under autocast: bf16 would round a location near 1 to
        a step of 1/256, half a grey level, where its scale may be 1/8 of one."""
        if self.channels == 1:
            return self.decoder(z).view(-1, 1, self.image_size, self.image_size)
        hidden = self.decoder[:-1](z)  # (B, hidden)
        with torch.autocast(hidden.device.type, enabled=False):
            out = self.decoder[-1](hidden.float())
        return out.view(-1, self.channels, self.image_size, self.image_size)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's image in [0, 1], (B, 1, 28, 28): the Bernoulli means, or the logistics' locations
        clipped to [0, 1]."""
        out = self.decode_logits(z)
        return torch.sigmoid(out) if self.channels == 1 else out[:, :1].clamp(0, 1)

    def pixel_nll(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x | z) per pixel (B, 1, 28, 28) from :meth:`decode_logits`' output: Bernoulli with grey
        levels as probabilities, or the discretized logistic of the grey levels in [0, 1]."""
        if self.channels == 1:
            return F.binary_cross_entropy_with_logits(logits, x, reduction="none")
        location, log_scale = logits[:, :1], logits[:, 1:].clamp(min=MIN_LOG_SCALE)
        return discretized_pixel_nll(x, location, log_scale.exp(), "logistic", 0.0, 1.0)

    def log_likelihood(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x | z) per image (B,)."""
        return -self.pixel_nll(logits, x).flatten(1).sum(1)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> VAEOutput:
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + (0.5 * logvar).exp() * eps  # reparameterisation
        return VAEOutput(self.decode_logits(z), mu, logvar, z)


def neg_elbo(model: VAE, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """-ELBO per image = -log p(x|z) + KL(q(z|x) || N(0, I)), in nats, shape (B,)."""
    out = model(x, generator)
    zeros = torch.zeros_like(out.mu)
    return -model.log_likelihood(out.logits, x) + kl_gaussian_gaussian_analytic(out.mu, out.logvar, zeros, zeros)


class VAEObjective:
    """Training objective for the shared trainer: mean negative ELBO over the batch."""

    def loss(self, model: VAE, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return neg_elbo(model, x, generator).mean()


def fit_code(model: VAE, images: torch.Tensor, mask: torch.Tensor, steps: int = 300, lr: float = 0.05) -> torch.Tensor:
    """The VAE's answer to inpainting: the code z (B, latent) of highest posterior density given only the
    known pixels, argmax_z sum_known log p(x | decoder(z)) + log N(z; 0, I), found by Adam from the
    encoder's mean of the image with its unknown pixels set to 0. ``mask`` (B, 1, H, W): 1 known.
    The network's weights get no gradient."""
    with torch.enable_grad():
        z = model.encode(images * mask)[0].detach().clone().requires_grad_(True)  # (B, latent)
        optimizer = torch.optim.Adam([z], lr=lr)
        for _ in range(steps):
            nll = model.pixel_nll(model.decode_logits(z), images)
            loss = (nll * mask).flatten(1).sum(1) + 0.5 * z.pow(2).sum(1)  # (B,) -log p(x_known, z) + const
            (grad,) = torch.autograd.grad(loss.sum(), z)
            z.grad = grad
            optimizer.step()
    return z.detach()
