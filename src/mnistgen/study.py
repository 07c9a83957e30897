"""`mnistgen reproduce`: train, evaluate and draw the whole study, then write one HTML report.

Layout of the study directory::

    DIR/vae/  DIR/ddpm/  DIR/cfg/   one run directory per model (config, checkpoints, ...)
    DIR/vae-grey/                   the VAE with a discretized-logistic decoder (likelihood of grey levels)
    DIR/edits/  DIR/likelihood/     figures that set the models side by side
    DIR/report.html                 figures with captions and a metrics table

Re-running resumes unfinished runs, skips finished ones and evaluations already done, and
draws the figures again.
"""

from __future__ import annotations

import html
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mnistgen import kinds
from mnistgen.config import RunConfig, preset
from mnistgen.errors import UserError
from mnistgen.files import refuse_links, write_atomic, write_json
from mnistgen.provenance import git_commit
from mnistgen.data.mnist import load as load_data
from mnistgen.evaluation.edits import EditRequest, EditScores
from mnistgen.evaluation.results import Likelihood, RunMetrics, SampleQuality, StepsPoint, read_metrics
from mnistgen.evaluation.likelihood import BitsPerDim, LikelihoodRequest
from mnistgen.figures import edits as edit_figures
from mnistgen.figures import likelihood as likelihood_figures
from mnistgen.images import named_mask
from mnistgen.kinds.edits import edit_examples
from mnistgen.diffusion.registry import parse_sampler
from mnistgen.kinds import EvaluationRequest
from mnistgen.runs import evaluate_run, load_run, render_figures, train
from mnistgen.storage.checkpoint import completed_epochs
from mnistgen.storage.rundir import RunDir

MODELS = kinds.GENERATIVE  # one run directory each, in this order


@dataclass(frozen=True)
class StudySettings:
    n_samples: int  # samples judged for MNIST-FD / accuracy
    sweep_samples: int  # samples per guidance weight in the sweep
    iwae_k: int
    edits: EditRequest  # the edit scores' test digits, pairs and DDIM levels
    likelihood: LikelihoodRequest  # bits per pixel: test images, the bounds' strata, the ODE's tolerance
    steps_sweep: tuple[int, ...]  # numbers of steps of the quality-per-evaluation curve (sweep_samples each)


SETTINGS = {
    "reference": StudySettings(n_samples=10_000, sweep_samples=2000, iwae_k=1000, edits=EditRequest(1000, 100, 100),
                               likelihood=LikelihoodRequest(images=1000), steps_sweep=(10, 20, 50, 100)),
    "cpu": StudySettings(n_samples=1000, sweep_samples=300, iwae_k=200, edits=EditRequest(200, 50, 100),
                         likelihood=LikelihoodRequest(images=200, iwae_k=200), steps_sweep=(5, 10, 20, 50)),
    "smoke": StudySettings(n_samples=100, sweep_samples=50, iwae_k=10, edits=EditRequest(10, 2, 10),
                           likelihood=LikelihoodRequest(images=4, strata=4, tolerance=1e-2, iwae_k=4, batch=4),
                           steps_sweep=(2, 5)),
}
EDITS = "edits"  # DIR/edits/: the editing figures, every model side by side
LIKELIHOOD = "likelihood"  # DIR/likelihood/: where the diffusion models' bounds spend their bits
GREY = "-grey"  # DIR/<kind>-grey/: a kind's grey-level variant (the VAE's discretized-logistic decoder)


def grey_runs(preset_name: str) -> list[tuple[str, str]]:
    """(folder, kind) of each kind whose study run does not score grey levels and has a variant that does
    (:meth:`~mnistgen.kinds.base.ModelKind.grey_level_variant`)."""
    return [(kind + GREY, kind) for kind in MODELS
            if kinds.get(kind).grey_level_variant(preset(kind, preset_name)) is not None]


TERMS_FIGURE = "bound_terms.png"

CAPTIONS = {name: caption for kind in MODELS for name, caption in kinds.get(kind).captions.items()}


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{device.type} ({torch.get_num_threads()} threads)"


