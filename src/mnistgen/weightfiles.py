"""Model weights for sharing: safetensors files and the SHA-256 manifest of a model folder.

A safetensors file holds tensors and a header of text, and nothing that runs when it is read (the
format Hugging Face adopted for this reason), so the shipped models, ``mnistgen export``'s output
and the bundled judge are stored this way. The run's config travels as JSON text in the header's
metadata, next to the name of the format; it is parsed and checked like any config.json.

``MANIFEST.json`` lists the SHA-256 of every file of an exported model folder; loading checks the
files it reads against it, so a changed byte is named in one line before anything is built.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors

from mnistgen.errors import UserError
from mnistgen.files import sha256_file, write_atomic, write_json

WEIGHTS_NAME = "model.safetensors"  # an exported model folder's weights
MANIFEST_NAME = "MANIFEST.json"
FORMAT = "mnistgen-weights-1"  # the metadata's "format"
MANIFEST_FORMAT = "mnistgen-manifest-1"


@dataclass(frozen=True)
class WeightFile:
    """A safetensors file read back: its tensors (on the CPU) and the run config from its metadata."""

    tensors: dict[str, torch.Tensor]
    config: dict


def save_weights(path: Path, tensors: dict[str, torch.Tensor], config: dict) -> None:
    """Write ``tensors`` (contiguous CPU copies) as safetensors, with ``config`` as JSON in the metadata."""
    metadata = {"format": FORMAT, "config": json.dumps(config, sort_keys=True)}
    data = save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata)
    write_atomic(Path(path), data)


def read_weights(path: Path, kind: str | None = None) -> WeightFile:
    """A safetensors file written by :func:`save_weights` (of a ``kind`` model, when given); anything
    else is refused in one line. Its metadata is only ever parsed as JSON text."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights {path} not found")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, ValueError, OSError) as e:
        raise UserError(f"cannot read weights {path}: {' '.join(str(e).split())[:200]}") from None
    if metadata.get("format") != FORMAT:
        raise UserError(f"{path} is not an mnistgen weights file (its metadata has no format {FORMAT!r})")
    try:
        config = json.loads(metadata["config"])
        if not isinstance(config, dict):
            raise TypeError(f"expected a JSON object, found {type(config).__name__}")
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} has no readable config in its metadata ({type(e).__name__})") from None
    if kind is not None and config.get("kind") != kind:
        raise UserError(f"{path} holds a {config.get('kind')!r} model, not a {kind!r} model")
    return WeightFile(tensors, config)


# -- the manifest ------------------------------------------------------------------------------

def write_manifest(folder: Path, names: list[str]) -> Path:
    """``folder/MANIFEST.json``: the SHA-256 of each file ``names`` lists (paths relative to ``folder``)."""
    digests = {name: sha256_file(Path(folder) / name) for name in sorted(names)}
    path = Path(folder) / MANIFEST_NAME
    write_json(path, {"format": MANIFEST_FORMAT, "sha256": digests})
    return path


def read_manifest(folder: Path) -> dict[str, str]:
    """{relative path: sha256} from ``folder/MANIFEST.json``; every path must stay inside ``folder``."""
    path = Path(folder) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
        digests = data["sha256"]
        if data.get("format") != MANIFEST_FORMAT or not isinstance(digests, dict):
            raise ValueError(f"not a {MANIFEST_FORMAT} manifest")
    except FileNotFoundError:
        raise UserError(f"{path} not found; an exported model folder lists its files' SHA-256 there") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is unreadable ({type(e).__name__}: {e})") from None
    for name, digest in digests.items():
        if not _inside(name) or not isinstance(digest, str) or len(digest) != 64:
            raise UserError(f"{path} lists {name!r}, which is not a file of this folder with a SHA-256")
    return digests


def _inside(name: object) -> bool:
    """A relative path with no '..', no absolute root and no backslash (it cannot leave its folder)."""
    if not isinstance(name, str) or not name or "\\" in name:
        return False
    relative = PurePosixPath(name)
    return not relative.is_absolute() and ".." not in relative.parts


def verify_manifest(folder: Path, names: list[str]) -> None:
    """Check that each of ``names`` is listed in the folder's manifest, is a regular file and has the
    listed SHA-256; the first that is not is named in one line."""
    digests = read_manifest(folder)
    for name in names:
        path = Path(folder) / name
        if name not in digests:
            raise UserError(f"{path} is not listed in {Path(folder) / MANIFEST_NAME}; the folder was changed")
        if path.is_symlink() or not path.is_file():
            raise UserError(f"{path} is missing or not a regular file; the folder was changed")
        if sha256_file(path) != digests[name]:
            raise UserError(f"{path} does not match its SHA-256 in {MANIFEST_NAME}: the file was changed or "
                            f"damaged; restore it (reinstall mnistgen, or export the model again)")
