"""Matplotlib for files, not screens: figures are built as ``matplotlib.figure.Figure`` objects, not
through pyplot, so drawing one needs no backend and leaves the one a user (or a notebook) chose
alone. Also the two helpers every figure module shares: an image grid on an axis, and an
atomically written PNG."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from matplotlib.figure import Figure

from mnistgen.files import write_atomic
from mnistgen.images import grid_image

__all__ = ["save_figure", "show_images", "subplots"]


def subplots(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] | None = None, **kwargs):
    """A new figure and its axes, as ``pyplot.subplots`` makes them, outside pyplot's figure manager."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def show_images(ax, images: torch.Tensor, nrow: int, title: str = "") -> None:
    """Draw images (N, 1, H, W) in [0, 1] on ``ax`` as a grid of ``nrow`` per row, without ticks."""
    ax.imshow(grid_image(images, nrow).permute(1, 2, 0).numpy())
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG (120 dpi, tight) through an atomic replace."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    write_atomic(Path(path), buffer.getvalue())
    return Path(path)
