"""The public Python API: ``import mnistgen``.

    model = mnistgen.load("pretrained:cfg")            # or a run directory
    sevens = model.sample(16, labels=7)                # (16, 1, 28, 28) in [0, 1]
    run = mnistgen.train("ddpm", preset="smoke", out="runs/ddpm-smoke")
    metrics = mnistgen.evaluate(run.path)              # RunMetrics

A facade: the model handle lives in :mod:`mnistgen.model`, the defaults (presets, run directories,
pretrained copies) in :mod:`mnistgen.defaults`, the export in :mod:`mnistgen.export`. The command
line is a thin layer over these functions. Bad arguments raise :class:`mnistgen.errors.UserError`
with a one-line message before any work starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from mnistgen.defaults import (Log, existing_or_default, is_pretrained, preset_for, pretrained_names, run_path,
                               saved_config, say, train_config, writable_copy)
from mnistgen.diffusion.registry import parse_sampler
from mnistgen.diffusion.samplers import SamplerSettings
from mnistgen.errors import UserError
from mnistgen.evaluation.edits import EditRequest
from mnistgen.evaluation.likelihood import LikelihoodRequest
from mnistgen.evaluation.results import RunMetrics
from mnistgen.export import export_pretrained, model_card
from mnistgen.files import check_writable_dir
from mnistgen.kinds import EvaluationRequest
from mnistgen.model import Model, load
from mnistgen.runs import check_request, evaluate_run, render_figures
from mnistgen.runs import train as train_run
from mnistgen.study import MODELS, SETTINGS, run_study
from mnistgen.training import distributed
from mnistgen.training.device import pick_device
from mnistgen.config import RunConfig
from mnistgen.storage.rundir import EpochRecord, RunDir

__all__ = ["Model", "TrainedRun", "draw_figures", "evaluate", "export_pretrained", "is_pretrained", "load",
           "model_card", "preset_for", "pretrained_names", "reproduce", "run_path", "train"]

# -- training, evaluation, figures, the study ----------------------------------------------------

@dataclass(frozen=True)
class TrainedRun:
    """What :func:`train` leaves: the run directory and its history."""

    path: Path
    config: RunConfig
    history: list[EpochRecord]

    def load(self, device: str | torch.device = "auto") -> Model:
        return load(self.path, device)


def train(kind: str, preset: str | None = None, out: str | os.PathLike | None = None, *,
          overrides: dict | None = None, resume: bool = False, device: str | torch.device = "auto",
          data_dir: str | os.PathLike | None = None, progress: bool = True, log: Log = print) -> TrainedRun:
    """Train a ``kind`` model (vae, ddpm, cfg, classifier) with a named preset (default: ``reference``
    on a CUDA GPU, ``cpu`` elsewhere) and ``{"section.field": value}`` overrides into ``out``
    (default ``runs/KIND-PRESET``), or continue the run there with ``resume``. Under ``torchrun``
    every process calls this and trains its shard."""
    chosen = pick_device(device)
    main = distributed.rank() == 0
    config, out = train_config(kind, preset, Path(out) if out is not None else None, overrides, resume, chosen,
                               log if main else None)
    chosen = distributed.setup(chosen)
    try:
        history = train_run(config, out, data_dir, chosen, resume, progress)
    except BaseException:
        distributed.abort()  # no barrier: the other ranks may wait inside a collective
        raise
    distributed.teardown()
    return TrainedRun(out, config, history)


def evaluate(run: str | os.PathLike, *, out: str | os.PathLike | None = None, n: int = 1000, seed: int = 0,
             sampler: str | None = None, steps: int | None = None, eta: float | None = None,
             grid: str | None = None, guidance: float | None = None, guidance_sweep: Sequence[float] | None = None,
             sweep_samples: int | None = None, steps_sweep: Sequence[int] | None = None,
             samplers: Sequence[str | SamplerSettings] | None = None, grid_power: float | None = None,
             iwae_k: int = 500, n_images: int = 10_000, classifier: str | os.PathLike | None = None, edits: int | None = None, edit_pairs: int = 100,
             inversion_steps: int = 100, likelihood: int | bool | None = None, strata: int | None = None,
             ode_tolerance: float | None = None, probes: int | None = None, device: str | torch.device = "auto",
             data_dir: str | os.PathLike | None = None, progress: bool = True) -> RunMetrics:
    """Evaluate a run (or a pretrained model, into ``out``) and write the results as its
    metrics.json: MNIST-FD (with its bootstrap std and FD_inf), KID, precision / recall / density /
    coverage, class histogram and accuracy of ``n`` samples; the VAE's ELBO and IWAE bound (grey-level
    and binarized test images); the CFG model's guidance sweep; the classifier's test accuracy. With
    ``edits``: also the scores of the model's edits of that many test digits (lower half hidden), of
    ``edit_pairs`` interpolations and of DDIM round trips on ``inversion_steps`` levels
    (:class:`~mnistgen.evaluation.edits.EditScores`). With ``likelihood``: also bits per MNIST pixel
    of that many test images (True: 1,000, or all of a run's if fewer), the variational bounds estimated on ``strata`` levels per image (default
    100, or every level of a shorter DDPM) and the
    probability-flow ODE solved to ``ode_tolerance`` with ``probes`` Hutchinson probes
    (:class:`~mnistgen.evaluation.likelihood.LikelihoodScores`). With ``steps_sweep`` (diffusion
    models): also every sample metric, with its spread, and the seconds per 100 samples at each of those
    numbers of steps, for each of ``samplers`` ('NAME', 'NAME:GRID' or 'NAME:GRID:POWER', e.g.
    'dpm++2m-sde:trailing:0.8', or :class:`SamplerSettings`; default: the run's sampler), each on
    ``sweep_samples`` samples (default ``n``) from the same seed."""
    edit_request = EditRequest(edits, edit_pairs, inversion_steps, seed) if edits is not None else None
    given = {k: v for k, v in (("strata", strata), ("ode_tolerance", ode_tolerance), ("probes", probes)) if v is not None}
    wanted = likelihood is not None and likelihood is not False  # 0 is a count, refused by the range check
    if given and not wanted:
        raise UserError(f"{', '.join(given)} need likelihood (a number of test images, or True)")
    fields = {"strata": "strata", "ode_tolerance": "tolerance", "probes": "probes"}  # API name -> request field
    images = None if likelihood is True else likelihood
    like = LikelihoodRequest(images, iwae_k=iwae_k, seed=seed, **{fields[k]: v for k, v in given.items()}) \
        if wanted else None
    request = EvaluationRequest(n, seed, SamplerSettings(sampler, steps, eta, guidance, grid, grid_power), iwae_k,
                                n_images, tuple(guidance_sweep) if guidance_sweep is not None else None, sweep_samples,
                                tuple(steps_sweep) if steps_sweep is not None else None, sweep_settings(samplers),
                                Path(classifier) if classifier is not None else None, progress, edit_request, like)
    if is_pretrained(run):  # refused before the copy into out is made
        check_request(RunDir(run_path(run)).read_config(), request, run)
    return evaluate_run(writable_copy(run, out), pick_device(device), data_dir, request)


def sweep_settings(samplers: Sequence[str | SamplerSettings] | None) -> tuple[SamplerSettings, ...] | None:
    """``samplers`` of a steps sweep as settings; a text that names no sampler is one :class:`UserError` line."""
    if samplers is None:
        return None
    if isinstance(samplers, str):
        samplers = [s for s in samplers.split(",") if s.strip()]
    if not samplers or not all(isinstance(s, (str, SamplerSettings)) for s in samplers):
        raise UserError(f"--samplers takes one or more names such as ddim:time or dpm++2m-sde:trailing:0.8, "
                        f"got {samplers!r}")
    try:
        return tuple(s if isinstance(s, SamplerSettings) else parse_sampler(s) for s in samplers)
    except ValueError as e:
        raise UserError(f"--samplers: {e}") from None


def draw_figures(run: str | os.PathLike, *, out: str | os.PathLike | None = None,
                 device: str | torch.device = "auto", data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Render the study's figures of a run's model (or a pretrained model's, into ``out``) into
    RUN/figures/; returns their paths."""
    return render_figures(writable_copy(run, out), pick_device(device), data_dir)


def reproduce(preset: str | None = None, out: str | os.PathLike | None = None, *,
              device: str | torch.device = "auto", data_dir: str | os.PathLike | None = None,
              progress: bool = True, log: Log = print) -> Path:
    """The whole study: train (or resume) the VAE, DDPM and CFG runs under ``out``, evaluate them,
    draw every figure and write ``out/report.html``; returns the report's path. Without ``preset``
    an existing study continues with its own."""
    if preset is not None and preset not in SETTINGS:
        raise UserError(f"bad preset {preset!r}; valid: {', '.join(SETTINGS)}")
    chosen = pick_device(device)
    out = Path(out) if out is not None else None
    if preset is None:  # an existing study continues with its own preset
        out = out or existing_or_default([Path("runs") / f"study-{p}" for p in SETTINGS], chosen,
                                          lambda p: Path("runs") / f"study-{p}")
        saved = [c for c in (saved_config(out / kind) for kind in MODELS) if c is not None]
        preset = saved[0].preset if saved else None
        if preset is not None:
            say(log, f"mnistgen: continuing the study in {out} (preset {preset!r})")
    if preset not in (None, *SETTINGS):
        raise UserError(f"bad preset {preset!r} in the study's config.json; valid: {', '.join(SETTINGS)}")
    name = preset_for(preset, chosen, log)
    out = out or Path("runs") / f"study-{name}"
    check_writable_dir(out, "study directory")
    return run_study(name, out, data_dir, chosen, progress, log=log or (lambda text: None))
