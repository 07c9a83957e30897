"""MNIST and Fashion-MNIST from the four canonical IDX files, held in memory as tensors.

Where the files come from, in order: ``data_dir`` (``--data-dir``), the ``MNISTGEN_DATA``
environment variable, the copy of MNIST bundled with the package, and finally a download
through torchvision's mirrors into ``~/.cache/mnistgen`` (set ``MNISTGEN_NO_DOWNLOAD=1``
to forbid it). Every file is checked (magic number, shape, length, and for MNIST the
SHA-256 of its decompressed bytes); a bad file raises one :class:`UserError` naming it.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from mnistgen.errors import UserError

BUNDLED_DIR = Path(__file__).with_name("mnist")
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mnistgen"

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SIZES = {"train": 60_000, "test": 10_000}

# SHA-256 of the decompressed MNIST files (the gzip wrappers differ between mirrors).
MNIST_SHA256 = {
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
}
_TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


class Split(NamedTuple):
    images: torch.Tensor  # (N, 28, 28) uint8
    labels: torch.Tensor  # (N,) int64


class TensorData(NamedTuple):
    """A whole split as two tensors on one device: no per-item Python at training time."""

    x: torch.Tensor  # (N, 1, H, W) float
    y: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return self.x.shape[0]


def read_idx(path: Path) -> tuple[np.ndarray, bytes]:
    """Read one IDX file (raw or gzip): the array and its decompressed bytes, header and length checked."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise UserError(f"cannot read {path}: {e}; delete it and put a good copy there") from None
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] not in (1, 3):
        raise UserError(f"{path} is not an IDX file of unsigned bytes (bad magic number); replace it")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(raw) != offset + int(np.prod(shape)):
        raise UserError(f"{path} is truncated or padded: header says shape {shape}, "
                        f"file has {len(raw) - offset} data bytes; replace it")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape), raw


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _has_all(folder: Path) -> bool:
    return all(_find(folder, n) for pair in FILES.values() for n in pair)


def _search_folders(root: Path, dataset: str) -> list[Path]:
    return [root, root / _TORCHVISION_FOLDER[dataset] / "raw"]


def _download(root: Path, dataset: str) -> None:
    """Fetch the files with torchvision into ``root``; any failure becomes one clear error."""
    if os.environ.get("MNISTGEN_NO_DOWNLOAD"):
        raise OSError("downloads are disabled by MNISTGEN_NO_DOWNLOAD")
    from torchvision import datasets

    cls = datasets.MNIST if dataset == "mnist" else datasets.FashionMNIST
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its own chatter
        for train in (True, False):
            cls(root=str(root), train=train, download=True)


def resolve_data_dir(dataset: str = "mnist", data_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding the four IDX files of ``dataset``, downloading them if needed."""
    explicit = data_dir if data_dir is not None else os.environ.get("MNISTGEN_DATA") or None
    if explicit is not None:
        root = Path(explicit).expanduser()
    elif dataset == "mnist" and _has_all(BUNDLED_DIR):
        return BUNDLED_DIR
    else:
        root = CACHE_DIR
    for folder in _search_folders(root, dataset):
        if _has_all(folder):
            return folder
    try:
        _download(root, dataset)
    except Exception as e:  # noqa: BLE001 - any network / disk failure ends the same way
        missing = ", ".join(f"{n}.gz" for pair in FILES.values() for n in pair if _find(root, n) is None)
        reason = " ".join(str(e).split())[:160]
        raise UserError(f"{dataset} files missing in {root}: {missing}; the download failed ({reason}); "
                        f"put the files there (gzipped or not) or pass --data-dir") from None
    for folder in _search_folders(root, dataset):
        if _has_all(folder):
            return folder
    raise UserError(f"download of {dataset} into {root} did not produce the IDX files")


def load_split(split: str, dataset: str = "mnist", data_dir: str | os.PathLike | None = None) -> Split:
    """Load ``split`` ("train" or "test") as uint8 images (N, 28, 28) and int64 labels (N,)."""
    if split not in FILES:
        raise UserError(f"unknown split {split!r}; valid: {', '.join(FILES)}")
    folder = resolve_data_dir(dataset, data_dir)
    arrays = []
    for name, ndim in zip(FILES[split], (3, 1)):
        path = _find(folder, name)
        array, raw = read_idx(path)
        if dataset == "mnist" and hashlib.sha256(raw).hexdigest() != MNIST_SHA256[name]:
            raise UserError(f"{path} does not match the MNIST checksum (corrupt or another dataset); replace it")
        expected = (SIZES[split], 28, 28)[:ndim]
        if array.shape != expected:
            raise UserError(f"{path} has shape {array.shape}, expected {expected}; replace it")
        arrays.append(array)
    images, labels = arrays
    if labels.max() > 9:
        raise UserError(f"{_find(folder, FILES[split][1])} holds labels outside 0-9; replace it")
    return Split(torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))


def to_tensor_data(split: Split, scale: str, resolution: int = 28, device: str | torch.device = "cpu") -> TensorData:
    """Images as floats on ``device``: ``scale="unit"`` gives [0, 1] (VAE, classifier),
    ``"signed"`` gives [-1, 1] (diffusion, DDPM section 3.3); resolution 32 pads 2 background pixels per side."""
    x = split.images.to(device).unsqueeze(1).float().div_(255.0)  # (N, 1, 28, 28)
    background = 0.0
    if scale == "signed":
        x = x.mul_(2.0).sub_(1.0)
        background = -1.0
    elif scale != "unit":
        raise ValueError(f"unknown scale {scale!r}")
    if resolution not in (28, 32):
        raise UserError(f"unsupported resolution {resolution}; valid: 28, 32")
    return TensorData(pad_to(x, resolution, background).contiguous(), split.labels.to(device))


def pad_to(x: torch.Tensor, resolution: int, fill: float) -> torch.Tensor:
    """MNIST's (..., 28, 28) padded with ``fill`` on every side to (..., resolution, resolution) (32 for the
    U-Net); unchanged at 28. The inverse of :func:`native_size`."""
    border = (resolution - x.shape[-1]) // 2
    return F.pad(x, (border,) * 4, value=fill) if border else x


def load(split: str, scale: str, resolution: int = 28, dataset: str = "mnist",
         data_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> TensorData:
    """One call from files to a device-resident :class:`TensorData`."""
    return to_tensor_data(load_split(split, dataset, data_dir), scale, resolution, device)


HOLDOUT_SEED = 20_000  # the held-out validation images are the same for every run and machine


def holdout_mask(n: int, size: int) -> torch.Tensor:
    """(n,) bool on the CPU, True for ``size`` of the n training images chosen by a seeded permutation
    (seed :data:`HOLDOUT_SEED`): a validation set carved from the training split, never trained on."""
    chosen = torch.randperm(n, generator=torch.Generator().manual_seed(HOLDOUT_SEED))[:size]
    return torch.zeros(n, dtype=torch.bool).index_fill_(0, chosen, True)


def labels_per_digit(per_digit: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Class labels 0, 0, ..., 1, 1, ..., 9 with ``per_digit`` of each: (10 * per_digit,), int64.
    The layout of every conditional grid and evaluation (row d holds digit d)."""
    return torch.arange(10, device=device).repeat_interleave(per_digit)


def native_size(x: torch.Tensor) -> torch.Tensor:
    """Images padded to 32x32 for the U-Net back to MNIST's 28x28 (the 2-pixel border dropped);
    28x28 images unchanged. (..., 32, 32) or (..., 28, 28) -> (..., 28, 28)."""
    border = (x.shape[-1] - 28) // 2
    return x[..., border: border + 28, border: border + 28] if border else x
