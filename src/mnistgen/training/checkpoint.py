"""Checkpoint files: torch state written atomically (``files.write_atomic``), read back onto the CPU
with its format and model kind checked."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from mnistgen.errors import UserError
from mnistgen.files import write_atomic

FORMAT_VERSION = 2  # 2: per-rank generator and RNG states


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    write_atomic(path, buffer.getvalue())


def describe_error(e: BaseException) -> str:
    """An exception as one short line (torch's state-dict errors span many lines)."""
    if isinstance(e, KeyError):
        return f"missing entry {e.args[0]!r}"
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


def load_weights(module: torch.nn.Module, weights: Any, path: Path) -> None:
    """``module.load_state_dict(weights)``, with a mismatch (shapes, names, types) as one line naming ``path``."""
    try:
        module.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError, AttributeError, ValueError) as e:
        raise UserError(f"{path} does not fit its config.json ({describe_error(e)})") from None


def completed_epochs(path: Path) -> tuple[int, int]:
    """(epochs completed, batches into the next one) of a trainer checkpoint, reading only that."""
    state = load_checkpoint(path, mmap=True)
    try:
        return int(state["epoch"]), int(state["batch"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path} has no valid epoch / batch counters; it is damaged") from None


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
    if not isinstance(state["format_version"], int):
        raise UserError(f"{path} has a damaged format version ({state['format_version']!r})")
    if state["format_version"] > FORMAT_VERSION:
        raise UserError(f"{path} has format version {state['format_version']}; this mnistgen reads <= {FORMAT_VERSION}")
    config = state.get("config")
    found = config.get("kind") if isinstance(config, dict) else None
    if kind is not None and found != kind:
        raise UserError(f"{path} holds a {found!r} model, not a {kind!r} model")
    return state
