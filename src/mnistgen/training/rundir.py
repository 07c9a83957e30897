"""The layout of a run directory: config, history, checkpoints, per-epoch samples, figures, metrics."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mnistgen.config import RunConfig
from mnistgen.errors import UserError
from mnistgen.figures.grids import save_grid
from mnistgen.training.checkpoint import write_atomic, write_json


@dataclass(frozen=True)
class RunDir:
    root: Path

    config = property(lambda self: self.root / "config.json")
    history = property(lambda self: self.root / "history.json")
    metrics = property(lambda self: self.root / "metrics.json")
    checkpoints = property(lambda self: self.root / "checkpoints")
    samples = property(lambda self: self.root / "samples")
    figures = property(lambda self: self.root / "figures")
    last_checkpoint = property(lambda self: self.checkpoints / "last.pt")

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch_{epoch:03d}.pt"

    def epoch_samples(self, epoch: int) -> Path:
        return self.samples / f"epoch_{epoch:03d}.npz"

    def sample_epochs(self) -> list[int]:
        """Epochs (1-based) that have a saved sample grid."""
        return sorted(int(p.stem.split("_")[1]) for p in self.samples.glob("epoch_*.npz"))

    def save_epoch_samples(self, epoch: int, images: torch.Tensor, nrow: int | None = None) -> None:
        """Keep the preview images of one epoch as .npz (for figures) and .png (to look at)."""
        buffer = io.BytesIO()
        np.savez_compressed(buffer, images=images.float().cpu().numpy())
        write_atomic(self.epoch_samples(epoch), buffer.getvalue())
        save_grid(images, self.epoch_samples(epoch).with_suffix(".png"), nrow)

    def load_epoch_samples(self, epoch: int) -> torch.Tensor:
        with np.load(self.epoch_samples(epoch)) as f:
            return torch.from_numpy(f["images"])

    def write_config(self, cfg: RunConfig) -> None:
        write_json(self.config, cfg.to_dict())

    def read_config(self) -> RunConfig:
        if not self.config.is_file():
            raise UserError(f"{self.root} is not a run directory (no config.json)")
        try:
            return RunConfig.from_dict(json.loads(self.config.read_text()))
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            raise UserError(f"{self.config} is unreadable: {e}") from None

    def read_metrics(self) -> dict:
        return json.loads(self.metrics.read_text()) if self.metrics.is_file() else {}

    def update_metrics(self, **values) -> dict:
        """Merge ``values`` into metrics.json (atomically) and return the whole record."""
        metrics = {**self.read_metrics(), **values}
        write_json(self.metrics, metrics)
        return metrics
