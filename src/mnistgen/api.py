"""The public Python API: ``import mnistgen``.

    model = mnistgen.load("pretrained:cfg")            # or a run directory
    sevens = model.sample(16, labels=7)                # (16, 1, 28, 28) in [0, 1]
    run = mnistgen.train("ddpm", preset="smoke", out="runs/ddpm-smoke")
    metrics = mnistgen.evaluate(run.path)              # RunMetrics

The command line is a thin layer over these functions. Bad arguments raise
:class:`mnistgen.errors.UserError` with a one-line message before any work starts.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from mnistgen import kinds
from mnistgen.config import PRESETS, RunConfig, apply_overrides, preset
from mnistgen.data.mnist import native_size
from mnistgen.diffusion.samplers import SamplerSettings, to_unit
from mnistgen.errors import UserError
from mnistgen.evaluation.metrics import RunMetrics, read_metrics
from mnistgen.files import check_writable_dir, fresh_dir, markdown_text, refuse_links, write_atomic
from mnistgen.training.checkpoint import describe_error
from mnistgen.images import save_animation
from mnistgen.kinds import EvaluationRequest, TrainedModel
from mnistgen.kinds.base import SAMPLE_BATCH
from mnistgen.runs import check_request, check_resume, evaluate_run, load_run, render_figures
from mnistgen.runs import train as train_run
from mnistgen.study import MODELS, SETTINGS, metric_rows, read_provenance, run_study
from mnistgen.training import distributed
from mnistgen.training.device import default_preset, pick_device
from mnistgen.training.rundir import EpochRecord, RunDir
from mnistgen.weightfiles import MANIFEST_NAME, WEIGHTS_NAME, read_manifest, save_weights, write_manifest

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


def _labels(labels, n: int) -> torch.Tensor:
    """A digit (int, NumPy integer or 0-d tensor), a sequence of n digits or a tensor of them ->
    (n,) int64, each checked to lie in 0-9; floats are refused, not truncated."""
    try:
        given = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"labels must be a digit 0-9 or a sequence of them ({describe_error(e)})") from None
    if given.is_floating_point() or given.is_complex() or given.dtype == torch.bool:
        raise UserError(f"labels must be whole digits 0-9, got {given.dtype} values")
    labels = given.to(torch.long).flatten().cpu()
    if labels.numel() == 1 and n != 1:
        labels = labels.expand(n).clone()
    if len(labels) != n:
        raise UserError(f"labels must be one digit or {n} of them, got {len(labels)}")
    if len(labels) and not bool(((labels >= 0) & (labels <= 9)).all()):
        raise UserError(f"labels must be digits 0-9, got {sorted(set(labels.tolist()))}")
    return labels


class Model:
    """A trained model, ready to use; what :func:`load` returns. Images are always 28x28 in [0, 1]
    (the U-Net's padding to 32 is cropped away)."""

    def __init__(self, trained: TrainedModel):
        self.trained = trained
        self.kind = kinds.get(trained.config.kind)

    config = property(lambda self: self.trained.config, doc="the run's RunConfig")
    network = property(lambda self: self.trained.model, doc="the torch module (EMA weights, eval mode)")
    device = property(lambda self: self.trained.device)
    history = property(lambda self: self.trained.history, doc="one EpochRecord per trained epoch")
    path = property(lambda self: self.trained.run.root)

    def __repr__(self) -> str:
        return f"mnistgen.Model({self.config.kind}, preset {self.config.preset!r}, {self.path}, on {self.device})"

    # -- sampling ---------------------------------------------------------------------------
    def _prepare(self, n: int, labels, settings: SamplerSettings, generator: torch.Generator | None):
        if not isinstance(n, int) or n < 1:
            raise UserError(f"n must be a whole number >= 1, got {n!r}")
        self.kind.check_settings(self.config, settings)
        if self.kind.takes_labels and labels is None:
            raise UserError(f"the {self.config.kind} model needs labels (a digit 0-9 or one per sample)")
        if not self.kind.takes_labels and labels is not None:
            raise UserError(f"the {self.config.kind} model takes no labels")
        labels = _labels(labels, n) if labels is not None else None
        if generator is None:
            generator = torch.Generator(self.device)
            generator.seed()
        elif generator.device.type != self.device.type:
            raise UserError(f"the generator is on {generator.device} and the model on {self.device}; "
                            f"make it with torch.Generator({str(self.device)!r})")
        return labels, generator

    def sample_batches(self, n: int, *, labels=None, guidance: float | None = None, sampler: str | None = None,
                       steps: int | None = None, eta: float | None = None, grid: str | None = None,
                       generator: torch.Generator | None = None, progress: bool = True,
                       batch_size: int = SAMPLE_BATCH) -> Iterator[torch.Tensor]:
        """:meth:`sample` as CPU batches of at most ``batch_size``: memory stays bounded for any n.
        Every argument is checked here, before the first batch is asked for."""
        settings = SamplerSettings(sampler, steps, eta, guidance, grid)
        labels, generator = self._prepare(n, labels, settings, generator)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        return self._batches(n, labels, settings, generator, progress, batch_size)

    @torch.no_grad()
    def _batches(self, n, labels, settings, generator, progress, batch_size) -> Iterator[torch.Tensor]:
        for batch in self.kind.sample_batches(self.config, self.network, n, generator, settings, labels,
                                              self.trained.process, batch_size, progress):
            yield native_size(batch)

    def sample(self, n: int, *, labels=None, guidance: float | None = None, sampler: str | None = None,
               steps: int | None = None, eta: float | None = None, grid: str | None = None,
               generator: torch.Generator | None = None, progress: bool = True) -> torch.Tensor:
        """``n`` samples, (n, 1, 28, 28) in [0, 1] on the CPU, with the run's default sampler unless
        overridden. The CFG model needs ``labels``: one digit or one per sample. ``generator`` (on the
        model's device) makes the draw repeatable."""
        return torch.cat(list(self.sample_batches(n, labels=labels, guidance=guidance, sampler=sampler, steps=steps,
                                                  eta=eta, grid=grid, generator=generator, progress=progress)))

    def _times(self, settings: SamplerSettings) -> list[int]:
        if not self.kind.iterative:
            raise UserError(f"the {self.config.kind} model samples in one pass; it has no reverse process")
        return self.kind.step_times(self.config, settings)

    @torch.no_grad()
    def reverse_chain(self, n: int = 4, *, at: Sequence[int] | None = None, labels=None,
                      guidance: float | None = None, sampler: str | None = None, steps: int | None = None,
                      eta: float | None = None, grid: str | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """The reverse process of ``n`` samples: the state after step t for each t in ``at``, t counted
        down to 0 = the finished samples (the DDPM's timesteps; the CFG sampler's steps still to go).
        A t the sampler does not visit (one on fewer than T steps skips most) is replaced by the nearest one it does.
        Default: up to six distinct states from nearly pure noise to the end.
        Returns (n, len(at), 1, 28, 28) in [0, 1] (n, number of default states, ... without ``at``)."""
        settings = SamplerSettings(sampler, steps, eta, guidance, grid)
        labels, generator = self._prepare(n, labels, settings, generator)  # settings checked first
        times = self._times(settings)
        first = times[0]
        default = dict.fromkeys(round(first * f) for f in (1.0, 0.5, 0.2, 0.1, 0.025, 0.0))  # distinct, in order
        wanted = at if at is not None else list(default)
        if not all(isinstance(t, int) and 0 <= t <= first for t in wanted):
            raise UserError(f"at must hold steps in [0, {first}], got {list(wanted)}")
        picked = [min(times, key=lambda s: (abs(s - t), s)) for t in wanted]
        if at is None:
            picked = list(dict.fromkeys(picked))  # the default shows each visited state once
        kept: dict[int, torch.Tensor] = {}

        def keep(t: int, x: torch.Tensor) -> None:
            if t in picked:
                kept[t] = native_size(to_unit(x)).cpu()

        self.kind.sample(self.config, self.network, n, generator, settings,
                         labels.to(self.device) if labels is not None else None, self.trained.process, keep)
        return torch.stack([kept[t] for t in picked], dim=1)  # (n, len(at), 1, 28, 28)

    def animate(self, path: str | os.PathLike, n: int = 16, *, frames: int = 60, **options) -> Path:
        """An animated GIF of the reverse process of ``n`` samples: a grid per frame, ``frames`` states
        evenly spaced over the sampler's steps, the finished samples held at the end. ``options`` as
        for :meth:`reverse_chain`; returns the path."""
        settings = SamplerSettings(options.get("sampler"), options.get("steps"), options.get("eta"),
                                   options.get("guidance"), options.get("grid"))
        self.kind.check_settings(self.config, settings)
        times = self._times(settings)
        if not isinstance(frames, int) or frames < 2:
            raise UserError(f"frames must be a whole number >= 2, got {frames!r}")
        index = sorted({round(i * (len(times) - 1) / (frames - 1)) for i in range(frames)})
        chain = self.reverse_chain(n, at=[times[i] for i in index], **options)  # (n, F, 1, 28, 28)
        save_animation(list(chain.transpose(0, 1)), Path(path))
        return Path(path)

    # -- the VAE's latent space --------------------------------------------------------------
    def _vae(self):
        if not hasattr(self.network, "encode"):
            raise UserError(f"the {self.config.kind} model has no latent space; encode / decode / interpolate / "
                            f"traverse need the vae model")
        return self.network

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The posterior means mu(x) of images (N, 1, 28, 28) in [0, 1]: codes (N, latent)."""
        mu, _ = self._vae().encode(images.to(self.device).float())
        return mu.cpu()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Bernoulli means of codes (N, latent): images (N, 1, 28, 28) in [0, 1]."""
        return self._vae().decode(codes.to(self.device).float()).cpu()

    @torch.no_grad()
    def interpolate(self, a: torch.Tensor, b: torch.Tensor, steps: int = 11) -> torch.Tensor:
        """Decodes of (1 - s) z_a + s z_b for s evenly in [0, 1], z the codes of images ``a`` and ``b``
        (each (1, 28, 28) or (1, 1, 28, 28)): (steps, 1, 28, 28)."""
        za, zb = self.encode(torch.stack([a.reshape(1, 28, 28), b.reshape(1, 28, 28)]))
        s = torch.linspace(0, 1, steps).view(-1, 1)  # (steps, 1)
        return self.decode((1 - s) * za + s * zb)

    @torch.no_grad()
    def traverse(self, code: torch.Tensor, dims: Sequence[int], offsets: Sequence[float] = (-4, -2, 0, 2, 4)) -> torch.Tensor:
        """Decodes of ``code`` (latent,) with dimension d moved by each offset, for d in ``dims``:
        (len(dims), len(offsets), 1, 28, 28)."""
        latent = self.config.model.latent
        if not all(0 <= d < latent for d in dims):
            raise UserError(f"dims must lie in [0, {latent - 1}], got {list(dims)}")
        codes = code.reshape(1, 1, latent).repeat(len(dims), len(offsets), 1)  # (D, O, L)
        for i, d in enumerate(dims):
            codes[i, :, d] += torch.as_tensor(offsets, dtype=codes.dtype)
        return self.decode(codes.flatten(0, 1)).unflatten(0, (len(dims), len(offsets)))


def load(path_or_name: str | os.PathLike, device: str | torch.device = "auto") -> Model:
    """A trained model from a run directory or a pretrained one (``"pretrained:vae"``,
    ``"pretrained:ddpm"``, ``"pretrained:cfg"``), on ``device`` (auto: cuda, then mps, then cpu)."""
    return Model(load_run(run_path(path_or_name), pick_device(device), generative=True))


# -- training, evaluation, figures, the study ----------------------------------------------------

@dataclass(frozen=True)
class TrainedRun:
    """What :func:`train` leaves: the run directory and its history."""

    path: Path
    config: RunConfig
    history: list[EpochRecord]

    def load(self, device: str | torch.device = "auto") -> Model:
        return load(self.path, device)


def _say(log: Log, text: str) -> None:
    if log is not None:
        log(text)


def preset_for(requested: str | None, device: torch.device, log: Log = print) -> str:
    """The named preset, or the device's default (with a line saying which and why)."""
    if requested is not None:
        return requested
    choice = default_preset(device)
    _say(log, f"mnistgen: no --preset given: using {choice.name!r} because {choice.reason}")
    return choice.name


def _existing_or_default(candidates: list[Path], device: torch.device, default_for) -> Path:
    """The device's default run directory, unless it does not exist and exactly one other candidate
    does (a run started under another default, e.g. on the CPU before a GPU was attached)."""
    default = default_for(default_preset(device).name)
    started = [c for c in candidates if c.is_dir() and any(RunDir(p).has_checkpoint() for p in (c, *c.iterdir()))]
    return started[0] if default not in started and len(started) == 1 else default


def _saved_config(out: Path | None) -> RunConfig | None:
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
        out = _existing_or_default([Path("runs") / f"{kind}-{p}" for p in PRESETS[kind]], device,
                                   lambda p: Path("runs") / f"{kind}-{p}")
    saved = _saved_config(out) if resume and preset_name is None else None
    if saved is not None:  # the run's own settings, with the overrides given (check_resume judges them)
        if saved.kind != kind:
            raise UserError(f"{out} holds a {saved.kind!r} run, not {kind!r}")
        config = apply_overrides(saved, overrides)
        check_resume(RunDir(Path(out)), config)  # refused before a word about resuming
        _say(log, f"mnistgen: resuming {out} with its own settings (preset {saved.preset!r})")
    else:
        config = apply_overrides(preset(kind, preset_for(preset_name, device, log)), overrides)
    return config, Path(out) if out is not None else Path("runs") / f"{config.kind}-{config.preset}"


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


def _writable_copy(run: str | os.PathLike, out: str | os.PathLike | None) -> Path:
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
    saved = _saved_config(target) if (target / MANIFEST_NAME).is_file() else None
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


def evaluate(run: str | os.PathLike, *, out: str | os.PathLike | None = None, n: int = 1000, seed: int = 0,
             sampler: str | None = None, steps: int | None = None, eta: float | None = None,
             grid: str | None = None, guidance: float | None = None, guidance_sweep: Sequence[float] | None = None,
             sweep_samples: int | None = None, iwae_k: int = 500, n_images: int = 10_000,
             classifier: str | os.PathLike | None = None, device: str | torch.device = "auto",
             data_dir: str | os.PathLike | None = None, progress: bool = True) -> RunMetrics:
    """Evaluate a run (or a pretrained model, into ``out``) and write the results as its
    metrics.json: MNIST-FD (with its bootstrap std and FD_inf), KID, precision / recall / density /
    coverage, class histogram and accuracy of ``n`` samples; the VAE's ELBO and IWAE bound (grey-level
    and binarized test images); the CFG model's guidance sweep; the classifier's test accuracy."""
    request = EvaluationRequest(n, seed, SamplerSettings(sampler, steps, eta, guidance, grid), iwae_k, n_images,
                                tuple(guidance_sweep) if guidance_sweep is not None else None, sweep_samples,
                                Path(classifier) if classifier is not None else None, progress)
    if is_pretrained(run):  # refused before the copy into out is made
        check_request(RunDir(run_path(run)).read_config(), request, run)
    return evaluate_run(_writable_copy(run, out), pick_device(device), data_dir, request)


def draw_figures(run: str | os.PathLike, *, out: str | os.PathLike | None = None,
                 device: str | torch.device = "auto", data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Render the study's figures of a run's model (or a pretrained model's, into ``out``) into
    RUN/figures/; returns their paths."""
    return render_figures(_writable_copy(run, out), pick_device(device), data_dir)


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
        out = out or _existing_or_default([Path("runs") / f"study-{p}" for p in SETTINGS], chosen,
                                          lambda p: Path("runs") / f"study-{p}")
        saved = [c for c in (_saved_config(out / kind) for kind in MODELS) if c is not None]
        preset = saved[0].preset if saved else None
        if preset is not None:
            _say(log, f"mnistgen: continuing the study in {out} (preset {preset!r})")
    if preset not in (None, *SETTINGS):
        raise UserError(f"bad preset {preset!r} in the study's config.json; valid: {', '.join(SETTINGS)}")
    name = preset_for(preset, chosen, log)
    out = out or Path("runs") / f"study-{name}"
    check_writable_dir(out, "study directory")
    return run_study(name, out, data_dir, chosen, progress, log=log or (lambda text: None))


# -- the pretrained models shipped in the package ------------------------------------------------

def export_pretrained(study: str | os.PathLike, dest: str | os.PathLike, *, commit: str | None = None,
                      trained_on: str | None = None) -> list[Path]:
    """Write the shipped form of a finished study's generative runs into ``dest/KIND/``: config,
    history, metrics, the per-epoch previews the figures read, ``model.safetensors`` (the sampling
    weights in float16), MODEL_CARD.md and MANIFEST.json (every file's SHA-256). Each folder is built
    beside its destination and moved in; an earlier export there loses only the files its own
    manifest lists. Returns the model cards' paths."""
    study, dest = Path(study), Path(dest)
    _check_export(study, dest)
    try:
        provenance = read_provenance(study)
        commit = commit or provenance.get("commit", "unknown")
        trained_on = trained_on or provenance.get("device", "unknown")
    except (ValueError, AttributeError) as e:
        raise UserError(f"{study / 'provenance.json'} is damaged ({type(e).__name__}); pass --commit and "
                        f"--trained-on, or repair it") from None
    runs = [load_run(study / name, torch.device("cpu")) for name in MODELS]  # all read before anything is replaced
    dest.mkdir(parents=True, exist_ok=True)
    return [_export_run(trained, dest / name, str(commit), str(trained_on)) for name, trained in zip(MODELS, runs)]


def _inside_installed_package(path: Path) -> bool:
    """Whether ``path`` lies in this mnistgen as installed into a site-packages folder (not a checkout)."""
    package = Path(__file__).resolve().parent
    installed = any(part in ("site-packages", "dist-packages") for part in package.parts)
    there = path.resolve()
    return installed and (there == package or package in there.parents)


def _check_export(study: Path, dest: Path) -> None:
    """Everything an export needs, before it replaces anything: every model evaluated, and a
    destination outside the study and the installed package whose model folders are new or earlier exports."""
    for name in MODELS:
        if not (study / name / "config.json").is_file():
            raise UserError(f"{study} is not a study directory: it has no {name}/ run")
        copied = [RunDir(study / name).metrics, *sorted((study / name / "samples").glob("epoch_*.npz"))]
        refuse_links(study / name, [p.relative_to(study / name).as_posix() for p in copied] + ["samples"])
        if read_metrics(RunDir(study / name)).quality is None:
            raise UserError(f"{study / name} has not been evaluated; finish `mnistgen reproduce` (or run "
                            f"`mnistgen evaluate {study / name}`) before exporting")
    here, there = study.resolve(), dest.resolve()
    if there == here or here in there.parents or there in here.parents:
        raise UserError(f"--to {dest} overlaps the study {study}; export into another directory")
    if _inside_installed_package(dest):
        raise UserError(f"--to {dest} lies inside the installed mnistgen package; export into another directory")
    for name in MODELS:
        folder = dest / name
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise UserError(f"{folder} is a link or a file, not an exported model; choose another --to")
        if folder.exists():
            if not (folder / MANIFEST_NAME).is_file():
                raise UserError(f"{folder} exists and is not an exported model (no {MANIFEST_NAME}); choose another --to")
            read_manifest(folder)  # a damaged manifest is refused before anything is written
            refuse_links(folder, ["samples"])
    check_writable_dir(dest, "--to")


def _export_run(trained: TrainedModel, out: Path, commit: str, trained_on: str) -> Path:
    """Build the exported folder in a fresh sibling of ``out`` and move it into place."""
    staging = fresh_dir(out, ".export")
    try:
        names = _write_export(trained, staging, commit, trained_on)
        _move_into_place(staging, out, names)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out / "MODEL_CARD.md"


def _write_export(trained: TrainedModel, out: Path, commit: str, trained_on: str) -> list[str]:
    """Every file of an exported model into the new folder ``out``; returns their names, MANIFEST.json last."""
    from mnistgen.figures.diffusion import nearest_epochs

    source, config = trained.run, trained.config
    target = RunDir(out)
    target.write_config(config)
    target.write_history(list(trained.history))
    weights = {k: (v.half() if v.is_floating_point() else v) for k, v in trained.model.state_dict().items()}
    save_weights(out / WEIGHTS_NAME, weights, config.to_dict())
    names = ["config.json", "history.json", WEIGHTS_NAME, "metrics.json", "MODEL_CARD.md"]
    if source.sample_epochs() and kinds.get(config.kind).figures_read_previews:
        for epoch in nearest_epochs(source.sample_epochs()):
            write_atomic(target.epoch_samples(epoch), source.epoch_samples(epoch).read_bytes())
            names.append(target.epoch_samples(epoch).relative_to(out).as_posix())
    metrics = read_metrics(source)
    write_atomic(target.metrics, source.metrics.read_bytes())
    write_atomic(out / "MODEL_CARD.md", model_card(config, trained.history, metrics, commit, trained_on).encode())
    write_manifest(out, names)
    return [*names, MANIFEST_NAME]


def _move_into_place(staging: Path, out: Path, names: list[str]) -> None:
    """``staging`` becomes ``out``: renamed whole when ``out`` is new; otherwise each file replaces its
    namesake (the manifest last), and the files only the old manifest listed are removed. Files
    the old manifest does not list (a user's notes) are left alone."""
    if not out.exists():
        os.rename(staging, out)
        return
    old = read_manifest(out)
    for name in names:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, out / name)
    for name in sorted(set(old) - set(names)):
        if EXPORTED_FILE.fullmatch(name):  # never a name an export does not write, whatever a manifest says
            (out / name).unlink(missing_ok=True)


# The names an export writes: what an earlier export's manifest may have removed.
EXPORTED_FILE = re.compile(rf"(config|history|metrics)\.json|MODEL_CARD\.md|{re.escape(WEIGHTS_NAME)}|"
                           rf"{re.escape(MANIFEST_NAME)}|samples/epoch_\d+\.npz")


def _objective_lines(process) -> list[str]:
    """What a diffusion model was trained to predict, and how its loss was weighted and sampled in time."""
    if not hasattr(process, "prediction"):
        return []
    parts = [f"the network predicts {process.prediction}"
             + ("" if process.prediction == "eps" else " (converted to eps for the samplers)")]
    parts += [f"{name.replace('_', ' ')} {getattr(process, name)}" for name in ("loss_weighting", "t_distribution")
              if hasattr(process, name)]
    return ["- objective: " + "; ".join(parts)]


def model_card(config: RunConfig, history, metrics: RunMetrics, commit: str, trained_on: str) -> str:
    """The model card of a shipped model: what it is, how it was made, what it scored."""
    seconds = sum(r.seconds for r in history)
    commit, trained_on = markdown_text(commit), markdown_text(trained_on)  # text from provenance.json
    preset_name = markdown_text(config.preset)  # config.json's text: any string
    lines = [f"# pretrained:{config.kind}", "",
             f"mnistgen's {kinds.get(config.kind).long_title} model, preset {preset_name}, "
             f"weights stored in float16 "
             f"({'EMA weights' if config.train.ema_decay > 0 else 'the trained weights'}).", "",
             "## How it was made", "",
             f"- command: mnistgen reproduce --preset {preset_name} (this run is its {config.kind}/ directory), "
             f"then mnistgen export STUDY_DIR --to DIR",
             f"- trained at commit: {commit}",
             f"- data: MNIST training set (60,000 images{', first ' + str(config.data.train_limit) if config.data.train_limit else ''}); "
             f"validation loss on {config.data.val_limit or 10_000} test images",
             f"- training: {len(history)} epochs, {history[-1].step:,} optimizer steps, {seconds / 60:.1f} minutes "
             f"on {trained_on}"]
    lines += _objective_lines(config.process)
    lines += ["", "## Measured", ""]
    if metrics.evaluated_with is not None:
        lines.append(f"- metrics computed by {markdown_text(metrics.evaluated_with)}")
    lines += [f"- {markdown_text(metric)}: {markdown_text(value)}" for metric, value in metric_rows(metrics)]
    lines += ["", "MNIST-FD, KID, precision, recall, density and coverage are computed in the features of "
                  "mnistgen's own MNIST classifier (not Inception); compare them only with other mnistgen numbers."]
    return "\n".join(lines) + "\n"
