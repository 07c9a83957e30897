"""A run directory's life: train (or resume) it, load its model, evaluate it, draw its figures.

Each step asks the run's model kind (``mnistgen.kinds``) for what differs between models; the
training loop, checkpoints and the run directory are shared. The command line, the study and the
Python API call these functions.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import torch

from mnistgen import kinds
from mnistgen.config import RECORDING_ONLY, RunConfig, differences, flat_config
from mnistgen.data.mnist import TensorData
from mnistgen.data.mnist import load as load_data
from mnistgen.errors import Interrupted, UserError
from mnistgen.evaluation.edits import EditRequest, EditScores
from mnistgen.evaluation.fd import load_classifier
from mnistgen.evaluation.likelihood import LikelihoodRequest, LikelihoodScores
from mnistgen.evaluation.metrics import reference_set
from mnistgen.evaluation.results import RunMetrics, read_metrics
from mnistgen.files import check_writable_dir
from mnistgen.kinds import EvaluationRequest, TrainedModel
from mnistgen.kinds.edits import check_edit_request, score_edits
from mnistgen.kinds.likelihood import check_likelihood_request, score_likelihood
from mnistgen.provenance import source_version
from mnistgen.training import device as policy
from mnistgen.training import distributed
from mnistgen.storage.checkpoint import describe_error, load_checkpoint, load_weights
from mnistgen.training.device import pick_device
from mnistgen.training.ema import sampling_weights
from mnistgen.storage.rundir import EpochRecord, RunDir
from mnistgen.training.tensorboard import TensorBoardLog, require_tensorboard, tensorboard_installed, write_hparams
from mnistgen.training.trainer import Objective, StopRequest, Trainer
from mnistgen.weightfiles import WEIGHTS_NAME, read_weights, verify_manifest


def check_resume(run: RunDir, config: RunConfig) -> None:
    """``--resume`` continues the run in ``run`` with its own settings: it needs a checkpoint, and any
    setting that differs from its config.json is refused, listed, except ``train.epochs`` raised above
    the run's (the run is extended; a cosine schedule then decays over the new length)."""
    if not run.has_checkpoint():
        raise UserError(f"{run.root} has no checkpoint to resume; leave out --resume to start a new run there")
    saved = run.read_config()
    if saved.kind != config.kind:
        raise UserError(f"{run.root} holds a {saved.kind!r} run, not {config.kind!r}")
    newest = run.newest_checkpoint()
    trained_with = RunConfig.from_dict(load_checkpoint(newest, config.kind, mmap=True)["config"])
    edited = {k: v for k, v in differences(trained_with, saved).items() if k not in ("train.epochs", *RECORDING_ONLY)}
    if edited:
        listed = "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in sorted(edited.items()))
        raise UserError(f"{run.config} was edited after {newest.name} was written ({listed}); "
                        f"restore it, or pass a larger --epochs to extend the run")
    changed = {k: v for k, v in differences(saved, config).items() if k not in RECORDING_ONLY}
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


def build_trainer(config: RunConfig, out: str | os.PathLike, device: torch.device | None = None,
                  data_dir: str | os.PathLike | None = None, *, data: tuple[TensorData, TensorData] | None = None,
                  objective: Objective | None = None, preview: bool = True, show_progress: bool = False) -> Trainer:
    """A :class:`Trainer` for a run of ``config`` in ``out``, all parts from the run's kind: the network
    (initialised under ``train.seed``), its objective, the train / validation splits (or ``data``) and the
    per-epoch preview. It neither resumes nor writes anything until it is fitted."""
    device = device or torch.device("cpu")
    kind = kinds.get(config.kind)
    train_data, val_data = data or tuple(kind.load_data(config, split, data_dir, device) for split in ("train", "validation"))
    torch.manual_seed(config.train.seed)
    model = kind.build_model(config).to(device)
    objective = objective or kind.build_objective(config, device)
    drawn = kind.preview(config, kind.build_process(config, device)) if preview else None
    log = TensorBoardLog(RunDir(Path(out)).tensorboard) if config.train.tensorboard and distributed.rank() == 0 else None
    return Trainer(model, objective, train_data, val_data, config, RunDir(Path(out)), drawn, show_progress, log)


