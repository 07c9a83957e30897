"""Atomic checkpoint files: write to a temporary file, fsync, then rename over the target."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from mnistgen.errors import UserError

FORMAT_VERSION = 2  # 2: per-rank generator and RNG states


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    write_atomic(path, buffer.getvalue())


def load_checkpoint(path: Path, kind: str | None = None, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` to the CPU, checking its format and model kind.

    Everything lands on the CPU whatever device wrote it: RNG states must be CPU tensors, and the
    model, EMA and optimizer copy their tensors to their own device when they load them.
    ``mmap=True`` maps the file instead of reading it, so tensors never touched (Adam's moments
    when only weights are wanted) are never read."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file fails in many ways
        raise UserError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise UserError(f"{path} is not an mnistgen checkpoint")
    if state["format_version"] > FORMAT_VERSION:
        raise UserError(f"{path} has format version {state['format_version']}; this mnistgen reads <= {FORMAT_VERSION}")
    found = state.get("config", {}).get("kind")
    if kind is not None and found != kind:
        raise UserError(f"{path} holds a {found!r} model, not a {kind!r} model")
    return state
