"""The VAE study's figures F1-F8 (SPEC section 1)."""

from __future__ import annotations

from pathlib import Path

import torch

from mnistgen.data.mnist import TensorData
from mnistgen.figures.plotting import save_figure, show_images, subplots
from mnistgen.images import save_grid
from mnistgen.models.vae import VAE
from mnistgen.storage.rundir import EpochRecord

TARGET_NATS = 104.0
OFFSETS = (-2, -1, 0, 1, 2)
EPS = 2.0
ALPHAS = [i / 10 for i in range(11)]
PAIRS = ((4, 9), (5, 6), (8, 2))


def loss_curve(history: list[EpochRecord], path: Path) -> Path:
    """F1: train and validation loss per epoch, the 104-nat target dashed, final values annotated."""
    epochs = [r.epoch for r in history]
    train = [r.train_loss for r in history]
    val = [r.val_loss for r in history]
    fig, ax = subplots(figsize=(6, 4))
    ax.plot(epochs, train, "o-", ms=3, label="train")
    ax.plot(epochs, val, "s-", ms=3, label="validation (MNIST test set)")
    ax.axhline(TARGET_NATS, ls="--", color="grey", label=f"target {TARGET_NATS:g}")
    ax.annotate(f"{train[-1]:.2f}", (epochs[-1], train[-1]), textcoords="offset points", xytext=(5, 6), fontsize=8)
    ax.annotate(f"{val[-1]:.2f}", (epochs[-1], val[-1]), textcoords="offset points", xytext=(5, -12), fontsize=8)
    ax.set_ylim(min(min(train), min(val), TARGET_NATS) - 3, min(max(val[0], train[0]), 200) + 5)
    ax.set_xlabel("epoch")
    ax.set_ylabel("negative ELBO (nats / image)")
    ax.set_title("F1  VAE loss per epoch")
    ax.legend()
    return save_figure(fig, path)


@torch.no_grad()
def traversal(model: VAE, base: torch.Tensor, dims: range) -> torch.Tensor:
    """Decode ``base`` with one latent dimension moved by each offset x EPS: (len(dims) * 5, 1, 28, 28), row-major."""
    codes = base.repeat(len(dims) * len(OFFSETS), 1)  # (D*5, L)
    for r, d in enumerate(dims):
        for c, o in enumerate(OFFSETS):
            codes[r * len(OFFSETS) + c, d] += o * EPS
    return model.decode(codes)


def traversal_figure(model: VAE, prior_code: torch.Tensor, image: torch.Tensor, dims: range, path: Path) -> Path:
    """F3/F4: traversals of latent dims ``dims`` from a prior sample (left) and from a real test image (right)."""
    encoded, _ = model.encode(image.unsqueeze(0))
    fig, axes = subplots(1, 2, figsize=(7, 7.5))
    offsets = ", ".join(f"{o * EPS:+g}" for o in OFFSETS)
    for ax, base, name in ((axes[0], prior_code, "prior sample z ~ N(0, I)"), (axes[1], encoded, "encoded test image")):
        show_images(ax, traversal(model, base, dims), len(OFFSETS), f"{name}\ncolumns: z_d {offsets}")
        ax.set_yticks([(i + 0.5) * 30 for i in range(len(dims))], [f"z{d}" for d in dims], fontsize=8)
    fig.suptitle(f"Latent traversals, dimensions {dims.start}-{dims.stop - 1}", fontsize=11)
    return save_figure(fig, path)


@torch.no_grad()
def interpolation_rows(model: VAE, z0: torch.Tensor, z1: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Top row decode(a z0 + (1-a) z1), bottom row a x0 + (1-a) x1, for a in ALPHAS: (22, 1, 28, 28)."""
    a = torch.tensor(ALPHAS, device=z0.device).view(-1, 1)  # (11, 1)
    latent = model.decode(a * z0 + (1 - a) * z1)  # (11, 1, 28, 28)
    pixel = a.view(-1, 1, 1, 1) * x0 + (1 - a.view(-1, 1, 1, 1)) * x1
    return torch.cat([latent, pixel])


def interpolation_figure(rows: torch.Tensor, title: str, path: Path) -> Path:
    fig, ax = subplots(figsize=(9, 2.3))
    show_images(ax, rows, len(ALPHAS), title)
    ax.set_xticks([(i + 0.5) * 30 for i in range(len(ALPHAS))], [f"{a:.1f}" for a in ALPHAS], fontsize=7)
    ax.set_xlabel("alpha")
    ax.set_yticks([15, 45], ["latent", "pixel"], fontsize=8)
    return save_figure(fig, path)


def first_of_class(test: TensorData, digit: int) -> torch.Tensor:
    return test.x[(test.y == digit).nonzero()[0, 0]]  # (1, 28, 28)


@torch.no_grad()
def render(model: VAE, history: list[EpochRecord], test: TensorData, out: Path, seed: int = 0) -> list[Path]:
    """All VAE figures into ``out``; returns their paths."""
    device = test.x.device
    g = torch.Generator(device).manual_seed(seed)
    latent = model.config.latent
    paths = [loss_curve(history, out / "f1_loss.png")]
    samples = model.decode(torch.randn(64, latent, generator=g, device=device))
    save_grid(samples, out / "f2_samples.png", nrow=8)
    paths.append(out / "f2_samples.png")
    prior_code = torch.randn(1, latent, generator=g, device=device)
    image = test.x[0]
    paths.append(traversal_figure(model, prior_code, image, range(0, min(10, latent)), out / "f3_traversals_0-9.png"))
    paths.append(traversal_figure(model, prior_code, image, range(10, min(20, latent)),
                                  out / "f4_traversals_10-19.png"))
    z0, z1 = torch.randn(2, 1, latent, generator=g, device=device)
    rows = interpolation_rows(model, z0, z1, model.decode(z0), model.decode(z1))
    paths.append(interpolation_figure(rows, "F5  interpolation between two prior codes: latent (top) vs pixel (bottom)",
                                      out / "f5_interpolation.png"))
    for number, (a, b) in enumerate(PAIRS, start=6):
        xa, xb = first_of_class(test, a), first_of_class(test, b)
        (za, zb), _ = model.encode(torch.stack([xa, xb]))
        rows = interpolation_rows(model, zb, za, xb.unsqueeze(0), xa.unsqueeze(0))  # alpha = 0 -> a, 1 -> b
        title = f"F{number}  test digit {a} -> {b}: latent (top) vs pixel (bottom) interpolation"
        paths.append(interpolation_figure(rows, title, out / f"f{number}_interp_{a}_{b}.png"))
    return paths
