"""The MNIST classifier that judges every generative model (MNIST-FD features, class accuracy)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from mnistgen.config import RunConfig
from mnistgen.evaluation.fd import judge
from mnistgen.evaluation.metrics import export_classifier
from mnistgen.evaluation.results import RunMetrics
from mnistgen.kinds.base import EvaluationRequest, ModelKind, TrainedModel
from mnistgen.models.classifier import Classifier, ClassifierObjective
from mnistgen.training.trainer import Preview


class ClassifierKind(ModelKind):
    name = "classifier"
    title = "Classifier"
    long_title = "MNIST classifier"
    generative = False
    data_scale = "unit"

    def build_model(self, config: RunConfig) -> nn.Module:
        return Classifier(config.model)

    def build_objective(self, config: RunConfig, device: torch.device | str = "cpu") -> ClassifierObjective:
        return ClassifierObjective()

    def preview(self, config: RunConfig, process=None) -> Preview | None:
        return None  # nothing to draw

    def own_metrics(self, trained: TrainedModel, request: EvaluationRequest, data_dir, device,
                    metrics: RunMetrics) -> RunMetrics:
        test = self.load_data(trained.config, "test", data_dir, device)
        predictions = judge(trained.model, test.x).predictions
        return replace(metrics, test_accuracy=(predictions == test.y.cpu()).float().mean().item())

    def export(self, trained: TrainedModel) -> list[Path]:
        """RUN/classifier.safetensors: the compact judge weights that ``evaluate --classifier`` takes."""
        return [export_classifier(trained.config, trained.model, trained.run.root / "classifier.safetensors")]
