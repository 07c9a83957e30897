"""Checkpoint files: torch state written atomically (``files.write_atomic``), read back onto the CPU
with its format and model kind checked.

A checkpoint may come from someone else, so it is never unpickled: every load is
``torch.load(weights_only=True)``, which builds tensors, containers and plain values and nothing
else. Format 2 stored NumPy's RNG state as an array; such a file loads with exactly NumPy's array
types allowed (:data:`FORMAT2_GLOBALS`). A file that needs any other global (an object whose
``__reduce__`` calls ``exec``, say) is refused in one line naming it, before anything is built.
"""

from __future__ import annotations

import importlib
import io
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from mnistgen.errors import UserError
from mnistgen.files import write_atomic

FORMAT_VERSION = 3  # 2: per-rank generator and RNG states; 3: NumPy's RNG state as a tensor and plain values

# The globals a format-2 checkpoint needs for NumPy's RNG state (an ndarray of uint32), by NumPy 2 and 1
# names; with numpy.dtype comes the uint32 dtype's own class.
FORMAT2_GLOBALS = ("numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct", "numpy.ndarray",
                   "numpy.dtype")


# How torch's weights-only unpickler words the refusal of a global, a class or a call (not of a bad byte).
REFUSED_OBJECT = ("Unsupported global", "Can only build", "unrecognized function", "not an allowed global")


class UnsafeFile(UserError):
    """A file that would run code or build arbitrary objects if it were unpickled: refused, never
    treated as merely damaged (no fallback to another file)."""


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
    zipped = zipfile.is_zipfile(path)  # torch's format; the legacy one (or a bare pickle) is not scanned
    allowed = _allowed_globals(path) if zipped else []
    try:
        with torch.serialization.safe_globals(allowed):
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipped)
    except pickle.UnpicklingError as e:
        raise _refusal(path, e) from None
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


def _refusal(path: Path, e: pickle.UnpicklingError) -> UserError:
    """The weights-only unpickler's refusal as one line: an object it would not build is a payload
    (:class:`UnsafeFile`); a bad opcode or a cut file is damage."""
    reason = " ".join(str(e).split("WeightsUnpickler error:")[-1].split())
    if not any(sign in reason for sign in REFUSED_OBJECT):
        return UserError(f"cannot read checkpoint {path}: UnpicklingError: {reason[:200]}")
    return UnsafeFile(f"{path} is refused: loading it would need more than tensors and plain values "
                      f"({reason[:200]}); nothing was loaded")


def _allowed_globals(path: Path) -> list:
    """The globals ``path`` needs, if all are NumPy's array types of format 2 (resolved to objects for
    ``torch.serialization.safe_globals``); any other global refuses the file with its name."""
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign zip file
        raise UserError(f"cannot read checkpoint {path}: {type(e).__name__}: {' '.join(str(e).split())[:200]}") from None
    foreign = [name for name in needed if name not in FORMAT2_GLOBALS]
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise UnsafeFile(f"{path} is refused: opening it would call {foreign[0]}{more} (only tensors and plain "
                         f"values are loaded, never code); nothing was loaded")
    allowed = [_resolve(name, path) for name in needed]
    if "numpy.dtype" in needed:  # unpickling the key's dtype also builds its class (not named by the scan)
        allowed.append(type(_resolve("numpy.dtype", path)("uint32")))  # numpy.dtype names itself: no pair
    return allowed


def _resolve(name: str, path: Path):
    """The object a pickle names ``module.attribute``, paired with that name for ``safe_globals`` (a
    NumPy 1 file names ``numpy.core...``, which NumPy 2 provides under ``numpy._core``)."""
    module, _, attribute = name.rpartition(".")
    try:
        with warnings.catch_warnings():  # NumPy 2 warns that numpy.core is deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            found = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError):
        raise UnsafeFile(f"{path} needs {name}, which this NumPy does not have; nothing was loaded") from None
    return (found, name) if f"{found.__module__}.{found.__qualname__}" != name else found
