"""Files, written so that a crash never leaves half of one: atomic replacement, JSON, and the checks
of an output folder (a file in the way, a read-only place, too little disk) made before any work.

The bottom layer of mnistgen: it imports nothing else of the package but its errors.
"""

from __future__ import annotations

import dataclasses

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mnistgen.errors import UserError

MIN_FREE_BYTES = 64 * 2**20  # refuse to start a run on a disk with less free space than this


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


class JsonRecord:
    """Mixin for a frozen dataclass stored as flat JSON fields: ``to_json`` leaves out the fields that
    are None, ``from_json`` reads this record's fields out of a (possibly larger) object, and fields a
    file lacks take their defaults (a missing required field is a TypeError)."""

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, d: dict):
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})
