"""The layout of a run directory: config, history, checkpoints, per-epoch samples, figures, metrics."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from mnistgen.config import RunConfig
from mnistgen.errors import UserError
from mnistgen.figures.grids import save_grid
from mnistgen.training.checkpoint import (completed_epochs, describe_error, remove_stale_temp_files, write_atomic,
                                          write_json)


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
    lock_file = property(lambda self: self.root / "train.lock")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold ``train.lock`` (host and PID of its owner) while training; a second trainer is refused.
        A lock left by a process that is gone (killed) is taken over."""
        self.root.mkdir(parents=True, exist_ok=True)
        me = f"{socket.gethostname()} {os.getpid()}"
        while True:
            try:
                fd = os.open(self.lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                owner = self.lock_file.read_text().strip() if self.lock_file.is_file() else ""
                being_written = not owner and time.time() - self.lock_file.stat().st_mtime < 5
                if being_written or not _stale(owner):
                    raise UserError(f"{self.root} is being trained by process {owner or '?'} "
                                    f"(lock {self.lock_file}); wait for it to end, or delete the lock if it is dead")
                self.lock_file.unlink(missing_ok=True)
        with os.fdopen(fd, "w") as f:
            f.write(me + "\n")
        try:
            yield
        finally:
            if self.lock_file.is_file() and self.lock_file.read_text().strip() == me:
                self.lock_file.unlink()

    def remove_stale_temp_files(self) -> list[Path]:
        """Temporary files of writes a kill interrupted (holding the lock, nothing else is writing)."""
        return [p for folder in (self.root, self.checkpoints, self.samples) for p in remove_stale_temp_files(folder)]

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch_{epoch:03d}.pt"

    def newest_checkpoint(self) -> Path | None:
        """The most advanced checkpoint: ``last.pt``, or the newest ``epoch_NNN.pt`` when a kill fell
        between writing it and writing ``last.pt`` (it is then ahead). None when there is none."""
        epochs = sorted(self.checkpoints.glob("epoch_[0-9][0-9][0-9].pt"))
        if not self.last_checkpoint.is_file():
            return epochs[-1] if epochs else None
        if epochs and int(epochs[-1].stem.split("_")[1]) > completed_epochs(self.last_checkpoint)[0]:
            return epochs[-1]
        return self.last_checkpoint

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
            data = json.loads(self.config.read_text())
            if not isinstance(data, dict):
                raise TypeError(f"expected a JSON object, found {type(data).__name__}")
            return RunConfig.from_dict(data)
        except UserError as e:
            raise UserError(f"{self.config}: {e}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError, AttributeError, ValueError) as e:
            raise UserError(f"{self.config} is unreadable ({describe_error(e)}); restore it or start a new run") from None

    def has_checkpoint(self) -> bool:
        return self.last_checkpoint.is_file() or any(self.checkpoints.glob("epoch_[0-9][0-9][0-9].pt"))

    def read_metrics(self) -> dict:
        return json.loads(self.metrics.read_text()) if self.metrics.is_file() else {}

    def update_metrics(self, **values) -> dict:
        """Merge ``values`` into metrics.json (atomically) and return the whole record."""
        metrics = {**self.read_metrics(), **values}
        write_json(self.metrics, metrics)
        return metrics


def _stale(owner: str) -> bool:
    """A lock is stale when its owner is a process of this host that no longer exists."""
    host, _, pid = owner.rpartition(" ")
    if host != socket.gethostname() or not pid.isdigit():
        return host == "" and not pid.isdigit()  # unreadable lock: stale; another host's: not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