def write_provenance(out: Path, preset_name: str, device: torch.device) -> None:
    """DIR/provenance.json, once, when the study starts: what made it (shipped models cite it)."""
    path = out / "provenance.json"
    if not path.is_file():
        write_json(path, {"command": f"mnistgen reproduce --preset {preset_name}", "commit": git_commit(),
                          "device": f"{device_name(device)}, torch {torch.__version__}",
                          "started": time.strftime("%Y-%m-%d %H:%M")})


def read_provenance(out: Path) -> dict:
    path = Path(out) / "provenance.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _finished(run: RunDir, epochs: int) -> bool:
    """Trained to the end, by the checkpoint (history.json may run ahead of it after a kill)."""
    newest = run.newest_checkpoint()
    return newest is not None and completed_epochs(newest)[0] >= epochs


def check_study(preset_name: str, out: Path) -> None:
    """Refuse a study directory that cannot be continued with this preset, before any work."""
    grey = [name for name, _ in grey_runs(preset_name)]
    refuse_links(out, (*MODELS, *grey, EDITS, LIKELIHOOD))  # a linked folder would send every write there
    for name in (*MODELS, *grey):  # a study directory holds one preset: refused before any work
        run = RunDir(out / name)
        if run.config.is_file() and (found := run.read_config().preset) != preset_name:
            raise UserError(f"{out} holds a {found!r} study; continue it with --preset {found} or choose another --out")
        run.check_no_links()
        run.newest_checkpoint()  # every checkpoint the study will open is read (weights-only) before any work


def study_model(kind: str, preset_name: str, out: Path, data_dir: str | os.PathLike | None, device: torch.device,
                show_progress: bool = True, log=print, name: str | None = None, figures: bool = True) -> None:
    """One model's part of the study: train it (or resume, or skip a finished run), evaluate it
    unless its metrics are current, draw its figures. The parts of different models are independent.
    ``name``: the run's folder (default the kind; see :func:`grey_runs`)."""
    name = name or kind
    settings = SETTINGS[preset_name]
    run = RunDir(out / name)
    config = run.read_config() if run.config.is_file() else study_config(kind, preset_name, name)  # a run keeps
    trained = not _finished(run, config.train.epochs)  # its settings
    if trained:
        log(f"[{name}] training ({preset_name} preset)")
        resume = run.newest_checkpoint() is not None
        train(config, run.root, data_dir, device, resume=resume, show_progress=show_progress)
    else:
        log(f"[{name}] trained already, skipping")
    current = read_metrics(run)
    samplers = tuple(parse_sampler(s) for s in kinds.get(kind).study_samplers) or None
    if trained or current.quality is None or current.edits is None or current.bits is None or (
            samplers and current.steps_sweep is None):
        log(f"[{name}] evaluating")
        sweep = kinds.get(kind).sweep_weights or None
        evaluate_run(run.root, device, data_dir, EvaluationRequest(
            n_samples=settings.n_samples, iwae_k=settings.iwae_k, guidance_sweep=sweep,
            sweep_samples=settings.sweep_samples if sweep or samplers else None,
            steps_sweep=settings.steps_sweep if samplers else None, samplers=samplers, progress=show_progress,
            edits=settings.edits, likelihood=settings.likelihood))
    if figures:
        log(f"[{name}] figures")
        render_figures(run.root, device, data_dir)


def study_config(kind: str, preset_name: str, name: str) -> RunConfig:
    """The preset of ``kind``; for a grey-level run (:func:`grey_runs`), the kind's variant of it."""
    config = preset(kind, preset_name)
    return kinds.get(kind).grey_level_variant(config) if name.endswith(GREY) else config


