"""The shipped form of a finished study: ``mnistgen export STUDY --to DIR`` and the model cards."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import fields
from pathlib import Path

import torch

from mnistgen import kinds
from mnistgen.config import RunConfig
from mnistgen.errors import UserError
from mnistgen.evaluation.results import RunMetrics, read_metrics
from mnistgen.files import check_writable_dir, fresh_dir, markdown_text, refuse_links, write_atomic
from mnistgen.kinds import TrainedModel
from mnistgen.runs import load_run
from mnistgen.study import MODELS, metric_rows, read_provenance
from mnistgen.storage.rundir import RunDir
from mnistgen.weightfiles import MANIFEST_NAME, WEIGHTS_NAME, read_manifest, save_weights, write_manifest


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
    if process is None:
        return []
    parts = [f"the network predicts {process.prediction}"
             + ("" if process.prediction == "eps" else " (converted to eps and x_0 by the denoiser)")]
    parts += [f"{f.name.replace('_', ' ')} {getattr(process, f.name)}" for f in fields(process)
              if f.name in ("loss_weighting", "t_distribution")]
    return ["- objective: " + "; ".join(parts)]


def _data_line(data) -> str:
    """Which images trained the model and which ones its validation loss was measured on."""
    held = data.holdout if data.validation == "holdout" else 0
    trained = f"MNIST training set ({60_000 - held:,} images" + (f", first {data.train_limit:,}" if data.train_limit else "")
    if held:
        return trained + f"); validation loss on {data.val_limit or held:,} training images held out (never trained on)"
    return trained + f"); validation loss on {data.val_limit or 10_000:,} test images (the study's protocol)"


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
             f"- data: {_data_line(config.data)}",
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
