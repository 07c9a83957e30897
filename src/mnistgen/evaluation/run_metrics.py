"""`mnistgen evaluate`: a run's metrics, merged into RUN/metrics.json."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from mnistgen.config import CFGConfig, DDPMConfig, RunConfig, range_of
from mnistgen.data.mnist import load
from mnistgen.errors import UserError
from mnistgen.evaluation.fd import (FeatureStats, Judgement, class_histogram, feature_stats, frechet_distance,
                                   judge, load_classifier)
from mnistgen.evaluation.likelihood import iwae_nll_mean, neg_elbo_mean
from mnistgen.recipes import generate_batches, load_data, load_run
from mnistgen.files import check_writable_dir


@dataclass(frozen=True)
class SamplerSettings:
    sampler: str | None = None  # DDPM: ancestral | ddim (None = the run's default)
    steps: int | None = None
    eta: float | None = None
    guidance: float | None = None  # CFG


def resolve(cfg: RunConfig, s: SamplerSettings) -> SamplerSettings:
    """The sampler settings actually used, defaults filled in from the run's config
    (fields that do not apply to the model stay None)."""
    p = cfg.process
    if cfg.kind == "ddpm":
        sampler = s.sampler or p.sampler
        steps = p.timesteps if sampler == "ancestral" else (s.steps or p.sample_steps)
        return SamplerSettings(sampler, steps, p.eta if s.eta is None else s.eta)
    if cfg.kind == "cfg":
        guidance = p.guidance if s.guidance is None else s.guidance
        return SamplerSettings("cfg", s.steps or p.sample_steps, guidance=guidance)
    return SamplerSettings("prior")


_APPLIES = {"vae": (), "classifier": (), "ddpm": ("--sampler", "--steps", "--eta"), "cfg": ("--steps", "--guidance")}


def check_settings(cfg: RunConfig, s: SamplerSettings) -> None:
    """Refuse, in one line, sampler options that do not apply to the run's model or lie out of range."""
    given = [name for name, v in (("--sampler", s.sampler), ("--steps", s.steps), ("--eta", s.eta),
                                  ("--guidance", s.guidance)) if v is not None]
    applies = _APPLIES[cfg.kind]
    extra = [name for name in given if name not in applies]
    if extra:
        takes = ", ".join(applies) if applies else "none of the sampler options (it samples in one pass)"
        raise UserError(f"{', '.join(extra)} does not apply to the {cfg.kind} model; it takes {takes}")
    if cfg.kind == "ddpm":
        T = cfg.process.timesteps
        if (s.sampler or cfg.process.sampler) == "ancestral" and (s.steps is not None or s.eta is not None):
            raise UserError(f"ancestral sampling runs all {T} steps with the DDPM's own variance; "
                            f"--steps and --eta apply to --sampler ddim")
        if s.steps is not None and not 1 <= s.steps <= T:
            raise UserError(f"--steps must be in [1, {T}] for DDIM on this model, got {s.steps}")
        if (s.sampler or cfg.process.sampler) == "ddim" and s.steps is None and cfg.process.sample_steps > T:
            raise UserError(f"the run's process.sample_steps ({cfg.process.sample_steps}) exceeds its {T} "
                            f"timesteps; pass --steps in [1, {T}]")
        _in_range("--eta", s.eta, DDPMConfig, "eta")
    if cfg.kind == "cfg":
        _in_range("--steps", s.steps, CFGConfig, "sample_steps")
        _in_range("--guidance", s.guidance, CFGConfig, "guidance")


def _in_range(flag: str, value: float | None, component: type, name: str) -> None:
    """A command-line option against the range its config field declares."""
    if value is not None and not range_of(component, name).holds(value):
        raise UserError(f"{flag} must be {range_of(component, name)}, got {value}")


@dataclass(frozen=True)
class SampleQuality:
    """What ``n_samples`` fresh samples scored; ``record()`` is its metrics.json form."""

    settings: SamplerSettings  # resolved
    n_samples: int
    mnist_fd: float
    class_histogram: list[int]
    sample_seconds: float
    class_accuracy: float | None = None  # CFG: the judge agrees with the requested label
    class_accuracy_per_class: list[float] | None = None

    @property
    def seconds_per_100_samples(self) -> float:
        return round(100 * self.sample_seconds / self.n_samples, 3)

    def record(self) -> dict:
        values = {k: v for k, v in asdict(self.settings).items() if v is not None}
        values.update(n_samples=self.n_samples, mnist_fd=self.mnist_fd, class_histogram=self.class_histogram,
                      sample_seconds=self.sample_seconds, seconds_per_100_samples=self.seconds_per_100_samples)
        if self.class_accuracy is not None:
            values.update(class_accuracy=self.class_accuracy, class_accuracy_per_class=self.class_accuracy_per_class)
        return values


