"""Atomic checkpoint files: write to a temporary file, fsync, then rename over the target."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from mnistgen.errors import UserError

MIN_FREE_BYTES = 64 * 2**20  # refuse to start a run on a disk with less free space than this
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


TEMP_SUFFIX = ".tmp"


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file, never half of one.
    A failed write (a full disk) removes its temporary file and re-raises; a killed one leaves
    ``.NAME.PID.tmp``, which :func:`remove_stale_temp_files` clears on the next start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete the temporary files of interrupted atomic writes in ``folder`` (call it holding the run's lock)."""
    stale = sorted(folder.glob(f".*{TEMP_SUFFIX}")) if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def nearest_existing(path: Path) -> Path | None:
    """``path`` or its closest ancestor that exists."""
    return next((p for p in (Path(path), *Path(path).parents) if p.exists()), None)


def free_bytes(path: Path) -> int:
    """Free space on the disk that ``path`` (or the folder it would be created in) lives on."""
    return shutil.disk_usage(nearest_existing(path) or Path.cwd()).free


def check_writable_dir(folder: Path, what: str) -> None:
    """Refuse, with one line, a ``folder`` that is a file, cannot be created or cannot be written.
    Creates nothing that was not there: a missing folder is checked through its nearest existing parent."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} {folder} is a file, not a directory; choose another path")
    existing = nearest_existing(folder)
    if existing is None or not existing.is_dir():
        raise UserError(f"{what} {folder} cannot be created ({existing} is not a directory)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".mnistgen-probe-", suffix=TEMP_SUFFIX, dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{what} {folder} cannot be written ({existing}: {e.strerror})") from None
    try:
        usage = shutil.disk_usage(existing)
    except OSError:
        return
    if usage.free < MIN_FREE_BYTES:
        raise UserError(f"{what} {folder}: only {usage.free // 2**20} MiB free on its disk; "
                        f"at least {MIN_FREE_BYTES // 2**20} MiB are needed")


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


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
