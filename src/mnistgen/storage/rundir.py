"""The layout of a run directory: config, history, checkpoints, per-epoch samples, figures, metrics."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import socket
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

try:
    import fcntl  # POSIX (Linux, macOS): an advisory lock per open file
except ImportError:  # Windows: runs are not locked
    fcntl = None

import numpy as np
import torch

from mnistgen.config import RunConfig
from mnistgen.errors import UserError
from mnistgen.images import save_grid
from mnistgen.files import JsonRecord, refuse_links, remove_stale_temp_files, write_atomic, write_json
from mnistgen.storage.checkpoint import UnsafeFile, completed_epochs, describe_error


@dataclass(frozen=True)
class EpochRecord(JsonRecord):
    """One line of history.json: what an epoch of training did."""

    epoch: int  # 1-based
    step: int  # optimizer steps so far
    train_loss: float
    val_loss: float
    lr: float
    seconds: float
    images_per_s: float
    compute_dtype: str | None = None  # "float32" or the steps' autocast dtype; None: a run older than this field


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
    tensorboard = property(lambda self: self.root / "tb")
    FOLDERS = ("checkpoints", "samples", "figures", "tb")  # the folders mnistgen writes into

    def check_no_links(self) -> None:
        """Refuse a run directory whose folders are symbolic links (writes would land where they point)."""
        refuse_links(self.root, self.FOLDERS)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold an exclusive lock on ``train.lock`` while training; a second trainer is refused with
        the owner's host and PID. The kernel drops the lock when its process ends, however it ends,
        so a killed run never blocks the next one. The file stays (deleting it would race)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            yield
            return
        with _open_lock_file(self.lock_file) as f:
            if not _try_lock(f, self):
                yield
                return
            f.seek(0)
            f.truncate()
            f.write(f"host {socket.gethostname()} pid {os.getpid()}\n")
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def remove_stale_temp_files(self) -> list[Path]:
        """Temporary files of writes a kill interrupted (holding the lock, nothing else is writing)."""
        return [p for folder in (self.root, self.checkpoints, self.samples) for p in remove_stale_temp_files(folder)]

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch_{epoch:03d}.pt"

    def epoch_checkpoints(self) -> list[tuple[int, Path]]:
        """(epoch, path) of every ``epoch_N.pt``, in epoch order."""
        found = [(int(m.group(1)), p) for p in self.checkpoints.glob("epoch_*.pt")
                 if (m := re.fullmatch(r"epoch_(\d+)\.pt", p.name))]
        return sorted(found)

    def newest_checkpoint(self) -> Path | None:
        """The most advanced checkpoint: ``last.pt``, or the newest ``epoch_N.pt`` when a kill fell
        between writing it and writing ``last.pt`` (it is then ahead) or left ``last.pt`` unreadable.
        None when there is none."""
        epochs = self.epoch_checkpoints()
        newest_epoch = epochs[-1] if epochs else None
        if not self.last_checkpoint.is_file():
            return newest_epoch[1] if newest_epoch else None
        try:
            last_epoch = completed_epochs(self.last_checkpoint)[0]
        except UnsafeFile:
            raise  # a planted payload is not damage: never fall back past it
        except UserError as e:
            if newest_epoch is None:
                raise
            completed_epochs(newest_epoch[1])  # readable itself, or its own error is the one line
            print(f"mnistgen: {e}; using {newest_epoch[1].name} instead", file=sys.stderr)
            return newest_epoch[1]
        return newest_epoch[1] if newest_epoch and newest_epoch[0] > last_epoch else self.last_checkpoint

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

    def write_config(self, config: RunConfig) -> None:
        write_json(self.config, config.to_dict())

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

    def write_history(self, history: list[EpochRecord]) -> None:
        write_json(self.history, [r.to_json() for r in history])

    def read_history(self) -> list[EpochRecord]:
        """history.json's records (none before the first epoch ends)."""
        if not self.history.is_file():
            return []
        return [EpochRecord.from_json(r) for r in json.loads(self.history.read_text())]

    def has_checkpoint(self) -> bool:
        return self.last_checkpoint.is_file() or bool(self.epoch_checkpoints())

    def read_metrics(self) -> dict:
        return json.loads(self.metrics.read_text()) if self.metrics.is_file() else {}

    def write_metrics(self, values: dict) -> None:
        """Replace metrics.json (atomically)."""
        write_json(self.metrics, values)



def _open_lock_file(path: Path):
    """``train.lock`` opened for reading and writing, created if missing, never through a symbolic link
    (O_NOFOLLOW) and only if it is a regular file with no other name (a hard link planted there would
    have its target overwritten with the owner's line)."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UserError(f"{path} is a symbolic link; remove it (mnistgen never writes through a link)") from None
        raise UserError(f"cannot open the lock file {path} ({e.strerror})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        what = "not a regular file" if not stat.S_ISREG(info.st_mode) else "a hard link to another file"
        raise UserError(f"{path} is {what}; remove it (mnistgen writes its owner into the lock file)")
    return os.fdopen(fd, "r+")


def _try_lock(f, run: RunDir) -> bool:
    """Take the exclusive lock (True), refuse when another process holds it, or go on unlocked (False)
    on a file system without locks."""
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        f.seek(0)
        owner = f.read().strip() or "?"
        raise UserError(f"{run.root} is being trained by another process ({owner}, lock {run.lock_file}); "
                        f"wait for it to end") from None
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP):
            raise
        print(f"mnistgen: {run.root}'s file system has no locks ({e.strerror}); training unlocked", file=sys.stderr)
        return False