@torch.no_grad()
def draw_judged(cfg: RunConfig, model: nn.Module, classifier, n: int, seed: int, settings: SamplerSettings,
                process=None) -> tuple[Judgement, torch.Tensor | None, float]:
    """The judge's verdict on ``n`` fresh samples (for CFG: n // 10 per digit, labels returned) and the
    seconds spent sampling. Images are judged batch by batch, so memory does not grow with n's images."""
    device = next(model.parameters()).device
    g = torch.Generator(device).manual_seed(seed)
    labels = torch.arange(10, device=device).repeat_interleave(max(1, n // 10)) if cfg.kind == "cfg" else None
    total = len(labels) if labels is not None else n
    batches = generate_batches(cfg, model, total, g, labels, progress=True, process=process,
                               sampler=settings.sampler, steps=settings.steps, eta=settings.eta,
                               guidance=settings.guidance)
    verdicts, seconds = [], 0.0
    while True:
        start = time.perf_counter()
        batch = next(batches, None)
        seconds += time.perf_counter() - start
        if batch is None:
            break
        verdicts.append(judge(classifier, batch))
    verdict = Judgement(torch.cat([v.features for v in verdicts]), torch.cat([v.predictions for v in verdicts]))
    return verdict, (labels.cpu() if labels is not None else None), seconds


def sample_quality(cfg: RunConfig, model: nn.Module, classifier, reference: FeatureStats, n: int, seed: int,
                   settings: SamplerSettings, process=None) -> SampleQuality:
    """MNIST-FD, class histogram and (CFG) class accuracy of ``n`` fresh samples."""
    verdict, labels, seconds = draw_judged(cfg, model, classifier, n, seed, settings, process)
    accuracy = per_class = None
    if labels is not None:
        correct = verdict.predictions == labels
        accuracy = correct.float().mean().item()
        per_class = [correct[labels == d].float().mean().item() for d in range(10)]
    fd = frechet_distance(feature_stats(verdict.features), reference)
    return SampleQuality(resolve(cfg, settings), len(verdict.predictions), fd, class_histogram(verdict.predictions),
                         round(seconds, 3), accuracy, per_class)


def export_classifier(cfg: RunConfig, model: nn.Module, path: Path) -> None:
    """Compact judge weights (float16, about half a megabyte): what mnistgen bundles as its classifier."""
    from mnistgen.training.checkpoint import save_checkpoint

    weights = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    save_checkpoint(path, {"config": cfg.to_dict(), "model": weights})


def reference_stats(classifier, data_dir: str | os.PathLike | None, device) -> FeatureStats:
    """Classifier feature statistics of the 10,000 MNIST test images."""
    test = load("test", "unit", 28, "mnist", data_dir, device)
    return feature_stats(judge(classifier, test.x).features)


def _sweep_point(q: SampleQuality) -> dict:
    return {"guidance": q.settings.guidance, "steps": q.settings.steps, "n_samples": q.n_samples,
            "mnist_fd": q.mnist_fd, "class_accuracy": q.class_accuracy}


def evaluate_run(path: str | os.PathLike, device: torch.device, data_dir: str | os.PathLike | None = None,
                 iwae_k: int = 500, n_images: int = 10_000, n_samples: int = 1000, seed: int = 0,
                 settings: SamplerSettings = SamplerSettings(), guidance_sweep: list[float] | None = None,
                 sweep_samples: int | None = None, classifier_path: Path | None = None) -> dict:
    """Evaluate the run at ``path`` and merge the results into its metrics.json; returns the whole record."""
    loaded = load_run(path, device)
    cfg, model = loaded.cfg, loaded.model
    check_settings(cfg, settings)
    if guidance_sweep is not None:
        if cfg.kind != "cfg":
            raise UserError(f"--guidance-sweep applies to the cfg model; {loaded.run.root} holds a {cfg.kind!r} model")
        check_settings(cfg, SamplerSettings(guidance=max(guidance_sweep)))
        check_settings(cfg, SamplerSettings(guidance=min(guidance_sweep)))
    check_writable_dir(loaded.run.root, "run directory")
    values: dict = {"model": cfg.kind, "preset": cfg.preset}
    if cfg.kind == "classifier":
        test = load_data(cfg, "test", data_dir, device)
        predictions = judge(model, test.x).predictions
        values["test_accuracy"] = (predictions == test.y.cpu()).float().mean().item()
        export_classifier(cfg, model, loaded.run.root / "classifier.pt")
        return loaded.run.update_metrics(**values)
    if cfg.kind == "vae":
        test = load_data(cfg, "test", data_dir, device)
        g = torch.Generator(device).manual_seed(seed)
        values.update(val_neg_elbo=neg_elbo_mean(model, test.x, g),
                      iwae_nll=iwae_nll_mean(model, test.x[:n_images], iwae_k, g),
                      iwae_k=iwae_k, iwae_n_images=min(n_images, len(test)), n_test_images=len(test))
    if cfg.data.dataset == "mnist":
        classifier = load_classifier(classifier_path, device)
        reference = reference_stats(classifier, data_dir, device)
        values.update(sample_quality(cfg, model, classifier, reference, n_samples, seed, settings,
                                     loaded.process).record())
        if guidance_sweep and cfg.kind == "cfg":
            values["guidance_sweep"] = [_sweep_point(sample_quality(
                cfg, model, classifier, reference, sweep_samples or n_samples, seed,
                SamplerSettings(steps=settings.steps, guidance=w), loaded.process)) for w in guidance_sweep]
    return loaded.run.update_metrics(**values)
