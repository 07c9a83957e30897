"""Files, written so that a crash never leaves half of one: atomic replacement, JSON, and the checks
of an output folder (a file in the way, a read-only place, too little disk) made before any work.

The bottom layer of mnistgen: it imports nothing else of the package but its errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

from mnistgen.errors import UserError

MIN_FREE_BYTES = 64 * 2**20  # refuse to start a run on a disk with less free space than this


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


TEMP_SUFFIX = ".tmp"
_CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _fresh(beside: Path, suffix: str, create) -> Path:
    """``create(.NAME.RANDOM+suffix)`` beside ``beside``, retried on the (unlikely) name already taken.
    ``create`` must fail when the name exists in any form (a planted link included)."""
    for _ in range(100):
        candidate = beside.with_name(f".{beside.name}.{secrets.token_hex(6)}{suffix}")
        try:
            create(candidate)
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {beside}")


@contextlib.contextmanager
def temporary_sibling(path: Path) -> Iterator[tuple[int, Path]]:
    """A new file beside ``path`` under a random name, created exclusively (O_CREAT | O_EXCL, as
    ``tempfile.mkstemp`` does, so a link planted under any name is never followed) with the mode a
    plain ``open`` gives (the umask applies); as (fd, path), removed if the block fails. The name
    is ``.NAME.RANDOM.tmp``, which :func:`remove_stale_temp_files` clears after a kill."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fds: list[int] = []
    tmp = _fresh(path, TEMP_SUFFIX, lambda p: fds.append(os.open(p, _CREATE_NEW, 0o666)))
    try:
        yield fds[0], tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fresh_dir(beside: Path, suffix: str) -> Path:
    """A new, empty folder beside ``beside`` (``.NAME.RANDOM+suffix``), made by ``mkdir`` (which never
    follows a link) with the usual mode: a place to build something that is then renamed into place."""
    beside.parent.mkdir(parents=True, exist_ok=True)
    return _fresh(beside, suffix, lambda p: os.mkdir(p, 0o777))


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write that replaces ``path`` when the block ends, so that a crash leaves
    either the old or the new file, never half of one. The bytes go to a fresh temporary file
    (:func:`temporary_sibling`), which is fsynced and renamed over ``path`` (a symbolic link at
    ``path`` is replaced, never written through). A failed write (a full disk) removes the
    temporary file and re-raises."""
    with temporary_sibling(path) as (fd, tmp):
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (:func:`atomic_file`)."""
    with atomic_file(path) as f:
        f.write(data)


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete the temporary files of interrupted atomic writes in ``folder`` (call it holding the run's lock)."""
    stale = [p for p in sorted(folder.glob(f".*{TEMP_SUFFIX}")) if p.is_symlink() or p.is_file()] \
        if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)  # a link itself, never its target
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


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def refuse_links(root: Path, names: Iterable[str]) -> None:
    """Refuse, with one line, a folder whose entries ``names`` (what mnistgen writes into or copies
    from) include a symbolic link: writes would land, and copies read, wherever the link points."""
    for name in names:
        if (Path(root) / name).is_symlink():
            raise UserError(f"{Path(root) / name} is a symbolic link; mnistgen neither writes through nor copies "
                            f"from links (remove the link, or use another directory)")


_MARKDOWN_SPECIAL = re.compile(r"[\\`*\[\]<>!|&~]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")


def markdown_text(text: object) -> str:
    """``text`` as inert Markdown on one line: each character that can open markup, a link, an image,
    a table cell or HTML is escaped with a backslash (an underscore only where it could open
    emphasis, so that ``FD_inf`` stays readable). For text read from a file someone else wrote."""
    one_line = " ".join(str(text).split())
    return _MARKDOWN_SPECIAL.sub(lambda m: "\\" + m.group(0), one_line)
