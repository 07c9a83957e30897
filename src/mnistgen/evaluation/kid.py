"""Kernel inception distance (Binkowski et al. 2018, "Demystifying MMD GANs", section 3), in the
feature space of mnistgen's judge classifier rather than Inception's.

KID is the squared maximum mean discrepancy between two feature sets under the cubic polynomial
kernel k(x, y) = (x . y / d + 1)^3, estimated without bias, averaged over random subsets of
equal size. Unlike a Frechet distance its expectation does not depend on the number
of samples, so KIDs from 300 and from 10,000 samples can be read side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KID:
    mean: float  # over subsets
    std: float
    subsets: int
    subset_size: int


def polynomial_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """k(x, y) = (x . y / d + 1)^3 for every pair: (N, D), (M, D) -> (N, M)."""
    return (a @ b.T / a.shape[1] + 1) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MMD^2_u (Gretton et al. 2012, eq. 3): the mean kernel over distinct pairs within x and within y,
    minus twice the mean over all cross pairs (an unbiased estimator of MMD^2). x (m, D), y (n, D),
    m, n >= 2; float64 scalar, computed on the CPU."""
    x, y = x.detach().cpu().double(), y.detach().cpu().double()
    m, n = x.shape[0], y.shape[0]
    kxx, kyy = polynomial_kernel(x, x), polynomial_kernel(y, y)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return within_x + within_y - 2 * polynomial_kernel(x, y).mean()


def kid(real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
        generator: torch.Generator | None = None) -> KID:
    """KID between feature sets (N, D) and (M, D): MMD^2_u on ``subsets`` random subsets of
    min(subset_size, N, M) features of each (drawn without replacement), their mean and std. When a
    set has no more than ``subset_size`` features every subset of it is the whole set, and the std
    shows only the spread over subsets of the other (for samples judged against the 10,000 test
    images: over real subsets), not the sampling noise of the generated set."""
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(f"KID needs at least 2 features in each set, got {len(real)} and {len(fake)}")
    values = torch.stack([
        mmd2_unbiased(real[torch.randperm(len(real), generator=generator)[:size]],
                      fake[torch.randperm(len(fake), generator=generator)[:size]])
        for _ in range(subsets)])
    std = values.std().item() if subsets > 1 else 0.0
    return KID(values.mean().item(), std, subsets, size)
