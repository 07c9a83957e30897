"""`mnistgen reproduce`: train, evaluate and draw the whole study, then write one HTML report.

Layout of the study directory::

    DIR/vae/  DIR/ddpm/  DIR/cfg/   one run directory per model (config, checkpoints, ...)
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

from mnistgen.config import preset
from mnistgen.errors import UserError
from mnistgen.evaluation.run_metrics import evaluate_run
from mnistgen.figures.render import render_figures
from mnistgen.recipes import load_run, train
from mnistgen.training.checkpoint import completed_epochs
from mnistgen.training.rundir import RunDir

MODELS = ("vae", "ddpm", "cfg")


@dataclass(frozen=True)
class StudySettings:
    n_samples: int  # samples judged for MNIST-FD / accuracy
    sweep_samples: int  # samples per guidance weight in the sweep
    iwae_k: int
    sweep: tuple[float, ...] = (0.0, 0.3, 1.0, 2.0, 4.0)


SETTINGS = {
    "reference": StudySettings(n_samples=10_000, sweep_samples=2000, iwae_k=1000),
    "cpu": StudySettings(n_samples=1000, sweep_samples=300, iwae_k=200),
    "smoke": StudySettings(n_samples=100, sweep_samples=50, iwae_k=10),
}

CAPTIONS = {
    "f1_loss.png": "F1. VAE training and validation negative ELBO per epoch; dashed: the 104-nat target.",
    "f2_samples.png": "F2. 64 VAE samples decoded from z ~ N(0, I).",
    "f3_traversals_0-9.png": "F3. Latent traversals of dimensions 0-9 (offsets -4..+4) from a prior sample and "
                             "from an encoded test image.",
    "f4_traversals_10-19.png": "F4. Latent traversals of dimensions 10-19.",
    "f5_interpolation.png": "F5. Interpolating two codes in latent space (top) versus in pixel space (bottom).",
    "f6_interp_4_9.png": "F6. Latent interpolation between real test digits 4 and 9 (pixel blend below).",
    "f7_interp_5_6.png": "F7. Latent interpolation between real test digits 5 and 6.",
    "f8_interp_8_2.png": "F8. Latent interpolation between real test digits 8 and 2.",
    "f9_epochs.png": "F9. DDPM samples from four fixed noise seeds (rows) as training proceeds (columns).",
    "f10_samples.png": "F10. 64 samples from the final DDPM (EMA weights), the run's default sampler.",
    "f11_reverse_chain.png": "F11. Four ancestral reverse chains, state after steps t = 999 ... 0.",
    "ddim_vs_ancestral.png": "DDIM-20, DDIM-50 and ancestral-1000 from the same initial noise.",
    "f12_epochs.png": "F12. Class-conditional samples for labels 0-9 (rows) as training proceeds (columns).",
    "guidance_sweep.png": "Guidance sweep: samples per digit for w = 0 ... 4, and MNIST-FD / class accuracy "
                          "against w.",
}


def _finished(run: RunDir, epochs: int) -> bool:
    """Trained to the end, by the checkpoint (history.json may run ahead of it after a kill)."""
    newest = run.newest_checkpoint()
    return newest is not None and completed_epochs(newest)[0] >= epochs


def run_study(preset_name: str, out: Path, data_dir: str | os.PathLike | None, device: torch.device,
              show_progress: bool = True, log=print) -> Path:
    settings = SETTINGS[preset_name]
    for kind in MODELS:  # a study directory holds one preset: refused before any work
        run = RunDir(out / kind)
        if run.config.is_file() and (found := run.read_config().preset) != preset_name:
            raise UserError(f"{out} holds a {found!r} study; continue it with --preset {found} or choose another --out")
    for kind in MODELS:
        run = RunDir(out / kind)
        cfg = run.read_config() if run.config.is_file() else preset(kind, preset_name)  # a run keeps its settings
        trained = not _finished(run, cfg.train.epochs)
        if trained:
            log(f"[{kind}] training ({preset_name} preset)")
            resume = run.newest_checkpoint() is not None
            train(cfg, run.root, data_dir, device, resume=resume, show_progress=show_progress)
        else:
            log(f"[{kind}] trained already, skipping")
        metrics = run.read_metrics()
        if trained or "mnist_fd" not in metrics:
            log(f"[{kind}] evaluating")
            start = time.perf_counter()
            evaluate_run(run.root, device, data_dir, iwae_k=settings.iwae_k, n_samples=settings.n_samples,
                         guidance_sweep=list(settings.sweep) if kind == "cfg" else None,
                         sweep_samples=settings.sweep_samples)
            run.update_metrics(evaluation_seconds=round(time.perf_counter() - start, 1))
        log(f"[{kind}] figures")
        render_figures(run.root, device, data_dir)
    report = write_report(out, preset_name, device)
    log(f"report: {report}")
    return report


def _sampler_name(m: dict) -> str:
    """e.g. 'ddim-50, eta = 1', 'ancestral-1000', 'cfg-64'."""
    name = m["sampler"] + (f"-{m['steps']}" if m.get("steps") else "")
    return name + (f", eta = {m['eta']:g}" if m["sampler"] == "ddim" else "")


def _metrics_rows(out: Path) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for kind in MODELS:
        run = RunDir(out / kind)
        m = run.read_metrics()
        history = json.loads(run.history.read_text()) if run.history.is_file() else []
        if kind == "vae" and "val_neg_elbo" in m:
            rows.append(("VAE", "validation negative ELBO (nats)", f"{m['val_neg_elbo']:.2f}"))
            rows.append(("VAE", f"IWAE bound on -log p(x), k={m['iwae_k']} (nats)", f"{m['iwae_nll']:.2f}"))
        if "mnist_fd" in m:
            rows.append((kind.upper(), f"MNIST-FD, {m['n_samples']} samples, {_sampler_name(m)}",
                         f"{m['mnist_fd']:.2f}"))
            rows.append((kind.upper(), "classifier histogram of samples (digits 0-9)",
                         " ".join(str(c) for c in m["class_histogram"])))
            rows.append((kind.upper(), "sampling seconds per 100 samples", f"{m['seconds_per_100_samples']:.2f}"))
        if "class_accuracy" in m:
            rows.append(("CFG", f"class accuracy at w = {m['guidance']:g}", f"{100 * m['class_accuracy']:.1f}%"))
        for row in m.get("guidance_sweep", []):
            rows.append(("CFG", f"w = {row['guidance']:g}: MNIST-FD / class accuracy ({row['n_samples']} samples)",
                         f"{row['mnist_fd']:.2f} / {100 * row['class_accuracy']:.1f}%"))
        if history:
            seconds = sum(r["seconds"] for r in history)
            images = sum(r["images_per_s"] * r["seconds"] for r in history)
            rows.append((kind.upper(), f"training: {len(history)} epochs, seconds / images per s",
                         f"{seconds:.0f} s / {images / max(seconds, 1e-9):.0f}"))
    return rows


def write_report(out: Path, preset_name: str, device: torch.device) -> Path:
    """DIR/report.html: every figure with a caption, the metrics table, preset and device. Images are relative."""
    sections = []
    for kind, title in (("vae", "1. Variational autoencoder"), ("ddpm", "2. DDPM"),
                        ("cfg", "3. Classifier-free guidance")):
        figures = RunDir(out / kind).figures
        items = []
        for name, caption in CAPTIONS.items():
            if (figures / name).is_file():
                rel = f"{kind}/figures/{name}"
                items.append(f'<figure><img src="{rel}" alt="{html.escape(name)}">'
                             f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        sections.append(f"<h2>{title}</h2>\n" + "\n".join(items))
    rows = "\n".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td><td>{html.escape(c)}</td></tr>"
                     for a, b, c in _metrics_rows(out))
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device.type} " \
        f"({torch.get_num_threads()} threads)"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mnistgen study ({html.escape(preset_name)})</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 980px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 10px; }}
figure {{ display: inline-block; margin: 0.6em; vertical-align: top; max-width: 460px; }}
figure img {{ width: 100%; image-rendering: pixelated; }} figcaption {{ font-size: 0.85em; color: #444; }}
</style></head><body>
<h1>mnistgen study</h1>
<p>Preset <b>{html.escape(preset_name)}</b> on <b>{html.escape(device_name)}</b>, torch {torch.__version__},
written {time.strftime('%Y-%m-%d %H:%M')}. MNIST-FD is the Fr&eacute;chet distance between features of
mnistgen's own MNIST classifier (not Inception FID); compare it only with other mnistgen numbers.</p>
<h2>Metrics</h2>
<table><tr><th>model</th><th>metric</th><th>value</th></tr>
{rows}
</table>
{''.join(sections)}
</body></html>
"""
    path = out / "report.html"
    path.write_text(page)
    return path