def run_study(preset_name: str, out: Path, data_dir: str | os.PathLike | None, device: torch.device,
              show_progress: bool = True, log=print, models: tuple[str, ...] = MODELS) -> Path | None:
    """The study's models in order, then the report (only when ``models`` is all of them)."""
    check_study(preset_name, out)
    write_provenance(out, preset_name, device)
    for kind in models:
        study_model(kind, preset_name, out, data_dir, device, show_progress, log)
    if tuple(models) != MODELS:
        return None
    for name, kind in grey_runs(preset_name):
        study_model(kind, preset_name, out, data_dir, device, show_progress, log, name=name, figures=False)
    log("[edits] figures")
    draw_edits(out, data_dir, device, SETTINGS[preset_name].edits)
    log("[likelihood] figure")
    likelihood_figures.render([(kinds.get(kind).title, read_metrics(RunDir(out / kind)).bits) for kind in MODELS
                               if read_metrics(RunDir(out / kind)).bits is not None], out / LIKELIHOOD / TERMS_FIGURE)
    report = write_report(out, preset_name, device)
    log(f"report: {report}")
    return report


def draw_edits(out: Path, data_dir: str | os.PathLike | None, device: torch.device, request: EditRequest) -> list[Path]:
    """DIR/edits/: each model's edits side by side (:mod:`mnistgen.figures.edits`) of the first test digit
    of each class, with the ``request.mask`` half hidden, and its paths between two 3s and from a 1 to a 7."""
    test = load_data("test", "unit", data_dir=data_dir)
    first = [int((test.y == d).nonzero()[0]) for d in range(10)]
    x, y = test.x[first], test.y[first]  # (10, 1, 28, 28), (10,)
    threes = (test.y == 3).nonzero().flatten()
    pairs = [(test.x[threes[0]: threes[0] + 1], test.x[threes[1]: threes[1] + 1]),
             (x[1:2], x[7:8])]
    mask = named_mask(request.mask)
    examples = [edit_examples(kinds.get(kind), load_run(out / kind, device, generative=True), x, y, mask, pairs,
                              request.seed, request.inversion_steps) for kind in MODELS]
    return edit_figures.render(examples, x, mask, out / EDITS)


def metric_rows(m: RunMetrics) -> list[tuple[str, str]]:
    """A run's metrics as (metric, value) lines: the report's table and the shipped models' cards."""
    rows = _likelihood_rows(m.likelihood) if m.likelihood is not None else []
    rows += _quality_rows(m.quality) if m.quality is not None else []
    for p in m.guidance_sweep or ():
        kid = p.kid is not None
        recall = p.recall is not None
        rows.append((f"w = {p.guidance:g}: MNIST-FD / class accuracy{' / KID' if kid else ''}"
                     f"{' / recall' if recall else ''} ({p.n_samples} samples)",
                     f"{p.mnist_fd:.2f} / {100 * p.class_accuracy:.1f}%" + (f" / {p.kid:.2f} ± {p.kid_std:.2f}"
                                                                           if kid else "")
                     + (f" / {p.recall:.3f}" if recall else "")))
    rows += [_steps_row(p) for p in m.steps_sweep or ()]
    rows += _edit_rows(m.edits) if m.edits is not None else []
    return rows + (_bits_rows(m.bits.rows) if m.bits is not None else [])


def _steps_row(p: StepsPoint) -> tuple[str, str]:
    accuracy = f" / {100 * p.class_accuracy:.1f}%" if p.class_accuracy is not None else ""
    return (f"{p.line}, {p.steps} steps ({p.n_samples} samples): MNIST-FD / KID / precision / recall"
            f"{' / class accuracy' if accuracy else ''} / s per 100 samples",
            f"{p.mnist_fd:.2f} ± {p.mnist_fd_std:.2f} / {p.kid:.2f} ± {p.kid_std:.2f} / {p.precision:.3f} / "
            f"{p.recall:.3f}{accuracy} / {p.seconds_per_100_samples:.2f}")


def _bits_rows(rows: tuple[BitsPerDim, ...]) -> list[tuple[str, str]]:
    return [(f"bits per pixel: {r.name} ({r.images} test images, {r.seconds:.0f} s)",
             f"{r.bits_per_dim:.3f} ± {r.standard_error:.3f}") for r in rows]


