"""Which mnistgen made a file: the package version and, in a git checkout of mnistgen, its commit."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=PACKAGE, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit() -> str | None:
    """The commit of the checkout mnistgen runs from; None for an installed copy, including one that
    happens to sit inside some other git repository (its top level must hold this very package)."""
    top = _git("rev-parse", "--show-toplevel")
    if top is None or PACKAGE != (Path(top) / "src" / "mnistgen").resolve():
        return None
    return _git("rev-parse", "HEAD")


def source_version() -> str:
    """e.g. 'mnistgen 0.1.0, commit 1a2b3c4d5e6f (with uncommitted changes)' or 'mnistgen 0.1.0'."""
    try:
        version = metadata.version("mnistgen")
    except metadata.PackageNotFoundError:
        version = "unknown version"
    commit = git_commit()
    if commit is None:
        return f"mnistgen {version}"
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", str(PACKAGE))
    return f"mnistgen {version}, commit {commit[:12]}" + (" (with uncommitted changes)" if dirty else "")
