"""What the network predicts: epsilon, v or x_0, and the conversions the samplers need.

Both noise processes write a noisy image as z = alpha x_0 + sigma eps with alpha^2 + sigma^2 = 1
and SNR = alpha^2 / sigma^2. The network may predict
    eps                          (DDPM eq. 14, the study's choice),
    v = alpha eps - sigma x_0    (Salimans & Ho 2022, section 4), or
    x_0 itself.
The denoiser (:mod:`mnistgen.diffusion.denoiser`) converts the output once with :func:`to_eps`
and hands the samplers both eps and x_0. For a prediction error, the
squared errors relate as ||eps - eps^||^2 = SNR ||x_0 - x_0^||^2 and ||v - v^||^2 =
(1 + SNR) ||x_0 - x_0^||^2, so a loss weighting is fixed by its weight on the x_0 error.
"""

from __future__ import annotations

import torch
from torch import nn


def target(prediction: str, x0: torch.Tensor, noise: torch.Tensor, alpha: torch.Tensor,
           sigma: torch.Tensor) -> torch.Tensor:
    """The regression target for ``prediction`` (B, C, H, W): eps (DDPM eq. 14), v = alpha eps - sigma x_0
    (Salimans & Ho 2022, section 4) or x_0; alpha and sigma (B, 1, 1, 1) broadcast against x0."""
    if prediction == "eps":
        return noise
    if prediction == "v":
        return alpha * noise - sigma * x0
    if prediction == "x0":
        return x0
    raise ValueError(f"unknown prediction {prediction!r}")


def to_eps(prediction: str, output: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor,
           sigma: torch.Tensor) -> torch.Tensor:
    """The network's ``output`` (B, C, H, W) at z as epsilon: v -> sigma z + alpha v (from z = alpha x_0 +
    sigma eps and the definition of v, with alpha^2 + sigma^2 = 1); x_0 -> (z - alpha x_0) / sigma."""
    if prediction == "eps":
        return output
    if prediction == "v":
        return sigma * z + alpha * output
    if prediction == "x0":
        return (z - alpha * output) / sigma
    raise ValueError(f"unknown prediction {prediction!r}")


def loss_weight(prediction: str, weighting: str, snr: torch.Tensor, gamma: float) -> torch.Tensor:
    """The weight on ``prediction``'s squared error that puts a chosen weight on the x_0 error:
        uniform      1 on the prediction's own error (SNR, SNR + 1 or 1 on the x_0 error);
        min-snr      min(SNR, gamma) (Hang et al. 2023, eq. 8 and its v form);
        clamped-snr  clamp(SNR, 1, gamma): min-SNR with the floor of the "truncated SNR" weighting
                     max(SNR, 1) (Salimans & Ho 2022, section 4), so the noisiest steps, where a
                     digit's shape is decided, keep weight 1 on the x_0 error instead of SNR -> 0."""
    if weighting == "uniform":
        return torch.ones_like(snr)  # (B,)
    if weighting == "min-snr":
        on_x0 = snr.clamp(max=gamma)
    elif weighting == "clamped-snr":
        on_x0 = snr.clamp(min=1.0, max=gamma)
    else:
        raise ValueError(f"unknown loss weighting {weighting!r}")
    return on_x0 / x0_error_factor(prediction, snr)


def x0_error_factor(prediction: str, snr: torch.Tensor) -> torch.Tensor:
    """||prediction error||^2 / ||x_0 error||^2 at a given SNR (B,): SNR for eps, 1 + SNR for v, 1 for x_0."""
    if prediction == "eps":
        return snr
    if prediction == "v":
        return snr + 1
    if prediction == "x0":
        return torch.ones_like(snr)
    raise ValueError(f"unknown prediction {prediction!r}")


def regression_loss(model: nn.Module, xt: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, alpha: torch.Tensor,
                    sigma: torch.Tensor, time: torch.Tensor, prediction: str, weights: torch.Tensor,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
    """The one training loss of both processes: mean_b w_b || target_b - f_theta(x_t, t_b) ||^2 / D with
    x_t = alpha_b x_0 + sigma_b eps (the process's q_sample), the target of ``prediction``
    (:func:`target`) and per-example ``weights`` (B,) (:func:`loss_weight`); x0, noise and xt
    (B, C, H, W), alpha and sigma (B, 1, 1, 1), time (B,) what the network sees, ``labels`` (B,) a
    conditional network's (after any dropout)."""
    out = model(xt, time) if labels is None else model(xt, time, labels)
    goal = target(prediction, x0, noise, alpha, sigma)
    per_example = (out.float() - goal.float()).pow(2).mean(dim=tuple(range(1, x0.dim())))  # (B,)
    return (weights * per_example).mean()
