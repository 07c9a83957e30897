"""Where runs live and which settings apply when none are named: the pretrained models' folder,
the device's default preset, the default run directories, a resumed run's own settings, and the
writable copy that evaluating or drawing a read-only pretrained model makes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import torch

from mnistgen import kinds
from mnistgen.config import PRESETS, RunConfig, apply_overrides, preset
from mnistgen.errors import UserError
from mnistgen.files import check_writable_dir, fresh_dir
from mnistgen.runs import check_resume
from mnistgen.training.device import default_preset
from mnistgen.storage.rundir import RunDir
from mnistgen.weightfiles import MANIFEST_NAME

PRETRAINED = "pretrained:"
PRETRAINED_DIR = Path(__file__).with_name("pretrained")
Log = Callable[[str], None] | None


def pretrained_names() -> list[str]:
    """The pretrained models shipped in the package (``pretrained:NAME``)."""
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / "config.json").is_file()) \
        if PRETRAINED_DIR.is_dir() else []


def run_path(path_or_name: str | os.PathLike) -> Path:
    """A run directory, or the packaged run of ``pretrained:NAME``."""
    text = str(path_or_name)
    if not text.startswith(PRETRAINED):
        return Path(path_or_name)
    name = text.removeprefix(PRETRAINED)
    if name not in pretrained_names():
        valid = ", ".join(PRETRAINED + n for n in pretrained_names()) or "none are installed"
        raise UserError(f"no pretrained model {text!r}; valid: {valid}")
    return PRETRAINED_DIR / name


def is_pretrained(path_or_name: str | os.PathLike) -> bool:
    return str(path_or_name).startswith(PRETRAINED)


def say(log: Log, text: str) -> None:
    if log is not None:
        log(text)


def preset_for(requested: str | None, device: torch.device, log: Log = print) -> str:
    """The named preset, or the device's default (with a line saying which and why)."""
    if requested is not None:
        return requested
    choice = default_preset(device)
    say(log, f"mnistgen: no --preset given: using {choice.name!r} because {choice.reason}")
    return choice.name


def existing_or_default(candidates: list[Path], device: torch.device, default_for) -> Path:
    """The device's default run directory, unless it does not exist and exactly one other candidate
    does (a run started under another default, e.g. on the CPU before a GPU was attached)."""
    default = default_for(default_preset(device).name)
    started = [c for c in candidates if c.is_dir() and any(RunDir(p).has_checkpoint() for p in (c, *c.iterdir()))]
    return started[0] if default not in started and len(started) == 1 else default


def saved_config(out: Path | None) -> RunConfig | None:
    """The config.json of the run at ``out`` (None when there is none to read)."""
    if out is None or not (Path(out) / "config.json").is_file():
        return None
    return RunDir(Path(out)).read_config()


def train_config(kind: str, preset_name: str | None, out: Path | None, overrides: dict | None, resume: bool,
                 device: torch.device, log: Log = print) -> tuple[RunConfig, Path]:
    """The settings and run directory of a ``train`` call: a preset with overrides, or with ``resume``
    and no preset the run's own settings (with the overrides ``check_resume`` allows)."""
    kinds.get(kind)
    overrides = overrides or {}
    if resume and preset_name is None and out is None:
        out = existing_or_default([Path("runs") / f"{kind}-{p}" for p in PRESETS[kind]], device,
                                   lambda p: Path("runs") / f"{kind}-{p}")
    saved = saved_config(out) if resume and preset_name is None else None
    if saved is not None:  # the run's own settings, with the overrides given (check_resume judges them)
        if saved.kind != kind:
            raise UserError(f"{out} holds a {saved.kind!r} run, not {kind!r}")
        config = apply_overrides(saved, overrides)
        check_resume(RunDir(Path(out)), config)  # refused before a word about resuming
        say(log, f"mnistgen: resuming {out} with its own settings (preset {saved.preset!r})")
    else:
        config = apply_overrides(preset(kind, preset_for(preset_name, device, log)), overrides)
    return config, Path(out) if out is not None else Path("runs") / f"{config.kind}-{config.preset}"


def writable_copy(run: str | os.PathLike, out: str | os.PathLike | None) -> Path:
    """A run directory that evaluation and figures may write into: the run itself, or for a
    pretrained model a copy of it in ``out``, which must be new or empty (or an earlier copy of the
    same model, whose results are kept)."""
    if not is_pretrained(run):
        if out is not None and Path(out) != Path(run):
            raise UserError("--out applies to pretrained models; a run directory keeps its own results")
        return Path(run)
    if out is None:
        raise UserError(f"{run} is read-only; pass --out DIR to evaluate or draw it there")
    source, target = run_path(run), Path(out)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise UserError(f"--out {target} is a link or a file; give a new or empty directory")
    check_writable_dir(target, "--out")
    if target.is_dir() and any(target.iterdir()):
        _check_earlier_copy(source, target, run)
    else:
        _copy_into_place(source, target)
    return target


def _check_earlier_copy(source: Path, target: Path, run) -> None:
    """A non-empty ``--out`` is accepted only as an earlier copy of the same model, with real folders."""
    saved = saved_config(target) if (target / MANIFEST_NAME).is_file() else None
    if saved is None or saved.to_dict() != RunDir(source).read_config().to_dict():
        raise UserError(f"--out {target} is not empty and holds no copy of {run}; give a new or empty directory")
    RunDir(target).check_no_links()


def _copy_into_place(source: Path, target: Path) -> None:
    """Copy ``source`` into a fresh folder beside ``target`` and rename it over ``target`` (new or
    empty), so nothing already at ``target`` (a planted link, say) is ever written through."""
    staging = fresh_dir(target, ".copy")
    try:
        shutil.copytree(source, staging / "run", symlinks=True)
        os.replace(staging / "run", target)
    except OSError as e:  # --out was filled meanwhile, or the disk is full
        raise UserError(f"could not copy {source} into --out {target} ({e.strerror or e}); nothing was "
                        f"written there") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