def _edit_rows(e: EditScores) -> list[tuple[str, str]]:
    where = f"{e.digits} test digits, {e.mask} half hidden"
    moved = f" (the method alone: {e.method_known_max_diff:.4f})" if e.method_known_max_diff is not None else ""
    rows = [(f"inpainting ({e.method}), {where}: largest change of a known pixel", f"{e.known_max_diff:.4f}{moved}"),
            (f"inpainting, {where}: read as the true digit" + (" (unconditional)" if e.guided_accuracy is not None
                                                                 else ""), f"{100 * e.accuracy:.1f}%")]
    if e.guided_accuracy is not None:
        rows += [(f"inpainting guided to the true digit, w = {e.guidance:g}: read as it",
                  f"{100 * e.guided_accuracy:.1f}%"),
                 (f"inpainting guided to (y + 1) mod 10, w = {e.guidance:g}: read as that digit",
                  f"{100 * e.other_label_share:.1f}%")]
    if e.inversion_psnr is not None:
        rows.append((f"DDIM inversion round trip, {e.inversion_steps} steps: mean PSNR", f"{e.inversion_psnr:.1f} dB"))
    rows.append((f"interpolation, {e.interpolation_pairs} same-class pairs: midpoints that keep the class",
                 f"{100 * e.midpoints_keep_class:.1f}%"))
    return rows


def _likelihood_rows(like: Likelihood) -> list[tuple[str, str]]:
    rows = [("negative ELBO, grey-level test images (nats; the study's validation set)", f"{like.val_neg_elbo:.2f}"),
            (f"IWAE bound on -log p(x), k = {like.iwae_k}, grey-level test images (nats)", f"{like.iwae_nll:.2f}")]
    if like.binarized_iwae_nll is not None:
        rows += [("negative ELBO, dynamically binarized test images (nats)", f"{like.binarized_neg_elbo:.2f}"),
                 (f"IWAE bound, k = {like.iwae_k}, dynamically binarized test images (nats; the test protocol "
                  f"of published numbers)", f"{like.binarized_iwae_nll:.2f}")]
    return rows


def _quality_rows(q: SampleQuality) -> list[tuple[str, str]]:
    fd = f"{q.mnist_fd:.2f}"
    if q.fd_spread is not None:
        fd += f" ± {q.fd_spread.std:.2f}" + (f" (FD_inf {q.fd_spread.at_infinity:.2f})"
                                             if q.fd_spread.at_infinity is not None else "")
    rows = [(f"MNIST-FD ± bootstrap std, {q.n_samples} samples, {q.settings.describe()}", fd)]
    if q.kid is not None:
        rows.append((f"KID ± std over {q.kid.subsets} subsets of {q.kid.subset_size}",
                     f"{q.kid.mean:.2f} ± {q.kid.std:.2f}"))
    if q.prdc is not None:
        p = q.prdc
        rows.append((f"precision / recall / density / coverage (k = {p.k})",
                     f"{p.precision:.3f} / {p.recall:.3f} / {p.density:.3f} / {p.coverage:.3f}"))
    rows.append(("classifier histogram of samples (digits 0-9)", " ".join(map(str, q.class_histogram))))
    rows.append(("sampling seconds per 100 samples", f"{q.seconds_per_100_samples:.2f}"))
    if q.class_accuracy is not None:
        rows.append((f"class accuracy at w = {q.settings.guidance:g}", f"{100 * q.class_accuracy:.1f}%"))
    if q.coverage_per_class is not None:
        rows.append(("coverage of each digit's test images (0-9)", " ".join(f"{c:.2f}" for c in q.coverage_per_class)))
    return rows


def _metrics_rows(out: Path, preset_name: str) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    titled = [(kind, kinds.get(kind).title) for kind in MODELS]
    grey = [(name, f"{kinds.get(kind).title} (grey-level decoder)") for name, kind in grey_runs(preset_name)]
    for kind, title in titled + grey:
        run = RunDir(out / kind)
        if not run.metrics.is_file():
            continue
        rows += [(title, metric, value) for metric, value in metric_rows(read_metrics(run))]
        history = run.read_history()
        if history:
            seconds = sum(r.seconds for r in history)
            images = sum(r.images_per_s * r.seconds for r in history)
            dtypes = ", ".join(dict.fromkeys(r.compute_dtype or "dtype not recorded" for r in history))
            rows.append((title, f"training: {len(history)} epochs ({dtypes}), seconds / images per s",
                         f"{seconds:.0f} s / {images / max(seconds, 1e-9):.0f}"))
    return rows


