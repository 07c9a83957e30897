"""What differs between the three models, in one place: network, objective, data scaling, previews.

Everything else (the training loop, checkpoints, the run directory, the command line) is
shared and calls these functions with a :class:`RunConfig`.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Iterator, NamedTuple

import torch
from torch import nn
from tqdm.auto import tqdm

from mnistgen.config import CFGConfig, ClassifierConfig, DDPMConfig, RunConfig, UNetConfig, VAEConfig, differences
from mnistgen.data.mnist import TensorData, load
from mnistgen.errors import Interrupted, UserError
from mnistgen.training import device as policy
from mnistgen.training import distributed
from mnistgen.files import check_writable_dir
from mnistgen.training.checkpoint import describe_error, load_checkpoint, load_weights
from mnistgen.training.device import pick_device
from mnistgen.training.rundir import RunDir
from mnistgen.training.trainer import EpochRecord, Objective, Preview, StopRequest, Trainer

PREVIEW_SEED = 1234  # fixed noise for the per-epoch grids (F9, F12)


def data_scale(cfg: RunConfig) -> str:
    """Pixels in [0, 1] for the VAE's Bernoulli likelihood, [-1, 1] for diffusion (DDPM section 3.3)."""
    return "unit" if cfg.kind in ("vae", "classifier") else "signed"


def load_data(cfg: RunConfig, split: str, data_dir: str | os.PathLike | None, device: torch.device) -> TensorData:
    """The split as device-resident tensors, cut to ``data.train_limit`` / ``data.val_limit`` when set."""
    data = load(split, data_scale(cfg), cfg.data.resolution, cfg.data.dataset, data_dir, device)
    limit = cfg.data.train_limit if split == "train" else cfg.data.val_limit
    return TensorData(data.x[:limit], data.y[:limit]) if limit else data


def build_model(cfg: RunConfig) -> nn.Module:
    if isinstance(cfg.model, VAEConfig):
        from mnistgen.models.vae import VAE

        return VAE(cfg.model, image_size=cfg.data.resolution)
    if isinstance(cfg.model, ClassifierConfig):
        from mnistgen.models.classifier import Classifier

        return Classifier(cfg.model)
    from mnistgen.models.unet import ConditionalUNet, UNet

    assert isinstance(cfg.model, UNetConfig)
    return ConditionalUNet(cfg.model) if cfg.kind == "cfg" else UNet(cfg.model)


def build_process(cfg: RunConfig, device: torch.device | str = "cpu"):
    """The noise process of a diffusion run (None for the VAE), its tables on ``device``; it never owns
    the network."""
    if isinstance(cfg.process, DDPMConfig):
        from mnistgen.diffusion.ddpm import GaussianDiffusion

        return GaussianDiffusion(cfg.process, device)
    if isinstance(cfg.process, CFGConfig):
        from mnistgen.diffusion.cfg import LogSNRDiffusion

        return LogSNRDiffusion(cfg.process)
    return None


def build_objective(cfg: RunConfig, device: torch.device | str = "cpu") -> Objective:
    if cfg.kind == "vae":
        from mnistgen.models.vae import VAEObjective

        return VAEObjective()
    if cfg.kind == "classifier":
        from mnistgen.models.classifier import ClassifierObjective

        return ClassifierObjective()
    return build_process(cfg, device)


def image_shape(cfg: RunConfig) -> tuple[int, int, int]:
    return (1, cfg.data.resolution, cfg.data.resolution)


