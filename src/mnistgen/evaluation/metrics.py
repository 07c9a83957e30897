"""The sampling pipeline of an evaluation: samples judged by the bundled classifier against the
test set (MNIST-FD, KID, PRDC, class accuracy and coverage), the reference set, and the judge's
compact export. The result types it fills live in :mod:`mnistgen.evaluation.results`."""


from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator, NamedTuple

import torch

from mnistgen.config import RunConfig
from mnistgen.data.mnist import load
from mnistgen.diffusion.samplers import SamplerSettings
from mnistgen.evaluation.fd import (FeatureStats, Judgement, class_histogram, fd_spread, feature_stats,
                                   frechet_distance, judge)
from mnistgen.evaluation.kid import kid
from mnistgen.evaluation.prdc import prdc, prdc_against_subsets
from mnistgen.evaluation.results import SampleQuality
from mnistgen.weightfiles import save_weights


class Reference(NamedTuple):
    """The MNIST test set as the judge sees it: what samples are compared with."""

    features: torch.Tensor  # (N, D) float32, on the CPU
    labels: torch.Tensor  # (N,) int64: the true digits
    stats: FeatureStats


def sample_quality(batches: Iterator[torch.Tensor], labels: torch.Tensor | None, classifier,
                   reference: Reference, settings: SamplerSettings, seed: int = 0, detail: bool = True) -> SampleQuality:
    """MNIST-FD, KID, the class histogram and (given the requested ``labels``) class accuracy of the
    samples that ``batches`` yields, (B, 1, H, W) in [0, 1] on the CPU; with ``detail`` also the FD's
    bootstrap std and FD_inf and per-class coverage (a guidance sweep's points go without them). Precision /
    recall / density / coverage always. Each batch is judged as it comes, so memory holds
    features, not images; the seconds spent sampling are counted apart."""
    verdicts, seconds = [], 0.0
    while True:
        start = time.perf_counter()
        batch = next(batches, None)
        seconds += time.perf_counter() - start
        if batch is None:
            break
        verdicts.append(judge(classifier, batch))
    verdict = Judgement(torch.cat([v.features for v in verdicts]), torch.cat([v.predictions for v in verdicts]))
    g = torch.Generator().manual_seed(seed)  # the subsets and resamples of every statistic below
    features = verdict.features  # (N, D)
    accuracy = per_class = coverage = None
    if labels is not None:
        labels = labels.cpu()
        correct = verdict.predictions == labels
        accuracy = correct.float().mean().item()
        per_class = [correct[labels == d].float().mean().item() for d in range(10)]
        coverage = per_class_coverage(features, labels, reference, g) if detail else None
    fd = frechet_distance(feature_stats(features), reference.stats)
    spread = fd_spread(features, reference.stats, generator=g) if detail else None
    kid_ = kid(reference.features, features, generator=g)
    prdc_ = prdc_against_subsets(reference.features, features, PRDC_K, generator=g)
    return SampleQuality(settings, len(verdict.predictions), fd, class_histogram(verdict.predictions),
                         round(seconds, 3), accuracy, per_class, spread, kid_, prdc_, coverage)


PRDC_K = 5  # Naeem et al.'s choice


def _real_subset(real: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """As many real features as there are generated ones (PRDC compares sets of equal size)."""
    return real[torch.randperm(len(real), generator=generator)[:n]]


def per_class_coverage(features: torch.Tensor, labels: torch.Tensor, reference: Reference,
                       generator: torch.Generator) -> list[float] | None:
    """For each digit d: the coverage of real test images of d by the samples requested as d
    (None when a digit has too few samples for k-nearest-neighbour balls)."""
    counts = [int((labels == d).sum()) for d in range(10)]
    if min(counts) <= PRDC_K:
        return None
    return [prdc(_real_subset(reference.features[reference.labels == d], counts[d], generator),
                 features[labels == d], PRDC_K).coverage for d in range(10)]


def reference_set(classifier, data_dir: str | os.PathLike | None, device) -> Reference:
    """The judge's features of the 10,000 MNIST test images, their labels and their statistics."""
    test = load("test", "unit", 28, "mnist", data_dir, device)
    features = judge(classifier, test.x).features
    return Reference(features, test.y.cpu(), feature_stats(features))


def export_classifier(config: RunConfig, model: torch.nn.Module, path: Path) -> Path:
    """Compact judge weights (float16 safetensors with the config in their metadata, about half a
    megabyte): what mnistgen bundles as its classifier."""
    weights = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    save_weights(path, weights, config.to_dict())
    return path
