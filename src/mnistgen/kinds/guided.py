"""The class-conditional model with classifier-free guidance (SPEC section 3), model name ``cfg``:
a label-conditioned U-Net on the continuous log-SNR process, guided sampling with weight w."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from mnistgen.config import RunConfig
from mnistgen.data.mnist import labels_per_digit
from mnistgen.diffusion.logsnr import LogSNRDiffusion
from mnistgen.evaluation.metrics import Reference
from mnistgen.evaluation.results import RunMetrics, SweepPoint, read_metrics
from mnistgen.kinds.base import STEPS_CAPTION, STEPS_FIGURE, DiffusionKind, EvaluationRequest, TrainedModel, conditional_labels
from mnistgen.models.unet import ConditionalUNet
from mnistgen.progress import long_step

PREVIEW_PER_DIGIT = 2  # the per-epoch grid: two samples per digit, one row per digit (F12 shows the first)


class GuidedKind(DiffusionKind):
    name = "cfg"
    title = "CFG"
    long_title = "Classifier-free guidance"
    takes_labels = True
    guided = True
    sweep_weights = (0.0, 0.3, 1.0, 2.0, 4.0)  # SPEC section 3
    sampler_options = (*DiffusionKind.sampler_options, "--guidance")
    preview_nrow = PREVIEW_PER_DIGIT
    captions = {
        "f12_epochs.png": "F12. Class-conditional samples for labels 0-9 (rows) as training proceeds (columns).",
        "guidance_sweep.png": "Guidance sweep: samples per digit for w = 0 ... 4, and MNIST-FD / class accuracy "
                              "against w.",
        "guidance_tradeoff.png": "Guidance trade-off: class accuracy and recall (± std over subsets of the real "
                                 "images) against w, from the guidance sweep.",
        STEPS_FIGURE: STEPS_CAPTION,
    }

    def build_model(self, config: RunConfig) -> nn.Module:
        return ConditionalUNet(config.model)

    def build_process(self, config: RunConfig, device: torch.device | str = "cpu") -> LogSNRDiffusion:
        return LogSNRDiffusion(config.process)

    def null_label(self, config: RunConfig) -> int:
        return config.process.num_labels

    def likelihood_conditions(self, config: RunConfig, labels: torch.Tensor) -> list[tuple[str, torch.Tensor | None]]:
        """log p(x | y) with each image's own digit, and log p(x) with the null label."""
        return [("true", labels), ("null", torch.full_like(labels, self.null_label(config)))]

    def preview_rows(self) -> dict[int, str]:
        """F12: the first sample of each digit (the preview holds PREVIEW_PER_DIGIT of each, digit by digit)."""
        return {PREVIEW_PER_DIGIT * d: f"label {d}" for d in range(10)}

    def preview_labels(self, device: torch.device) -> torch.Tensor:
        return labels_per_digit(PREVIEW_PER_DIGIT, device)  # (20,) 0, 0, 1, 1, ...

    def evaluation_labels(self, n: int, device: torch.device) -> torch.Tensor:
        return conditional_labels(n, device)

    def sweep(self, trained: TrainedModel, request: EvaluationRequest, classifier, reference: Reference,
              metrics: RunMetrics) -> RunMetrics:
        """MNIST-FD and class accuracy at each weight of ``request.guidance_sweep``."""
        if not request.guidance_sweep:
            return metrics
        n = request.sweep_samples or request.n_samples
        points = []
        for w in request.guidance_sweep:
            with long_step(f"guidance sweep, w = {w:g}", n, request.progress):
                points.append(SweepPoint.of(self.sample_quality(
                    trained, classifier, reference, n, request.seed,
                    replace(request.settings, guidance=w), request.progress, detail=False)))
        return replace(metrics, guidance_sweep=tuple(points))

    def render_figures(self, trained: TrainedModel, data_dir: str | os.PathLike | None) -> list[Path]:
        from mnistgen.figures import diffusion

        metrics = read_metrics(trained.run)
        return (diffusion.render_cfg(self.draw(trained), trained.run, trained.device, self.sweep_weights,
                                     metrics.guidance_sweep, self.preview_rows())
                + diffusion.render_steps(trained.run.figures / STEPS_FIGURE, metrics.steps_sweep))