def generate(cfg: RunConfig, model: nn.Module, n: int, generator: torch.Generator,
             labels: torch.Tensor | None = None, sampler: str | None = None, steps: int | None = None,
             eta: float | None = None, guidance: float | None = None, process=None) -> torch.Tensor:
    """``n`` samples in [0, 1], shape (n, 1, H, W), with the run's default sampler unless overridden;
    ``process``: the run's noise process on the model's device (built here when not given)."""
    device = next(model.parameters()).device
    if cfg.kind == "vae":
        z = torch.randn(n, cfg.model.latent, generator=generator, device=device)
        return model.decode(z)
    from mnistgen.diffusion import samplers

    process = process or build_process(cfg, device)
    noise = torch.randn(n, *image_shape(cfg), generator=generator, device=device)
    if cfg.kind == "ddpm":
        p = cfg.process
        sampler = sampler or p.sampler
        if sampler == "ancestral":
            x = samplers.ancestral(model, process, noise, generator)
        else:
            x = samplers.ddim(model, process, noise, steps or p.sample_steps, p.eta if eta is None else eta, generator)
    else:
        if labels is None:
            raise ValueError("the conditional model needs labels")
        p = cfg.process
        x = samplers.guided(model, process, noise, labels.to(device), guidance if guidance is not None else p.guidance,
                            steps or p.sample_steps, generator)
    return to_unit(x)


SAMPLE_BATCH = 500


def generate_batches(cfg: RunConfig, model: nn.Module, n: int, generator: torch.Generator,
                     labels: torch.Tensor | None = None, batch_size: int = SAMPLE_BATCH, progress: bool = False,
                     **options) -> Iterator[torch.Tensor]:
    """``n`` samples (``len(labels)`` for the conditional model) as CPU batches of at most ``batch_size``,
    so that memory stays bounded for any n; ``options`` as for :func:`generate`."""
    bar = tqdm(total=n, disable=not progress or n <= batch_size, desc="sampling", unit="img", dynamic_ncols=True)
    for first in range(0, n, batch_size):
        count = min(batch_size, n - first)
        chunk_labels = labels[first: first + count] if labels is not None else None
        yield generate(cfg, model, count, generator, labels=chunk_labels, **options).cpu()
        bar.update(count)
    bar.close()


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Diffusion output in [-1, 1] -> image in [0, 1]."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def build_preview(cfg: RunConfig, process=None) -> Preview | None:
    """Per-epoch grid from fixed noise: 64 VAE samples (8x8), 16 DDPM samples (4x4), or CFG: 2 per class,
    one row per digit."""
    if cfg.kind == "classifier":
        return None

    def preview(model: nn.Module) -> torch.Tensor:
        device = next(model.parameters()).device
        g = torch.Generator(device).manual_seed(PREVIEW_SEED)
        if cfg.kind == "cfg":
            labels = torch.arange(10, device=device).repeat_interleave(2)  # (20,) 0,0,1,1,...
            return generate(cfg, model, len(labels), g, labels=labels, process=process)
        return generate(cfg, model, 64 if cfg.kind == "vae" else 16, g, process=process)

    return Preview(preview, {"vae": 8, "ddpm": 4, "cfg": 2}[cfg.kind])


