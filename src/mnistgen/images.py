"""Image grids and PNG files (torchvision's make_grid, written atomically); below figures and training."""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import make_grid

from mnistgen.files import write_atomic


def grid_image(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> torch.Tensor:
    """(N, 1, H, W) in [0, 1] -> (3, H', W') grid with ``nrow`` images per row (default: square)."""
    nrow = nrow or math.ceil(math.sqrt(images.shape[0]))
    return make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=padding, pad_value=1.0)


def save_grid(images: torch.Tensor, path: Path, nrow: int | None = None) -> None:
    grid = grid_image(images, nrow)
    array = grid.mul(255).round().byte().permute(1, 2, 0).numpy()  # (H', W', 3)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    write_atomic(Path(path), buffer.getvalue())
