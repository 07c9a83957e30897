"""Precision and recall (Kynkaanniemi et al. 2019), density and coverage (Naeem et al. 2020) of
generated features against real ones, with k-nearest-neighbour balls in the judge's feature space.

Each real feature r_i has the radius NND_k(r_i), the distance to its k-th nearest other real
feature (likewise for fakes). Precision: the share of fakes inside some real ball. Recall: the
share of reals inside some fake ball. Density: how many real balls hold a fake, on average,
divided by k (about 1 when fakes are distributed like reals). Coverage: the share of real balls
that hold at least one fake. Precision and density measure fidelity; recall and coverage
measure diversity, so dropping digits lowers recall and coverage but not precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CHUNK = 1024  # rows of a distance matrix computed at once: memory is CHUNK x N, not N x M


@dataclass(frozen=True)
class PRDC:
    precision: float
    recall: float
    density: float
    coverage: float
    k: int
    precision_std: float | None = None  # the spread over the real subsets (None: one real set)
    recall_std: float | None = None


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (n, m) in float64, on the CPU (MPS has no float64)."""
    return torch.cdist(a.detach().cpu().double(), b.detach().cpu().double())


def knn_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    """NND_k: the distance from each feature to its k-th nearest *other* feature, (N,) float64."""
    if not 1 <= k < len(features):
        raise ValueError(f"k must be in [1, {len(features) - 1}] for {len(features)} features, got {k}")
    return torch.cat([_distances(chunk, features).kthvalue(k + 1, dim=1).values  # the k+1-th is itself at 0
                      for chunk in features.split(CHUNK)])


def prdc(real: torch.Tensor, fake: torch.Tensor, k: int = 5, fake_radii: torch.Tensor | None = None) -> PRDC:
    """Precision, recall, density and coverage of ``fake`` (M, D) against ``real`` (N, D); balls are closed."""
    real_radii = knn_radii(real, k)
    fake_radii = knn_radii(fake, k) if fake_radii is None else fake_radii  # (M,): the same for every real set
    in_real_balls = torch.cat([(_distances(chunk, real) <= real_radii).sum(1)  # (c,): real balls holding each fake
                               for chunk in fake.split(CHUNK)])
    recalled, covered = [], []
    for chunk, radii in zip(real.split(CHUNK), real_radii.split(CHUNK)):
        d = _distances(chunk, fake)  # (c, M)
        recalled.append((d <= fake_radii).any(1))
        covered.append(d.min(1).values <= radii)
    return PRDC(precision=(in_real_balls > 0).double().mean().item(),
                recall=torch.cat(recalled).double().mean().item(),
                density=in_real_balls.double().mean().item() / k,
                coverage=torch.cat(covered).double().mean().item(), k=k)


def prdc_against_subsets(real: torch.Tensor, fake: torch.Tensor, k: int = 5, repeats: int = 10,
                         generator: torch.Generator | None = None) -> PRDC:
    """PRDC of ``fake`` (M, D) against random subsets of M real features (the papers compare sets of
    equal size), averaged over ``repeats`` subsets: with M = 1,000 one subset's precision moves by
    about 0.05 with which outlying real digits (and their large balls) it happens to hold. With no
    more real features than fakes, the plain :func:`prdc` against all of them. The standard deviations
    of precision and recall over the subsets come with the means."""
    if len(real) <= len(fake):
        return prdc(real, fake, k)
    fake_radii = knn_radii(fake, k)  # computed once for all subsets
    rows = [prdc(real[torch.randperm(len(real), generator=generator)[:len(fake)]], fake, k, fake_radii)
            for _ in range(repeats)]
    values = lambda name: torch.tensor([getattr(r, name) for r in rows], dtype=torch.float64)  # noqa: E731
    return PRDC(*(values(name).mean().item() for name in ("precision", "recall", "density", "coverage")), k,
                values("precision").std().item(), values("recall").std().item())
