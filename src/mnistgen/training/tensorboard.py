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

from pathlib import Path

import torch

from mnistgen.errors import UserError
from mnistgen.images import grid_image

INSTALL = "pip install 'mnistgen[tensorboard]' (or pip install tensorboard)"


def tensorboard_installed() -> bool:
    try:
        import tensorboard  # noqa: F401 - torch.utils.tensorboard needs it
    except ImportError:
        return False
    return True


def require_tensorboard() -> None:
    """Refuse, in one line saying how to install it, when the tensorboard package is missing."""
    if not tensorboard_installed():
        raise UserError(f"train.tensorboard=true needs the tensorboard package; install it with {INSTALL}")


class TensorBoardLog:
    """Scalars and images for one run's ``tb/`` folder; the writer opens at :meth:`start`."""

    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self.writer = None

    def start(self, step: int) -> None:
        """Open the event file; ``step`` > 0 (a resumed run) purges events logged after that step."""
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.log_dir), purge_step=step + 1 if step > 0 else None)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def images(self, step: int, tag: str, images: torch.Tensor, nrow: int | None = None) -> None:
        """A grid of images (N, 1, H, W) in [0, 1]."""
        self.writer.add_image(tag, grid_image(images, nrow), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def write_hparams(log_dir: Path, config: dict[str, object], metrics: dict[str, float]) -> None:
    """The run's flattened config (``section.field``) as hyperparameters, with its final metrics, in
    ``log_dir`` itself (so TensorBoard shows them beside the run's scalars)."""
    from torch.utils.tensorboard import SummaryWriter

    values = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in config.items()}
    with SummaryWriter(str(log_dir)) as writer:
        writer.add_hparams(values, {f"metrics/{k}": v for k, v in metrics.items()}, run_name=".")
