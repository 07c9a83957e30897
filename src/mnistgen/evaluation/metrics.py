"""What an evaluation measures, as named results from where they are computed to metrics.json.

Each result type has one ``to_json`` / ``from_json`` pair; metrics.json is the flat union of
the parts a run's model kind computes (the layout of mnistgen 0.1, so old files still read).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterator

import torch

from mnistgen.config import RunConfig
from mnistgen.data.mnist import load
from mnistgen.diffusion.samplers import SamplerSettings
from mnistgen.evaluation.fd import FeatureStats, Judgement, class_histogram, feature_stats, frechet_distance, judge
from mnistgen.training.checkpoint import save_checkpoint


@dataclass(frozen=True)
class SampleQuality:
    """What ``n_samples`` fresh samples scored, judged by mnistgen's classifier."""

    settings: SamplerSettings  # resolved
    n_samples: int
    mnist_fd: float
    class_histogram: list[int]
    sample_seconds: float
    class_accuracy: float | None = None  # conditional models: the judge agrees with the requested label
    class_accuracy_per_class: list[float] | None = None

    @property
    def seconds_per_100_samples(self) -> float:
        return round(100 * self.sample_seconds / self.n_samples, 3)

    def to_json(self) -> dict:
        values = self.settings.to_json()
        values.update(n_samples=self.n_samples, mnist_fd=self.mnist_fd, class_histogram=self.class_histogram,
                      sample_seconds=self.sample_seconds, seconds_per_100_samples=self.seconds_per_100_samples)
        if self.class_accuracy is not None:
            values.update(class_accuracy=self.class_accuracy, class_accuracy_per_class=self.class_accuracy_per_class)
        return values

    @staticmethod
    def from_json(d: dict) -> "SampleQuality":
        settings = SamplerSettings(**{f.name: d.get(f.name) for f in fields(SamplerSettings)})
        return SampleQuality(settings, d["n_samples"], d["mnist_fd"], d["class_histogram"], d["sample_seconds"],
                             d.get("class_accuracy"), d.get("class_accuracy_per_class"))


@dataclass(frozen=True)
class SweepPoint:
    """One guidance weight of a conditional model's sweep."""

    guidance: float
    steps: int
    n_samples: int
    mnist_fd: float
    class_accuracy: float

    @staticmethod
    def of(q: SampleQuality) -> "SweepPoint":
        return SweepPoint(q.settings.guidance, q.settings.steps, q.n_samples, q.mnist_fd, q.class_accuracy)

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(d: dict) -> "SweepPoint":
        return SweepPoint(**d)


@dataclass(frozen=True)
class Likelihood:
    """The VAE's bounds on the test set, in nats per image."""

    val_neg_elbo: float
    iwae_nll: float  # IWAE bound on -log p(x)
    iwae_k: int
    iwae_n_images: int
    n_test_images: int

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(d: dict) -> "Likelihood":
        return Likelihood(**{f.name: d[f.name] for f in fields(Likelihood)})


@dataclass(frozen=True)
class RunMetrics:
    """Everything ``evaluate`` found for one run; each part is None where the model kind has none."""

    model: str
    preset: str
    quality: SampleQuality | None = None
    likelihood: Likelihood | None = None
    guidance_sweep: tuple[SweepPoint, ...] | None = None
    test_accuracy: float | None = None  # the classifier
    evaluation_seconds: float | None = None

    def to_json(self) -> dict:
        values: dict = {"model": self.model, "preset": self.preset}
        if self.test_accuracy is not None:
            values["test_accuracy"] = self.test_accuracy
        if self.likelihood is not None:
            values.update(self.likelihood.to_json())
        if self.quality is not None:
            values.update(self.quality.to_json())
        if self.guidance_sweep is not None:
            values["guidance_sweep"] = [p.to_json() for p in self.guidance_sweep]
        if self.evaluation_seconds is not None:
            values["evaluation_seconds"] = self.evaluation_seconds
        return values

    @staticmethod
    def from_json(d: dict) -> "RunMetrics":
        """The metrics of a metrics.json (parts it lacks stay None)."""
        sweep = d.get("guidance_sweep")
        return RunMetrics(
            d.get("model", "?"), d.get("preset", "?"),
            quality=SampleQuality.from_json(d) if "mnist_fd" in d else None,
            likelihood=Likelihood.from_json(d) if "val_neg_elbo" in d else None,
            guidance_sweep=tuple(SweepPoint.from_json(p) for p in sweep) if sweep is not None else None,
            test_accuracy=d.get("test_accuracy"), evaluation_seconds=d.get("evaluation_seconds"))


def sample_quality(batches: Iterator[torch.Tensor], labels: torch.Tensor | None, classifier,
                   reference: FeatureStats, settings: SamplerSettings) -> SampleQuality:
    """MNIST-FD, class histogram and (given the requested ``labels``) class accuracy of the samples
    that ``batches`` yields, (B, 1, H, W) in [0, 1] on the CPU. Each batch is judged as it comes, so
    memory does not grow with the number of images; the seconds spent sampling are counted apart."""
    verdicts, seconds = [], 0.0
    while True:
        start = time.perf_counter()
        batch = next(batches, None)
        seconds += time.perf_counter() - start
        if batch is None:
            break
        verdicts.append(judge(classifier, batch))
    verdict = Judgement(torch.cat([v.features for v in verdicts]), torch.cat([v.predictions for v in verdicts]))
    accuracy = per_class = None
    if labels is not None:
        correct = verdict.predictions == labels.cpu()
        accuracy = correct.float().mean().item()
        per_class = [correct[labels.cpu() == d].float().mean().item() for d in range(10)]
    fd = frechet_distance(feature_stats(verdict.features), reference)
    return SampleQuality(settings, len(verdict.predictions), fd, class_histogram(verdict.predictions),
                         round(seconds, 3), accuracy, per_class)


def reference_stats(classifier, data_dir: str | os.PathLike | None, device) -> FeatureStats:
    """Classifier feature statistics of the 10,000 MNIST test images."""
    test = load("test", "unit", 28, "mnist", data_dir, device)
    return feature_stats(judge(classifier, test.x).features)


def export_classifier(config: RunConfig, model: torch.nn.Module, path: Path) -> Path:
    """Compact judge weights (float16, about half a megabyte): what mnistgen bundles as its classifier."""
    weights = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    save_checkpoint(path, {"config": config.to_dict(), "model": weights})
    return path
