"""The study's likelihood figure: where each diffusion model's variational bound spends its bits, from
:class:`~mnistgen.evaluation.likelihood.LikelihoodScores`' curves (bits per pixel per unit of t or of
log-SNR, the mean over the test images)."""

from __future__ import annotations

from pathlib import Path

from mnistgen.evaluation.likelihood import LikelihoodScores
from mnistgen.figures.plotting import save_figure, subplots

CAPTION = ("Where the variational bounds spend their bits: the DDPM's terms L_{t-1} per timestep (log axes; "
           "L_0, the decoder, is not drawn) and the CFG model's integrand 1/2 ||eps - eps-hat||^2 per unit of "
           "log-SNR, in bits per MNIST pixel, the mean over the test images. Their areas are the bounds' "
           "step parts in the table.")


def render(models: list[tuple[str, LikelihoodScores]], path: Path) -> Path:
    """One panel per model with a curve: (title, scores)."""
    drawn = [(title, s) for title, s in models if s.curve]
    fig, axes = subplots(1, len(drawn), figsize=(4.6 * len(drawn), 3.4), squeeze=False)
    for ax, (title, scores) in zip(axes[0], drawn):
        x, y = zip(*scores.curve)
        ax.plot(x, y, marker=".", lw=1)
        ax.set_yscale("log")
        if scores.curve_axis == "t":
            ax.set_xscale("log")
            ax.set_xlabel("t of the term L_{t-1} (Ho et al.'s numbering)")
            ax.set_ylabel("bits per pixel per step")
        else:
            ax.set_xlabel("log-SNR lambda")
            ax.set_ylabel("bits per pixel per unit of lambda")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
