"""Likelihoods of 8-bit images: 256 grey levels evenly spaced over [low, high] ([-1, 1] for the
diffusion models, [0, 1] for the VAE), a continuous distribution integrated over each level's bin,
and the dequantization that turns a density into a bound on the levels' probability.

Level k sits at low + k w with w = (high - low) / 255, its bin [x - w/2, x + w/2], the bins of the
first and last levels extended to -inf and +inf (Ho et al. 2020, section 3.3; Salimans et al. 2017,
eq. 2). A density p of x + u, u uniform over the bin, bounds the levels' probability by Jensen's
inequality: -log P(x) <= E_u[-log p(x + u)] - D log w (Uria et al. 2013; Theis et al. 2016).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

LEVELS = 256


def bin_width(low: float = -1.0, high: float = 1.0) -> float:
    return (high - low) / (LEVELS - 1)


def dequantization_nats(low: float = -1.0, high: float = 1.0) -> float:
    """-log w per dimension: what turns -log p of dequantized levels into a bound on -log P of the
    levels (log(255 / 2) = 4.85 nats on [-1, 1]; log 256 in the [0, 1) convention of published tables,
    where the levels are k / 256 and the same bound reads -log p + D log 256)."""
    return -math.log(bin_width(low, high))


def log_mass(log_cdf: Callable[[torch.Tensor], torch.Tensor], low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """log(F(high) - F(low)) for low < high and a CDF symmetric about 0 (F(-a) = 1 - F(a)), given as
    its log: accurate in float32 in either tail, computed on the side of 0 where F(low) and F(high)
    are not both near 1 (F(high) - F(low) = F(-low) - F(-high)). A difference that rounds to 0 gives
    a very negative value, not -inf (:func:`discretized_pixel_nll` replaces it for narrow bins)."""
    flip = (low + high) > 0
    low, high = torch.where(flip, -high, low), torch.where(flip, -low, high)  # now low + high <= 0
    log_high, log_low = log_cdf(high), log_cdf(low)
    return log_high + torch.log((-torch.expm1(log_low - log_high)).clamp(min=1e-30))


CDFS = {"gaussian": torch.special.log_ndtr, "logistic": F.logsigmoid}
LOG_PDFS = {"gaussian": lambda z: -0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi),
            "logistic": lambda z: F.logsigmoid(z) + F.logsigmoid(-z)}
NARROW = 1e-3  # a bin narrower than this many scales: its mass is the density at its middle times its width


def discretized_pixel_nll(x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, cdf: str = "gaussian",
                          low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    """-log P(x) of each grey level in ``x`` under a Gaussian (``scale`` its std) or logistic (``scale``
    s) location-scale distribution at ``mean``, integrated over the level's bin; x's shape."""
    w = bin_width(low, high)
    below = torch.where(x <= low + w / 2, torch.full_like(x, -math.inf), (x - w / 2 - mean) / scale)
    above = torch.where(x >= high - w / 2, torch.full_like(x, math.inf), (x + w / 2 - mean) / scale)
    edge = (x <= low + w / 2) | (x >= high - w / 2)
    width = torch.where(edge, math.inf, w / scale)  # in scales, not above - below (which cancels)
    # a bin far narrower than the scale: F(high) - F(low) would cancel in float32, the midpoint rule does not
    narrow = LOG_PDFS[cdf]((x - mean) / scale) + torch.log(width.clamp(max=1.0))
    return -torch.where(width < NARROW, narrow, log_mass(CDFS[cdf], below, above))


def discretized_nll(x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, cdf: str = "gaussian",
                    low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    """:func:`discretized_pixel_nll` summed over every non-batch dimension, (B,)."""
    return discretized_pixel_nll(x, mean, scale, cdf, low, high).flatten(1).sum(1)


def dequantize(x: torch.Tensor, generator: torch.Generator | None = None, low: float = -1.0,
               high: float = 1.0) -> torch.Tensor:
    """Grey levels plus noise uniform over each level's bin: a continuous point whose density bounds
    the levels' probability (:func:`dequantization_nats`)."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + (u - 0.5) * bin_width(low, high)


def bits_per_dim(nats, dims: int):
    """Nats per image -> bits per dimension (a float or a tensor)."""
    return nats / (dims * math.log(2))
