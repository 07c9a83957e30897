"""The diffusion studies' figures: F9-F11 (DDPM, SPEC section 2), F12 and the guidance sweep (CFG, section 3), and
quality against the number of network evaluations (either model, from a steps sweep)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from mnistgen.data.mnist import labels_per_digit
from mnistgen.diffusion.samplers import SamplerSettings, to_unit
from mnistgen.evaluation.results import StepsPoint, SweepPoint
from mnistgen.figures.plotting import save_figure, show_images, subplots
from mnistgen.images import save_grid
from mnistgen.storage.rundir import RunDir

Draw = Callable[..., torch.Tensor]
"""A trained model's sampler, as its model kind hands it to the figures:
``draw(n, generator, settings=SamplerSettings(), labels=None)`` -> (n, 1, H, W) in [0, 1]."""

STUDY_EPOCHS = (5, 9, 15, 19)
CHAIN_STEPS = (999, 500, 200, 100, 25, 0)  # for T = 1000; scaled for another T


def nearest_epochs(available: list[int], wanted=STUDY_EPOCHS, study_length: int = 20) -> list[int]:
    """The study's epochs 5, 9, 15, 19 of 20, or for a shorter run the same fractions of its length;
    each mapped to the nearest epoch that has samples (duplicates dropped, order kept)."""
    if not available:
        raise ValueError("the run has no per-epoch samples")
    last = max(available)
    if last < max(wanted):
        wanted = [max(1, round(w * last / study_length)) for w in wanted]
    picked = [min(available, key=lambda e: (abs(e - w), e)) for w in wanted]
    return list(dict.fromkeys(picked))


def epochs_grid(run: RunDir, rows: list[int], path: Path, title: str, row_names: list[str]) -> Path:
    """Per-epoch preview images ``rows`` (indices into each epoch's fixed-noise batch) as rows, epochs as columns."""
    epochs = nearest_epochs(run.sample_epochs())
    columns = [run.load_epoch_samples(e)[rows] for e in epochs]  # each (R, 1, H, W)
    images = torch.stack(columns, dim=1).flatten(0, 1)  # (R * E, 1, H, W), row-major
    fig, ax = subplots(figsize=(1.2 * len(epochs) + 1, 1.1 * len(rows) + 0.8))
    show_images(ax, images, len(epochs), title)
    size = images.shape[-1] + 2
    ax.set_xticks([(i + 0.5) * size for i in range(len(epochs))], [f"epoch {e}" for e in epochs], fontsize=8)
    ax.set_yticks([(i + 0.5) * size for i in range(len(rows))], row_names, fontsize=8)
    return save_figure(fig, path)


def chain_steps(T: int) -> list[int]:
    """The study's t = 999, 500, 200, 100, 25, 0 for T = 1000, the same fractions of another T."""
    return list(dict.fromkeys(round(t * (T - 1) / 999) for t in CHAIN_STEPS))


@torch.no_grad()
def reverse_chain(draw: Draw, T: int, device: torch.device, path: Path, seed: int = 0, chains: int = 4) -> Path:
    """F11: ancestral sampling, the state after steps t = 999, 500, 200, 100, 25, 0 for ``chains`` chains."""
    g = torch.Generator(device).manual_seed(seed)
    steps = chain_steps(T)
    kept: dict[int, torch.Tensor] = {}

    def keep(t: int, x: torch.Tensor) -> None:
        if t in steps:
            kept[t] = to_unit(x)

    draw(chains, g, SamplerSettings("ancestral"), on_step=keep)
    images = torch.stack([kept[t] for t in steps], dim=1).flatten(0, 1)  # (chains * 6, 1, H, W)
    fig, ax = subplots(figsize=(7, 5))
    show_images(ax, images, len(steps), "F11  reverse process (ancestral), state after step t")
    size = images.shape[-1] + 2
    ax.set_xticks([(i + 0.5) * size for i in range(len(steps))], [f"t={t}" for t in steps], fontsize=8)
    return save_figure(fig, path)


@torch.no_grad()
def render_ddpm(draw: Draw, T: int, run: RunDir, device: torch.device, preview_rows: dict[int, str],
                seed: int = 0) -> list[Path]:
    """F9 (the per-epoch previews' entries ``preview_rows``: index -> row name, as the kind lays them
    out), F10 (the run's default sampler), F11 and DDIM against ancestral."""
    out = run.figures
    paths = [epochs_grid(run, list(preview_rows), out / "f9_epochs.png", "F9  samples from fixed noise per epoch",
                         list(preview_rows.values()))]
    g = torch.Generator(device).manual_seed(seed)
    save_grid(draw(64, g), out / "f10_samples.png", nrow=8)
    paths.append(out / "f10_samples.png")
    paths.append(reverse_chain(draw, T, device, out / "f11_reverse_chain.png", seed))
    paths.append(ddim_vs_ancestral(draw, T, device, out / "ddim_vs_ancestral.png"))
    return paths


@torch.no_grad()
def ddim_vs_ancestral(draw: Draw, T: int, device: torch.device, path: Path, n: int = 8, seed: int = 7) -> Path:
    """Rows: DDIM-20, DDIM-50 (the paper's grid, evenly spaced in t; the run's eta) and ancestral sampling
    (all T steps) from the same x_T."""
    rows = []
    for settings in (SamplerSettings("ddim", min(20, T), grid="time"), SamplerSettings("ddim", min(50, T), grid="time"),
                     SamplerSettings("ancestral")):
        g = torch.Generator(device).manual_seed(seed)
        rows.append(draw(n, g, settings))
    save_grid(torch.cat(rows), path, nrow=n)
    return path


@torch.no_grad()
def class_grid(draw: Draw, device: torch.device, w: float, per_class: int, seed: int) -> torch.Tensor:
    """Samples for labels 0-9 (``per_class`` each, same noise for every w): (10 * per_class, 1, H, W)."""
    g = torch.Generator(device).manual_seed(seed)
    labels = labels_per_digit(per_class, device)
    return draw(len(labels), g, SamplerSettings(guidance=w), labels)


@torch.no_grad()
def guidance_sweep(draw: Draw, device: torch.device, path: Path, weights: tuple[float, ...],
                   metrics: tuple[SweepPoint, ...] | None = None, per_class: int = 4, seed: int = 0) -> Path:
    """Sample grids (rows = digits 0-9) for each w in ``weights`` and, when given, MNIST-FD and accuracy against w."""
    panels = len(weights) + (1 if metrics else 0)
    fig, axes = subplots(1, panels, figsize=(2.2 * panels + (1.5 if metrics else 0), 5.2),
                             gridspec_kw={"wspace": 0.45 if metrics else 0.2})
    for ax, w in zip(axes, weights):
        show_images(ax, class_grid(draw, device, w, per_class, seed), per_class, f"w = {w:g}")
    if metrics:
        ax = axes[-1]
        ws = [m.guidance for m in metrics]
        ax.plot(ws, [m.mnist_fd for m in metrics], "o-", color="C0")
        ax.set_xlabel("guidance weight w")
        ax.set_ylabel("MNIST-FD (lower is better)", color="C0")
        twin = ax.twinx()
        twin.plot(ws, [100 * m.class_accuracy for m in metrics], "s--", color="C1")
        twin.set_ylabel("class accuracy (%)", color="C1")
        ax.set_title("quality vs w", fontsize=9)
        ax.set_box_aspect(1.2)
    fig.suptitle("Guidance sweep: rows are the requested digits 0-9", fontsize=11)
    return save_figure(fig, path)


def guidance_tradeoff(metrics: tuple[SweepPoint, ...], path: Path) -> Path:
    """Class accuracy and recall (± its std over real subsets) against w: what guidance buys in class fidelity
    and costs in diversity. Points without recall (files from before it was measured) are left out."""
    points = [m for m in metrics if m.recall is not None]
    fig, ax = subplots(1, 1, figsize=(5.2, 3.8))
    ws = [m.guidance for m in points]
    ax.plot(ws, [m.class_accuracy for m in points], "s-", color="C1", label="class accuracy")
    ax.errorbar(ws, [m.recall for m in points], yerr=[m.recall_std or 0.0 for m in points], fmt="o-", color="C0",
                capsize=3, label="recall")
    ax.set_xlabel("guidance weight w")
    ax.set_ylabel("share")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(f"CFG: class fidelity against diversity ({points[0].n_samples if points else 0} samples per w)",
                 fontsize=9)
    return save_figure(fig, path)


def steps_curve(points: tuple[StepsPoint, ...], path: Path) -> Path:
    """MNIST-FD ± bootstrap std and recall ± std against the number of network evaluations (log axis), one line
    per sampler of the sweep."""
    lines: dict[str, list[StepsPoint]] = {}
    for p in points:
        lines.setdefault(p.line, []).append(p)
    fig, (fd, recall) = subplots(1, 2, figsize=(10, 3.9))
    for name, row in lines.items():
        row = sorted(row, key=lambda p: p.steps)
        steps = [p.steps for p in row]
        fd.errorbar(steps, [p.mnist_fd for p in row], yerr=[p.mnist_fd_std for p in row], fmt="o-", capsize=3,
                    label=name)
        recall.errorbar(steps, [p.recall for p in row], yerr=[p.recall_std or 0.0 for p in row], fmt="o-",
                        capsize=3, label=name)
    ticks = sorted({p.steps for p in points})
    for ax, what in ((fd, "MNIST-FD (lower is better)"), (recall, "recall")):
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(k) for k in ticks])
        ax.minorticks_off()
        ax.set_xlabel("network evaluations per sample")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    fd.legend(fontsize=8)
    fig.suptitle(f"Quality per network evaluation ({points[0].n_samples} samples per point, one seed; "
                 f"a guided step's pair counts once)", fontsize=11)
    return save_figure(fig, path)


