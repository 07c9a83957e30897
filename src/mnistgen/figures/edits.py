"""The study's editing figures, every model side by side: completions of half-hidden test digits, the
DDIM inversion round trip, and paths between two digits. Drawn from
:class:`~mnistgen.evaluation.edits.EditExamples`, one per model."""

from __future__ import annotations

from pathlib import Path

import torch

from mnistgen.evaluation.edits import EditExamples
from mnistgen.figures.plotting import save_figure, show_images, subplots

CAPTIONS = {
    "inpainting.png": "Inpainting: test digits with the lower half hidden (grey), each model's completion "
                      "(the VAE's fitted code, RePaint for the diffusion models, the CFG model unconditional and "
                      "guided to the true digit) and the truth. The upper half is kept exactly.",
    "inversion.png": "DDIM inversion (eta = 0): test digits, the noise x_T they invert to (shown through the "
                     "normal CDF, so that a standard normal draw looks uniformly grey) and x_T sampled back to an "
                     "image by the same deterministic sampler. The inverted noise keeps the digit's outline: it is "
                     "not a typical draw from the prior.",
    "interpolation.png": "Interpolation between two test digits: the VAE decodes points on the line between "
                         "their codes; the diffusion models invert both to noise, join the noises by slerp "
                         "and sample each point back.",
}


def _rows(fig_rows: list[tuple[str, torch.Tensor]], path: Path, nrow: int) -> Path:
    """One image strip per row, labelled on its left."""
    fig, axes = subplots(len(fig_rows), 1, figsize=(0.62 * nrow + 1.8, 0.78 * len(fig_rows)), squeeze=False)
    for ax, (label, images) in zip(axes[:, 0], fig_rows):
        show_images(ax, images, nrow)
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.subplots_adjust(hspace=0.08)
    return save_figure(fig, path)


def inpainting(examples: list[EditExamples], truth: torch.Tensor, mask: torch.Tensor, path: Path) -> Path:
    """Rows: the masked inputs, each model's completions (and guided ones), the truth (N, 1, 28, 28)."""
    rows = [("input", truth * mask + 0.35 * (1 - mask))]
    for e in examples:
        rows.append((f"{e.title}" if e.guided is None else f"{e.title}, unconditional", e.completions))
        if e.guided is not None:
            rows.append((f"{e.title}, guided to the digit", e.guided))
    rows.append(("truth", truth))
    return _rows(rows, path, len(truth))


def inversion(examples: list[EditExamples], truth: torch.Tensor, path: Path) -> Path:
    """Rows: the digits, then for each diffusion model its x_T (shown as Phi(x), cropped to 28 x 28) and the
    image sampled back from it."""
    rows = [("digit", truth)]
    for e in examples:
        if e.noise is None:
            continue
        pad = (e.noise.shape[-1] - 28) // 2
        shown = torch.special.ndtr(e.noise[..., pad: pad + 28, pad: pad + 28])  # standard normal -> uniform
        rows += [(f"{e.title}: x_T", shown), (f"{e.title}: back", e.round_trip)]
    return _rows(rows, path, len(truth))


def interpolation(examples: list[EditExamples], path: Path) -> Path:
    """For each pair, one row per model: the images along its path."""
    pairs = examples[0].paths.shape[0]
    rows = [(f"{e.title}, pair {p + 1}", e.paths[p]) for p in range(pairs) for e in examples]
    return _rows(rows, path, examples[0].paths.shape[1])


def render(examples: list[EditExamples], truth: torch.Tensor, mask: torch.Tensor, out: Path) -> list[Path]:
    """The three figures of :data:`CAPTIONS` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    return [inpainting(examples, truth, mask, out / "inpainting.png"), inversion(examples, truth, out / "inversion.png"),
            interpolation(examples, out / "interpolation.png")]
