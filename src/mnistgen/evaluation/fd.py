"""MNIST-FD, class accuracy and mode coverage, all judged by mnistgen's own MNIST classifier.

MNIST-FD is the Frechet distance between Gaussians fitted to the classifier's
penultimate-layer features of two image sets (the FID formula of Heusel et al. 2017 with
a different feature network). It is *not* Inception FID: numbers are comparable only
with other MNIST-FD numbers from the same classifier weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from mnistgen.config import RunConfig
from mnistgen.errors import UserError
from mnistgen.models.classifier import Classifier
from mnistgen.storage.checkpoint import describe_error, load_checkpoint, load_weights
from mnistgen.weightfiles import read_weights, verify_manifest

BUNDLED_CLASSIFIER = Path(__file__).with_name("weights") / "classifier.safetensors"


class FeatureStats(NamedTuple):
    mean: torch.Tensor  # (D,) float64
    cov: torch.Tensor  # (D, D) float64


class Judgement(NamedTuple):
    features: torch.Tensor  # (N, D) float32, on the CPU
    predictions: torch.Tensor  # (N,) int64


def load_classifier(path: Path | None = None, device: torch.device | str = "cpu") -> Classifier:
    """The classifier shipped with mnistgen (checked against its SHA-256 manifest), or the weights at
    ``path``: a ``.safetensors`` file written by ``evaluate`` on a classifier run, or a classifier
    run's checkpoint (read weights-only). In eval mode."""
    path = Path(path) if path is not None else BUNDLED_CLASSIFIER
    if not path.is_file():
        raise UserError(f"classifier weights {path} not found; create them with `mnistgen train classifier`")
    if path == BUNDLED_CLASSIFIER:
        verify_manifest(path.parent, [path.name])
    if path.suffix == ".safetensors":
        stored = read_weights(path, "classifier")
        config_dict, weights = stored.config, stored.tensors
    else:
        state = load_checkpoint(path, "classifier")  # a foreign, damaged or other-model file: one line
        config_dict, weights = state.get("config"), state.get("model")
    try:
        config = RunConfig.from_dict(config_dict)  # every field checked, as for a run
        model = Classifier(config.model)
        weights = {k: v.float() for k, v in weights.items()}
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    except (KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path} does not hold mnistgen classifier weights ({describe_error(e)})") from None
    load_weights(model, weights, path)
    return model.to(device).eval()


@torch.no_grad()
def judge(classifier: Classifier, images: torch.Tensor, batch_size: int = 1000) -> Judgement:
    """Features and predicted digits for images in [0, 1], (N, 1, 28 or 32, 28 or 32)."""
    device = next(classifier.parameters()).device
    features, predictions = [], []
    for chunk in images.split(batch_size):
        f = classifier.features(chunk.to(device).float())  # (b, D)
        features.append(f.float().cpu())  # float64 only on the CPU (feature_stats)
        predictions.append(classifier.out(f).argmax(1).cpu())
    return Judgement(torch.cat(features), torch.cat(predictions))


def feature_stats(features: torch.Tensor) -> FeatureStats:
    f = features.double()
    return FeatureStats(f.mean(0), torch.cov(f.T))


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(m)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), with tr (S_a S_b)^(1/2) computed as
    tr (S_a^(1/2) S_b S_a^(1/2))^(1/2), a symmetric PSD square root (float64)."""
    root_a = _sqrt_psd(a.cov)
    cross = torch.linalg.eigvalsh(root_a @ b.cov @ root_a).clamp(min=0).sqrt().sum()
    value = (a.mean - b.mean).pow(2).sum() + a.cov.trace() + b.cov.trace() - 2 * cross
    return float(value.clamp(min=0))


def class_histogram(predictions: torch.Tensor) -> list[int]:
    return torch.bincount(predictions, minlength=10).tolist()


@dataclass(frozen=True)
class FDSpread:
    """How far an MNIST-FD from n samples can be trusted."""

    std: float  # bootstrap standard error: the std of the FD over resamples of the generated features
    resamples: int
    at_infinity: float | None  # FD_inf (Chong & Forsyth 2020); None where n is too small to extrapolate


def fd_spread(features: torch.Tensor, reference: FeatureStats, resamples: int = 100,
              generator: torch.Generator | None = None) -> FDSpread:
    """The bootstrap std of the FD of ``features`` (n, D) against ``reference``, and FD_inf."""
    n = len(features)
    values = torch.tensor([frechet_distance(feature_stats(features[torch.randint(n, (n,), generator=generator)]),
                                            reference) for _ in range(resamples)], dtype=torch.float64)
    return FDSpread(values.std().item(), resamples, fd_infinity(features, reference, generator=generator))


def fd_infinity(features: torch.Tensor, reference: FeatureStats, points: int = 10, repeats: int = 5,
                generator: torch.Generator | None = None) -> float | None:
    """FD_inf (Chong & Forsyth 2020, "Effectively Unbiased FID", section 3): the FD of random subsets is
    close to linear in 1 / size; fit that line through ``points`` sizes from max(n / 5, 2 d) to n (the
    mean FD of ``repeats`` subsets at each) and take its value at 1 / size = 0. None when that range
    would be shorter than n / 2 .. n (n < 4 d): the extrapolation would be mostly noise. At n = 1,000
    and d = 128 the sizes span only 256 .. 1,000, so FD_inf is an indication, not a precise number."""
    n, d = features.shape
    smallest = max(n // 5, 2 * d)
    if smallest > n // 2:
        return None
    sizes = torch.linspace(smallest, n, points).round().long().tolist()
    fds = [sum(frechet_distance(feature_stats(features[torch.randperm(n, generator=generator)[:size]]), reference)
               for _ in range(repeats if size < n else 1)) / (repeats if size < n else 1)
           for size in sizes]
    inverse = torch.tensor([1.0 / size for size in sizes], dtype=torch.float64)
    design = torch.stack([torch.ones_like(inverse), inverse], 1)  # (points, 2): intercept, slope
    coef = torch.linalg.lstsq(design, torch.tensor(fds, dtype=torch.float64)[:, None]).solution
    return float(coef[0, 0])