LIKELIHOOD_TEXT = """<p>The metrics table gives each model's -log<sub>2</sub> P(x) per MNIST pixel (784 per digit) on 8-bit
test digits, with its standard error over the images. The DDPM's variational bound is Ho et al.'s eq. 5 term by
term; the CFG model's is the continuous-time bound of Kingma et al. 2021, with its decoder at the process's end
(its largest log-SNR) and at the level where it is lowest on 200 training images; the probability-flow ODE gives
a density of dequantized digits, turned into a bound on the grey levels by adding log(255 / 2) nats per
dimension. A diffusion model of digits padded to 32x32 describes the border too: its numbers include the
border's cost, and so bound the 28x28 digit's from above. The VAE with a discretized-logistic decoder
(vae-grey) scores the same grey levels; the Bernoulli decoder of the study's VAE describes only binarized
digits, a different protocol. Published results on dequantized MNIST (FFJORD's Table 2): RealNVP 1.06,
Glow 1.05, FFJORD 0.99 bits per pixel.</p>"""


def write_report(out: Path, preset_name: str, device: torch.device) -> Path:
    """DIR/report.html: every figure with a caption, the metrics table, preset and device. Images are relative."""
    sections = []
    for number, kind in enumerate(MODELS, start=1):
        figures = RunDir(out / kind).figures
        items = []
        for name, caption in kinds.get(kind).captions.items():
            if (figures / name).is_file():
                rel = f"{kind}/figures/{name}"
                items.append(f'<figure><img src="{rel}" alt="{html.escape(name)}">'
                             f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        sections.append(f"<h2>{number}. {html.escape(kinds.get(kind).long_title)}</h2>\n" + "\n".join(items))
    items = [f'<figure><img src="{EDITS}/{name}" alt="{html.escape(name)}"><figcaption>{html.escape(caption)}'
             f"</figcaption></figure>" for name, caption in edit_figures.CAPTIONS.items() if (out / EDITS / name).is_file()]
    if items:
        sections.append(f"<h2>{len(MODELS) + 1}. Editing with the trained models</h2>\n" + "\n".join(items))
    if (out / LIKELIHOOD / TERMS_FIGURE).is_file():
        sections.append(f"<h2>{len(MODELS) + 2}. Likelihood in bits per pixel</h2>\n{LIKELIHOOD_TEXT}\n"
                        f'<figure><img src="{LIKELIHOOD}/{TERMS_FIGURE}" alt="{TERMS_FIGURE}">'
                        f"<figcaption>{html.escape(likelihood_figures.CAPTION)}</figcaption></figure>")
    rows = "\n".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td><td>{html.escape(c)}</td></tr>"
                     for a, b, c in _metrics_rows(out, preset_name))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mnistgen study ({html.escape(preset_name)})</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 980px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 10px; }}
figure {{ display: inline-block; margin: 0.6em; vertical-align: top; max-width: 460px; }}
figure img {{ width: 100%; image-rendering: pixelated; }} figcaption {{ font-size: 0.85em; color: #444; }}
</style></head><body>
<h1>mnistgen study</h1>
<p>Preset <b>{html.escape(preset_name)}</b> on <b>{html.escape(device_name(device))}</b>, torch {torch.__version__},
written {time.strftime('%Y-%m-%d %H:%M')}. MNIST-FD is the Fr&eacute;chet distance between features of
mnistgen's own MNIST classifier (not Inception FID); compare it only with other mnistgen numbers. KID,
precision, recall, density and coverage use the same features; KID does not depend on the sample count.
The VAE's grey-level likelihoods score grey pixels under a Bernoulli decoder and are not comparable with
published numbers; the binarized ones are.</p>
<h2>Metrics</h2>
<table><tr><th>model</th><th>metric</th><th>value</th></tr>
{rows}
</table>
{''.join(sections)}
</body></html>
"""
    path = out / "report.html"
    write_atomic(path, page.encode())
    return path
