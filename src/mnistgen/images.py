"""Image grids and PNG files (torchvision's make_grid, written atomically), and the images and masks a
user gives to an edit (read without unpickling, checked); below figures and training."""

from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from mnistgen.errors import UserError
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


# -- images and masks given by a user (untrusted files) ----------------------------------------------
MASKS = ("lower", "upper", "left", "right")  # the half each named mask hides (the model fills it in)


def named_mask(name: str, size: int = 28) -> torch.Tensor:
    """(1, 1, size, size) float: 1 where a pixel is known, 0 in the named half the model fills in."""
    if name not in MASKS:
        raise UserError(f"unknown mask {name!r}; valid: {', '.join(MASKS)} or a PNG file")
    mask = torch.ones(1, 1, size, size)
    half = size // 2
    hidden = {"lower": (slice(half, None), slice(None)), "upper": (slice(None, half), slice(None)),
              "left": (slice(None), slice(None, half)), "right": (slice(None), slice(half, None))}[name]
    mask[0, 0][hidden] = 0
    return mask


def paste_known(images: torch.Tensor, mask: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
    """``images`` where ``mask`` is 1 (known), ``filled`` where it is 0: an inpainting's result, known
    pixels exactly as given. Shapes broadcast: (N, 1, H, W) images and fills, mask (1 or N, 1, H, W)."""
    return mask * images + (1 - mask) * filled


def read_images(path: Path, what: str = "--input") -> torch.Tensor:
    """Images from a PNG (one greyscale image, 0-255 -> [0, 1]) or an .npz file (its ``images`` array,
    (N, 1, H, W) or (N, H, W) or (H, W) floats in [0, 1]; read without unpickling): (N, 1, H, W) float32.
    Anything else is refused in one line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist or is not a file")
    if path.suffix.lower() == ".npz":
        x = _npz_images(path, what)
    else:
        try:
            with Image.open(path) as image:  # the header only: a picture of another size is never decoded
                if image.size != (28, 28):
                    raise UserError(f"{what} {path} is {image.width}x{image.height} pixels; a digit is 28x28")
                x = torch.from_numpy(np.asarray(image.convert("L"), dtype=np.float32) / 255.0)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise UserError(f"{what} {path} is neither a PNG / image file nor an .npz file ({e})") from None
    x = x.reshape(-1, 1, *x.shape[-2:]) if x.dim() in (2, 3) else x
    if x.dim() != 4 or x.shape[1] != 1:
        raise UserError(f"{what} {path}: images must be (N, 1, H, W), (N, H, W) or (H, W), got {tuple(x.shape)}")
    check_unit_images(x, f"{what} {path}")
    return x


def _npz_images(path: Path, what: str) -> torch.Tensor:
    try:
        with np.load(path, allow_pickle=False) as f:
            if "images" not in f.files:
                raise UserError(f"{what} {path} holds no 'images' array (it has: {', '.join(f.files) or 'nothing'})")
            array = f["images"]
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"{what} {path} is not a readable .npz file ({e})") from None
    if not np.issubdtype(array.dtype, np.floating):
        raise UserError(f"{what} {path}: 'images' must hold floats in [0, 1], got {array.dtype}")
    return torch.from_numpy(array.astype(np.float32))


def check_unit_images(x: torch.Tensor, what: str, size: int = 28) -> None:
    """Refuse images that are not (N, 1, size, size) finite values in [0, 1]."""
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, size, size):
        raise UserError(f"{what}: images must be (N, 1, {size}, {size}), got {tuple(x.shape)}")
    if x.numel() == 0:
        raise UserError(f"{what}: no images")
    if not bool(torch.isfinite(x).all()) or x.min() < 0 or x.max() > 1:
        raise UserError(f"{what}: pixel values must lie in [0, 1], got [{x.min().item():.3g}, {x.max().item():.3g}]")


def read_mask(name_or_path: str, size: int = 28) -> torch.Tensor:
    """A named mask (:data:`MASKS`) or a PNG file whose white pixels (>= 128) are known and black ones
    filled in: (1, 1, size, size) float in {0, 1}."""
    if name_or_path in MASKS:
        return named_mask(name_or_path, size)
    path = Path(name_or_path)
    if not path.is_file():
        raise UserError(f"--mask {name_or_path!r} is neither a named mask ({', '.join(MASKS)}) nor an existing file")
    mask = read_images(path, "--mask")
    return (mask[:1] >= 0.5).float()


def check_mask(mask: torch.Tensor, n: int, size: int = 28) -> torch.Tensor:
    """A mask (size, size), (1 or n, 1, size, size) of 0 (fill in) and 1 (known) values, checked: neither all
    known nor all hidden for any image. Returns (n, 1, size, size) float32."""
    mask = torch.as_tensor(mask)
    if mask.dim() == 2:
        mask = mask[None, None]
    if mask.dim() != 4 or tuple(mask.shape[1:]) != (1, size, size) or mask.shape[0] not in (1, n):
        raise UserError(f"the mask must be ({size}, {size}) or (1 or {n}, 1, {size}, {size}), got {tuple(mask.shape)}")
    mask = mask.float()
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise UserError("the mask must hold only 0 (fill in) and 1 (known)")
    known = mask.flatten(1).sum(1)
    if bool((known == 0).any()):
        raise UserError("the mask hides every pixel: nothing is known to complete (1 = known, 0 = fill in)")
    if bool((known == size * size).any()):
        raise UserError("the mask hides no pixel: there is nothing to fill in (1 = known, 0 = fill in)")
    return mask.expand(n, 1, size, size).contiguous()
