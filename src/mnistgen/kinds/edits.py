"""Scoring a trained model's edits on test digits (``evaluate --edits``): each part asks the model's
kind to edit (:meth:`~mnistgen.kinds.base.ModelKind.inpaint`, ``invert``, ``from_noise``,
``interpolate``) and the judge to read the result. Which parts apply follows from what the kind can do:
guided completions for guided kinds, the DDIM round trip for iterative (diffusion) kinds.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from mnistgen.data.mnist import TensorData
from mnistgen.diffusion.samplers import SamplerSettings
from mnistgen.errors import UserError
from mnistgen.evaluation.edits import (EditExamples, EditRequest, EditScores, in_chunks, known_max_diff, psnr, read_as,
                                       same_class_pairs, share)
from mnistgen.images import named_mask, paste_known
from mnistgen.kinds.base import ModelKind, TrainedModel
from mnistgen.progress import long_step

MOST_DIGITS = 10_000  # the MNIST test set
MOST_PAIRS = 400  # 40 per digit: every digit has more than 80 test images


def check_edit_request(kind: ModelKind, config, request: EditRequest) -> None:
    """Refuse, in one line before any work, a kind that cannot edit and counts out of range."""
    kind.check_edit(config, False, None, None)
    for flag, value, high in (("--edit-digits", request.digits, MOST_DIGITS), ("--edit-pairs", request.pairs, MOST_PAIRS)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise UserError(f"{flag} must be a whole number in [1, {high}], got {value!r}")
    if kind.iterative:
        most = kind.step_limit(config)
        steps = request.inversion_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= most:
            raise UserError(f"--inversion-steps must be a whole number in [1, {most}], got {steps!r}")


def score_edits(kind: ModelKind, trained: TrainedModel, request: EditRequest, judge: torch.nn.Module,
                test: TensorData, progress: bool = True) -> EditScores:
    """:class:`EditScores` of the model on the first ``request.digits`` digits of ``test`` ([0, 1] scale)
    with the ``request.mask`` half hidden: unguided completions (guided kinds: also guided to the true
    digit and to (y + 1) mod 10 with the run's weight), the DDIM round trip (diffusion kinds), and the
    midpoints of ``request.pairs`` same-class pairs of the whole test set. Each part draws from its own
    generator seeded with ``request.seed``."""
    start = time.perf_counter()
    config, model, device, process = trained.config, trained.model, trained.device, trained.process
    x, y = test.x[: request.digits].to(device), test.y[: request.digits].to(device)
    mask = named_mask(request.mask).to(device)  # (1, 1, 28, 28)
    repaint = kind.check_edit(config, False, None, None)

    moved: list[float] = []  # how far the method itself moved known pixels, before they are pasted back

    def complete(labels: torch.Tensor | None = None, guidance: float | None = None) -> torch.Tensor:
        g = torch.Generator(device).manual_seed(request.seed)
        with long_step(f"inpainting ({'guided' if labels is not None else 'unguided'})", len(x), progress):
            out = in_chunks(lambda xs, ls: kind.inpaint(config, model, xs, mask, g, ls, guidance, repaint, process),
                            x, labels)
        moved.append(known_max_diff(out, x, mask))
        return paste_known(x, mask, out)  # (N, 1, 28, 28): what Model.inpaint returns

    with torch.no_grad():
        out = complete()
        scores = EditScores(len(x), request.mask, kind.edit_method(repaint), known_max_diff(out, x, mask),
                            share(read_as(judge, out), y))
        if kind.guided:
            scores = _guided(kind, config, scores, complete, judge, x, y, mask)
        scores = replace(scores, method_known_max_diff=max(moved))
        if kind.iterative:
            scores = _round_trip(kind, trained, request, scores, x, y, progress)
        a, b = same_class_pairs(test.y, request.pairs)
        half = torch.tensor([0.5])
        with long_step("interpolation midpoints", len(a), progress, unit="pair"):
            mids = torch.cat([kind.interpolate(config, model, test.x[i: i + 1].to(device), test.x[j: j + 1].to(device),
                                               half, request.inversion_steps, None, process)
                              for i, j in zip(a.tolist(), b.tolist())])  # (P, 1, 28, 28)
    return replace(scores, interpolation_pairs=len(a), midpoints_keep_class=share(read_as(judge, mids), test.y[a]),
                   seconds=round(time.perf_counter() - start, 1))


def _guided(kind: ModelKind, config, scores: EditScores, complete, judge, x, y, mask) -> EditScores:
    """Completions guided to the true digit, and to (y + 1) mod 10, with the run's guidance weight."""
    w = kind.resolve(config, SamplerSettings()).guidance
    true, other = (y, complete(y, w)), ((y + 1) % 10, complete((y + 1) % 10, w))
    worst = max(scores.known_max_diff, *(known_max_diff(out, x, mask) for _, out in (true, other)))
    return replace(scores, known_max_diff=worst, guidance=w, guided_accuracy=share(read_as(judge, true[1]), true[0]),
                   other_label_share=share(read_as(judge, other[1]), other[0]))


def _round_trip(kind: ModelKind, trained: TrainedModel, request: EditRequest, scores: EditScores,
                x: torch.Tensor, y: torch.Tensor, progress: bool) -> EditScores:
    """DDIM inversion then DDIM back (eta = 0) on ``request.inversion_steps`` levels; labelled kinds
    conditioned on the true digit. The mean PSNR of the round trip."""
    config, model, process, k = trained.config, trained.model, trained.process, request.inversion_steps
    labels = y if kind.takes_labels else None

    def trip(xs: torch.Tensor, ls: torch.Tensor | None) -> torch.Tensor:
        return kind.from_noise(config, model, kind.invert(config, model, xs, k, ls, process), k, ls, process)

    with long_step(f"DDIM round trip ({k} steps)", len(x), progress):
        back = in_chunks(trip, x, labels)
    return replace(scores, inversion_steps=k, inversion_psnr=psnr(back.cpu(), x.cpu()).mean().item())


def edit_examples(kind: ModelKind, trained: TrainedModel, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
                  pairs: list[tuple[torch.Tensor, torch.Tensor]], seed: int = 0, inversion_steps: int = 100,
                  frames: int = 9) -> EditExamples:
    """The model's edits of ``x`` (N, 1, 28, 28) in [0, 1] with labels ``y`` (N,) for the figures:
    completions where ``mask`` is 0 (guided kinds: also guided to ``y``), the DDIM round trip (diffusion
    kinds), and ``frames`` images along the path between each pair of images (each (1, 1, 28, 28))."""
    config, model, device, process = trained.config, trained.model, trained.device, trained.process
    x, y, mask = x.to(device), y.to(device), mask.to(device)
    repaint = kind.check_edit(config, False, None, None)

    def complete(labels=None, guidance=None) -> torch.Tensor:
        g = torch.Generator(device).manual_seed(seed)
        return paste_known(x, mask, kind.inpaint(config, model, x, mask, g, labels, guidance, repaint, process)).cpu()

    with torch.no_grad():
        completions = complete()
        guided = complete(y, kind.resolve(config, SamplerSettings()).guidance) if kind.guided else None
        noise = back = None
        if kind.iterative:
            labels = y if kind.takes_labels else None
            noise = kind.invert(config, model, x, inversion_steps, labels, process)
            back = kind.from_noise(config, model, noise, inversion_steps, labels, process).cpu()
            noise = noise.cpu()
        fractions = torch.linspace(0, 1, frames)
        paths = torch.stack([kind.interpolate(config, model, a.to(device), b.to(device), fractions, inversion_steps,
                                              None, process).cpu() for a, b in pairs])
    return EditExamples(kind.title, completions, guided, noise, back, paths)