def train(config: RunConfig, out: Path, data_dir: str | os.PathLike | None = None,
          device: torch.device | None = None, resume: bool = False, show_progress: bool = True) -> list[EpochRecord]:
    """Train a run of ``config`` in ``out``, or continue it there with ``resume`` (see :func:`check_resume`).
    Everything is checked before any work starts; rank 0 holds the run directory's lock meanwhile."""
    device = device or pick_device("auto")
    kind = kinds.get(config.kind)
    run = RunDir(Path(out))
    check_writable_dir(run.root, "run directory")
    run.check_no_links()
    if config.train.tensorboard:
        require_tensorboard()
    check_resume(run, config) if resume else _check_new_run(run)
    main = distributed.is_main_process()
    with StopRequest() as stop:  # SIGINT / SIGTERM from here on end with a checkpoint and one line
        train_data, val_data = (kind.load_data(config, split, data_dir, device) for split in ("train", "validation"))
        if stop.signal is not None:
            raise Interrupted(f"interrupted by {signal.Signals(stop.signal).name} before training started; "
                              f"nothing was written", stop.signal)
        with run.locked() if main else contextlib.nullcontext():  # the run directory appears here
            check_resume(run, config) if resume else _check_new_run(run)  # again: nothing raced in meanwhile
            if main:
                run.remove_stale_temp_files()
            policy.configure_backends(device, config.train.tf32)
            trainer = build_trainer(config, run.root, device, data=(train_data, val_data),
                                    show_progress=show_progress)
            if resume:
                trainer.resume()
            if main:
                if show_progress:
                    print(f"{config.kind}: training on {policy.describe(device, trainer.amp_dtype)}")
                run.write_config(config)
            return trainer.fit(stop)


def load_run(path: str | os.PathLike, device: torch.device | None = None, kind: str | None = None,
             checkpoint: Path | None = None, generative: bool = False) -> TrainedModel:
    """A run's settings and its sampling weights from its newest checkpoint (or ``checkpoint``), or from
    an exported model folder's ``model.safetensors`` (checked against its manifest first); ``kind``
    refuses a run of another kind, ``generative=True`` one that does not generate."""
    run = RunDir(Path(path))
    if not run.root.is_dir():
        raise UserError(f"run directory {run.root} does not exist")
    exported = checkpoint is None and not run.has_checkpoint() and (run.root / WEIGHTS_NAME).is_file()
    if exported:  # before config.json is parsed: a changed byte is named first
        verify_manifest(run.root, EXPORTED_READS)
    config = run.read_config()
    model_kind = kinds.get(config.kind)
    if generative and not model_kind.generative:
        raise UserError(f"{run.root} holds a {config.kind!r} run; this command needs one of "
                        f"{', '.join(kinds.GENERATIVE)}")
    if kind is not None and config.kind != kind:
        raise UserError(f"{run.root} holds a {config.kind!r} run, not a {kind!r} run")
    device = device or torch.device("cpu")
    weights, history, source = _exported_weights(run, config) if exported else _checkpoint_weights(run, config,
                                                                                                    checkpoint)
    model = model_kind.build_model(config).to(device)
    load_weights(model, weights, source)
    model.eval()
    return TrainedModel(config, model, model_kind.build_process(config, device), history, run)


EXPORTED_READS = [WEIGHTS_NAME, "config.json", "history.json"]  # what loading an exported folder reads


def _exported_weights(run: RunDir, config: RunConfig) -> tuple[dict, tuple[EpochRecord, ...], Path]:
    """(weights, history, file) of an exported model folder."""
    path = run.root / WEIGHTS_NAME
    stored = read_weights(path, config.kind)
    try:
        history = tuple(run.read_history())
    except (ValueError, TypeError, AttributeError) as e:
        raise UserError(f"{run.history} is unreadable ({describe_error(e)})") from None
    return stored.tensors, history, path


