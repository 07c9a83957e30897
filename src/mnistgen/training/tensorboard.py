"""TensorBoard logs of a run (``train.tensorboard=true``): ``tensorboard --logdir runs/``.

The trainer reports per-step scalars (every ``train.log_every`` steps: the batch's loss, the
learning rate, images/s, the gradient norm and, under fp16, the loss scale) and per-epoch ones
(the history.json record) with the epoch's preview grid; ``evaluate`` adds the run's config as
hyperparameters with its final metrics. The x axis is the optimizer step throughout.

A resumed run appends to the same folder: the writer's ``purge_step`` tells TensorBoard to drop
whatever an interrupted process logged after the checkpoint it resumes from, so every tag's steps
increase once read back. Only the process that writes the run directory (rank 0) logs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from mnistgen.errors import UserError
from mnistgen.images import grid_image

INSTALL = "pip install 'mnistgen[tensorboard]' (or pip install tensorboard)"


def tensorboard_installed() -> bool:
    """Whether the tensorboard package and ``torch.utils.tensorboard``, which writes through it, import."""
    try:
        import tensorboard  # noqa: F401
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def require_tensorboard() -> None:
    """Refuse, in one line saying how to install it, when the tensorboard package is missing."""
    if not tensorboard_installed():
        raise UserError(f"train.tensorboard=true needs the tensorboard package; install it with {INSTALL}")


class TensorBoardLog:
    """Scalars and images for one run's ``tb/`` folder; the writer opens at :meth:`start`. A failed
    write (a full disk) is said once on stderr and ends the logging, never the training: the log
    only records the run."""

    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self.writer = None

    def start(self, step: int) -> None:
        """Open the event file, purging whatever a killed process logged after ``step`` (the
        checkpoint resumed from; 0 for a new run, which drops an earlier failed attempt's events)."""
        from torch.utils.tensorboard import SummaryWriter

        try:
            self.writer = SummaryWriter(str(self.log_dir), purge_step=step + 1)
        except OSError as e:
            self._stop(e)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """One point per tag at optimizer step ``step``."""
        self._write(lambda writer: [writer.add_scalar(tag, value, step) for tag, value in values.items()])

    def images(self, step: int, tag: str, images: torch.Tensor, nrow: int | None = None) -> None:
        """A grid of images (N, 1, H, W) in [0, 1]."""
        self._write(lambda writer: writer.add_image(tag, grid_image(images, nrow), step))

    def close(self) -> None:
        """Flush and close the event file."""
        self._write(lambda writer: writer.close())
        self.writer = None

    def _write(self, write) -> None:
        if self.writer is None:  # not started, or stopped by a failed write
            return
        try:
            write(self.writer)
        except OSError as e:
            self._stop(e)

    def _stop(self, e: OSError) -> None:
        self.writer = None
        print(f"mnistgen: TensorBoard logging into {self.log_dir} stopped ({e.strerror or e}); training goes on",
              file=sys.stderr)


def write_hparams(log_dir: Path, config: dict[str, object], metrics: dict[str, float], step: int) -> None:
    """The run's flattened config (``section.field``) as hyperparameters, with its final metrics at
    the run's last optimizer ``step``, in ``log_dir`` itself (so TensorBoard shows them beside the
    run's scalars). A failed write is one line on stderr: metrics.json already holds the numbers."""
    from torch.utils.tensorboard import SummaryWriter

    values = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in config.items()}
    try:
        with SummaryWriter(str(log_dir)) as writer:
            writer.add_hparams(values, {f"metrics/{k}": v for k, v in metrics.items()}, run_name=".",
                               global_step=step)
    except OSError as e:
        print(f"mnistgen: could not add the metrics to TensorBoard in {log_dir} ({e.strerror or e})", file=sys.stderr)