def render_steps(path: Path, points: tuple[StepsPoint, ...] | None) -> list[Path]:
    """:func:`steps_curve` at ``path`` when there is a steps sweep; without one (a later evaluation made
    none) an earlier drawing is removed, so no figure outlives the numbers it showed."""
    if not points:
        Path(path).unlink(missing_ok=True)
        return []
    return [steps_curve(points, path)]


def render_cfg(draw: Draw, run: RunDir, device: torch.device, weights: tuple[float, ...],
               sweep: tuple[SweepPoint, ...] | None, preview_rows: dict[int, str], seed: int = 0) -> list[Path]:
    """F12 (the per-epoch previews' entries ``preview_rows``, index -> row name, as the kind lays them
    out) and the guidance sweep."""
    out = run.figures
    paths = [epochs_grid(run, list(preview_rows), out / "f12_epochs.png",
                         "F12  class-conditional samples per epoch", list(preview_rows.values()))]
    paths.append(guidance_sweep(draw, device, out / "guidance_sweep.png", weights, sweep, seed=seed))
    tradeoff = out / "guidance_tradeoff.png"
    if sweep and any(p.recall is not None for p in sweep):
        paths.append(guidance_tradeoff(sweep, tradeoff))
    else:
        tradeoff.unlink(missing_ok=True)  # an earlier sweep's drawing: not these metrics
    return paths