def _checkpoint_weights(run: RunDir, config: RunConfig,
                        checkpoint: Path | None) -> tuple[dict, tuple[EpochRecord, ...], Path]:
    """(sampling weights, history, file) of a run's newest checkpoint (or ``checkpoint``)."""
    checkpoint = checkpoint or run.newest_checkpoint()
    if checkpoint is None:
        raise UserError(f"{run.root} has no checkpoint yet; train it first")
    state = load_checkpoint(checkpoint, config.kind, mmap=True)  # reads only what is used
    try:
        weights = sampling_weights(state, config.train.ema_start)
        history = tuple(EpochRecord.from_json(r) for r in state["history"])
    except (KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{checkpoint} is damaged ({describe_error(e)})") from None
    return weights, history, checkpoint


def check_request(config: RunConfig, request: EvaluationRequest, where: str | os.PathLike) -> None:
    """Everything ``evaluate`` will be asked, against the run's config at ``where``: a UserError line."""
    kind = kinds.get(config.kind)
    if request.guidance_sweep is not None and not kind.guided:
        guided = " or ".join(name for name, k in kinds.REGISTRY.items() if k.guided)
        raise UserError(f"--guidance-sweep applies to the {guided} model; {where} holds a {config.kind!r} model")
    if (request.guidance_sweep or request.steps_sweep) and config.data.dataset != "mnist":
        raise UserError(f"--guidance-sweep and --steps-sweep are judged by mnistgen's digit classifier; {where} "
                        f"holds a {config.data.dataset} model")
    if request.sweep_samples is not None and not (request.guidance_sweep or request.steps_sweep):
        raise UserError("--sweep-samples needs --guidance-sweep or --steps-sweep")
    kind.check_request(config, request)
    if request.edits is not None:
        _check_edits(config, request.edits, where)
    if request.likelihood is not None:
        check_likelihood_request(kind, config, request.likelihood)


def _check_edits(config: RunConfig, request: EditRequest, where: str | os.PathLike) -> None:
    if config.data.dataset != "mnist":
        raise UserError(f"--edits are judged by mnistgen's digit classifier; {where} holds a "
                        f"{config.data.dataset} model")
    check_edit_request(kinds.get(config.kind), config, request)


def evaluate_run(path: str | os.PathLike, device: torch.device, data_dir: str | os.PathLike | None = None,
                 request: EvaluationRequest = EvaluationRequest()) -> RunMetrics:
    """Evaluate the run at ``path`` as its kind prescribes and write the results as its metrics.json;
    returns them. Every option is checked before any work starts."""
    trained = load_run(path, device)
    kind = kinds.get(trained.config.kind)
    check_request(trained.config, request, trained.run.root)
    check_writable_dir(trained.run.root, "run directory")
    trained.run.check_no_links()
    read_metrics(trained.run)  # a damaged metrics.json is refused now, not after the work
    start = time.perf_counter()
    metrics = kind.own_metrics(trained, request, data_dir, device, RunMetrics(trained.config.kind,
                                                                              trained.config.preset))
    if kind.generative and trained.config.data.dataset == "mnist":  # the judge knows digits only
        classifier = load_classifier(request.classifier_path, device)
        reference = reference_set(classifier, data_dir, device)
        quality = kind.sample_quality(trained, classifier, reference, request.n_samples, request.seed,
                                      request.settings, request.progress)
        metrics = kind.sweep(trained, request, classifier, reference, replace(metrics, quality=quality))
        metrics = kind.steps_curve(trained, request, classifier, reference, metrics)
        if request.edits is not None:
            test = load_data("test", "unit", data_dir=data_dir, device=device)
            metrics = replace(metrics, edits=score_edits(kind, trained, request.edits, classifier, test,
                                                         request.progress))
    if request.likelihood is not None:
        metrics = replace(metrics, bits=score_likelihood(kind, trained, request.likelihood, data_dir, request.progress))
    kind.export(trained)
    metrics = replace(metrics, evaluation_seconds=round(time.perf_counter() - start, 1),
                      evaluated_with=source_version())
    trained.run.write_metrics(metrics.to_json())  # the file holds this evaluation, all from one model state
    if trained.config.train.tensorboard and trained.run.tensorboard.is_dir() and tensorboard_installed():
        write_hparams(trained.run.tensorboard, flat_config(trained.config), metrics.scalars(),
                      trained.history[-1].step if trained.history else 0)
    return metrics


def edit_scores(path: str | os.PathLike, device: torch.device, request: EditRequest = EditRequest(),
                data_dir: str | os.PathLike | None = None, classifier_path: Path | None = None,
                progress: bool = True) -> EditScores:
    """The scores of :func:`~mnistgen.kinds.edits.score_edits` for the model at ``path`` (a run or a
    shipped model's folder), without the rest of an evaluation and without writing anything."""
    trained = load_run(path, device, generative=True)
    kind = kinds.get(trained.config.kind)
    _check_edits(trained.config, request, path)
    classifier = load_classifier(classifier_path, device)
    test = load_data("test", "unit", data_dir=data_dir, device=device)
    return score_edits(kind, trained, request, classifier, test, progress)


def likelihood_scores(path: str | os.PathLike, device: torch.device, request: LikelihoodRequest = LikelihoodRequest(),
                      data_dir: str | os.PathLike | None = None, progress: bool = True) -> LikelihoodScores:
    """The bits per pixel of :func:`~mnistgen.kinds.likelihood.score_likelihood` for the model at ``path``
    (a run or a shipped model's folder), without the rest of an evaluation and without writing anything."""
    trained = load_run(path, device)
    return score_likelihood(kinds.get(trained.config.kind), trained, request, data_dir, progress)


def render_figures(path: str | os.PathLike, device: torch.device, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The figures of the run at ``path`` (its kind decides which) into RUN/figures/; returns their paths."""
    trained = load_run(path, device, generative=True)
    trained.run.check_no_links()
    check_writable_dir(trained.run.figures, "figures directory")
    return kinds.get(trained.config.kind).render_figures(trained, data_dir)