def check_resume(run: RunDir, cfg: RunConfig) -> None:
    """``--resume`` continues the run in ``run`` with its own settings: it needs a checkpoint, and any
    setting that differs from its config.json is refused, listed, except ``train.epochs`` raised above
    the run's (the run is extended; a cosine schedule then decays over the new length)."""
    if not run.has_checkpoint():
        raise UserError(f"{run.root} has no checkpoint to resume; leave out --resume to start a new run there")
    saved = run.read_config()
    if saved.kind != cfg.kind:
        raise UserError(f"{run.root} holds a {saved.kind!r} run, not {cfg.kind!r}")
    newest = run.newest_checkpoint()
    trained_with = RunConfig.from_dict(load_checkpoint(newest, cfg.kind, mmap=True)["config"])
    edited = {k: v for k, v in differences(trained_with, saved).items() if k != "train.epochs"}
    if edited:
        listed = "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in sorted(edited.items()))
        raise UserError(f"{run.config} was edited after {newest.name} was written ({listed}); "
                        f"restore it, or pass a larger --epochs to extend the run")
    changed = differences(saved, cfg)
    extension = changed.pop("train.epochs", None)
    if extension is not None and extension[1] < extension[0]:
        changed["train.epochs"] = extension
    if changed:
        listed = "; ".join(f"{k} {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in sorted(changed.items())))
        raise UserError(f"--resume keeps the run's own settings, but these differ from {run.config}: {listed}; "
                        f"drop them (only a larger --epochs extends a run) or train into another --out")


def _check_new_run(run: RunDir) -> None:
    if run.has_checkpoint():
        raise UserError(f"{run.root} already holds a run; pass --resume to continue it or choose another --out")


def train(cfg: RunConfig, out: Path, data_dir: str | os.PathLike | None = None, device: torch.device | None = None,
          resume: bool = False, show_progress: bool = True) -> list[EpochRecord]:
    """Train a run of ``cfg`` in ``out``, or continue it there with ``resume`` (see :func:`check_resume`).
    Everything is checked before any work starts; rank 0 holds the run directory's lock meanwhile."""
    device = device or pick_device("auto")
    run = RunDir(Path(out))
    check_writable_dir(run.root, "run directory")
    check_resume(run, cfg) if resume else _check_new_run(run)
    main = distributed.is_main_process()
    with StopRequest() as stop:  # SIGINT / SIGTERM from here on end with a checkpoint and one line
        train_data, val_data = (load_data(cfg, split, data_dir, device) for split in ("train", "test"))
        if stop.signal is not None:
            raise Interrupted(f"interrupted by {signal.Signals(stop.signal).name} before training started; "
                              f"nothing was written", stop.signal)
        with run.locked() if main else contextlib.nullcontext():  # the run directory appears here
            check_resume(run, cfg) if resume else _check_new_run(run)  # again: nothing raced in meanwhile
            if main:
                run.remove_stale_temp_files()
            policy.configure_backends(device, cfg.train.tf32)
            torch.manual_seed(cfg.train.seed)
            model = build_model(cfg).to(device)
            objective = build_objective(cfg, device)
            trainer = Trainer(model, objective, train_data, val_data, cfg, run,
                              build_preview(cfg, objective if cfg.process is not None else None), show_progress)
            if resume:
                trainer.resume()
            if main:
                if show_progress:
                    print(f"{cfg.kind}: training on {policy.describe(device, trainer.amp_dtype)}")
                run.write_config(cfg)
            return trainer.fit(stop)


class LoadedRun(NamedTuple):
    cfg: RunConfig
    run: RunDir
    model: nn.Module  # sampling weights (EMA when the run has them), eval mode
    history: list[dict]
    process: object  # the noise process on the model's device (None for the VAE and the classifier)


GENERATIVE = ("vae", "ddpm", "cfg")


def load_run(path: str | os.PathLike, device: torch.device | None = None, kind: str | None = None,
             checkpoint: Path | None = None, generative: bool = False) -> LoadedRun:
    """Load a run's config and its best sampling weights from ``last.pt`` (or ``checkpoint``);
    ``generative=True`` refuses a classifier run."""
    run = RunDir(Path(path))
    if not run.root.is_dir():
        raise UserError(f"run directory {run.root} does not exist")
    cfg = run.read_config()
    if generative and cfg.kind not in GENERATIVE:
        raise UserError(f"{run.root} holds a {cfg.kind!r} run; this command needs one of {', '.join(GENERATIVE)}")
    if kind is not None and cfg.kind != kind:
        raise UserError(f"{run.root} holds a {cfg.kind!r} run, not a {kind!r} run")
    device = device or torch.device("cpu")
    checkpoint = checkpoint or run.newest_checkpoint()
    if checkpoint is None:
        raise UserError(f"{run.root} has no checkpoint yet; train it first")
    state = load_checkpoint(checkpoint, cfg.kind, mmap=True)  # reads only what is used
    model = build_model(cfg).to(device)
    try:
        ema_started = state["ema"] is not None and state["step"] > cfg.train.ema_start
        weights = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")} \
            if ema_started else state["model"]
        history = list(state["history"])
    except (KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{checkpoint} is damaged ({describe_error(e)})") from None
    load_weights(model, weights, checkpoint)
    model.eval()
    return LoadedRun(cfg, run, model, history, build_process(cfg, device))
