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


def save_animation(frames: list[torch.Tensor], path: Path, nrow: int | None = None, frame_ms: int = 60,
                   hold_ms: int = 1500) -> None:
    """An animated GIF (Pillow), one grid per frame; each frame (N, 1, H, W) in [0, 1]. The last
    frame is held for ``hold_ms`` before the loop starts again."""
    images = [Image.fromarray(grid_image(f, nrow)[0].mul(255).round().byte().numpy(), mode="L") for f in frames]
    buffer = io.BytesIO()
    durations = [frame_ms] * (len(images) - 1) + [hold_ms]
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    write_atomic(Path(path), buffer.getvalue())
