"""Matplotlib for files, not screens: the Agg backend is chosen here, once, for every figure module,
with the two helpers they share (an image grid on an axis, and an atomically written PNG)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mnistgen.files import write_atomic  # noqa: E402
from mnistgen.images import grid_image  # noqa: E402

__all__ = ["plt", "save_figure", "show_images"]


def show_images(ax, images: torch.Tensor, nrow: int, title: str = "") -> None:
    """Draw images (N, 1, H, W) in [0, 1] on ``ax`` as a grid of ``nrow`` per row, without ticks."""
    ax.imshow(grid_image(images, nrow).permute(1, 2, 0).numpy())
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def save_figure(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG (120 dpi, tight) through an atomic replace, and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    write_atomic(Path(path), buffer.getvalue())
    return Path(path)
