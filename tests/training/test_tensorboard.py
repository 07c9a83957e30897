"""TensorBoard logs, read back with TensorBoard's own event reader: the epoch scalars equal
history.json, the steps increase across a kill and a resume, the preview grid is there, evaluate adds
hparams, and logging changes nothing that is trained."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnistgen.cli import main
from mnistgen.config import apply_overrides, preset
from mnistgen.runs import build_trainer
from mnistgen.training import distributed
from mnistgen.storage.checkpoint import load_checkpoint

SMALL = ["--preset", "smoke", "--no-progress", "--set", "data.train_limit=512", "--set", "data.val_limit=64",
         "--set", "train.log_every=2"]


def _events(run: Path) -> EventAccumulator:
    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def _steps(events: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in events.Scalars(tag)]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory) -> Path:
    """A two-epoch DDPM run logged to TensorBoard, 'killed' after its second epoch was logged but
    before that epoch's checkpoint (last.pt one epoch behind, as a kill there leaves it), then resumed."""
    run = tmp_path_factory.mktemp("tb") / "ddpm"
    assert main(["train", "ddpm", *SMALL, "--set", "train.amp=fp16", "--tensorboard", "--out", str(run)]) == 0
    first = _events(run)
    assert len(_steps(first, "epoch/train_loss")) == 2
    shutil.copy(run / "checkpoints" / "epoch_001.pt", run / "checkpoints" / "last.pt")
    (run / "checkpoints" / "epoch_002.pt").unlink()
    assert main(["train", "ddpm", "--out", str(run), "--resume", "--no-progress"]) == 0
    return run


@pytest.mark.slow
def test_epoch_scalars_equal_history_json(resumed):
    history = json.loads((resumed / "history.json").read_text())
    events = _events(resumed)
    assert _steps(events, "epoch/train_loss") == [r["step"] for r in history]
    for name in ("train_loss", "val_loss", "lr", "images_per_s", "seconds"):
        logged = [e.value for e in events.Scalars(f"epoch/{name}")]
        assert logged == pytest.approx([r[name] for r in history], rel=1e-6), name


def test_step_numbers_increase_across_the_kill_and_the_resume(resumed):
    """Every per-step tag: strictly increasing steps (the second epoch's first logging is purged), one
    event every log_every steps of each epoch, and plausible values."""
    events = _events(resumed)
    steps_per_epoch = load_checkpoint(resumed / "checkpoints" / "last.pt")["step"] // 2
    expected = [e * steps_per_epoch + b for e in range(2) for b in range(2, steps_per_epoch + 1, 2)]
    for tag in ("train/loss", "train/lr", "train/images_per_s", "train/grad_norm", "train/loss_scale"):
        assert _steps(events, tag) == expected, tag
    assert all(math.isfinite(e.value) and e.value > 0 for e in events.Scalars("train/grad_norm"))
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx([2e-3] * len(expected))
    assert all(e.value > 1 for e in events.Scalars("train/loss_scale"))  # fp16: GradScaler's real scale
    norms, scales = (max(e.value for e in events.Scalars(tag)) for tag in ("train/grad_norm", "train/loss_scale"))
    assert norms < 100 < scales  # the norm of the unscaled gradient, not of the scaled one


def test_the_preview_grid_is_logged_each_epoch(resumed):
    events = _events(resumed)
    assert "preview" in events.Tags()["images"]
    images = events.Images("preview")
    assert [i.step for i in images] == _steps(events, "epoch/train_loss") and images[0].width > 28


@pytest.mark.slow
def test_evaluate_adds_the_config_as_hparams_with_the_metrics(resumed):
    assert main(["evaluate", str(resumed), "--n", "20", "--no-progress"]) == 0
    events = _events(resumed)
    metrics = json.loads((resumed / "metrics.json").read_text())
    assert [e.value for e in events.Scalars("metrics/mnist_fd")] == pytest.approx([metrics["mnist_fd"]])
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    assert b"train.lr" in content and b"model.channels" in content


@pytest.mark.slow
def test_logging_changes_nothing_that_is_trained(tmp_path):
    """The gradient norm is measured after GradScaler's unscale, which its step then skips: the
    weights, EMA and loss scale end bit-identical to an unlogged run's."""
    def run(out: Path, *extra: str) -> dict:
        assert main(["train", "ddpm", *SMALL, "--set", "train.amp=fp16", *extra, "--out", str(out)]) == 0
        return load_checkpoint(out / "checkpoints" / "last.pt")

    logged, plain = run(tmp_path / "logged", "--tensorboard"), run(tmp_path / "plain")
    for part in ("model", "ema"):
        assert all(torch.equal(logged[part][k], plain[part][k]) for k in plain[part]), part
    assert logged["scaler"] == plain["scaler"] and (tmp_path / "logged" / "tb").is_dir()
    assert not (tmp_path / "plain" / "tb").exists()


def test_without_the_package_the_option_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now fails
    assert main(["train", "vae", *SMALL, "--tensorboard", "--out", str(tmp_path / "run")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "pip install 'mnistgen[tensorboard]'" in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_only_rank_0_logs(tmp_path, monkeypatch):
    config = apply_overrides(preset("vae", "smoke"), {"train.tensorboard": True})
    assert build_trainer(config, tmp_path / "a", preview=False).log is not None
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    assert build_trainer(config, tmp_path / "b", preview=False).log is None


def test_resume_may_switch_logging_on(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "vae", *SMALL, "--epochs", "1", "--out", str(run)]) == 0
    assert main(["train", "vae", "--out", str(run), "--resume", "--epochs", "2", "--tensorboard", "--no-progress"]) == 0
    assert _steps(_events(run), "epoch/train_loss") == [json.loads((run / "history.json").read_text())[1]["step"]]


def test_a_failed_log_write_stops_the_logging_not_the_training(tmp_path, monkeypatch, capsys):
    from torch.utils.tensorboard import SummaryWriter

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SummaryWriter, "add_scalar", full_disk)
    assert main(["train", "vae", *SMALL, "--tensorboard", "--out", str(tmp_path / "run")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "TensorBoard" in line]
    assert len(lines) == 1 and "stopped (No space left on device); training goes on" in lines[0], lines
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())) == 2


def test_a_new_run_drops_the_events_of_an_earlier_failed_attempt(tmp_path):
    """A run that died before its first checkpoint left events in tb/; the next one into the same
    folder purges them, so no step of the old attempt is shown beside the new run's."""
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "run"
    with SummaryWriter(str(run / "tb")) as writer:
        for step in (3, 300):
            writer.add_scalar("train/loss", 123.0, step)
    assert main(["train", "vae", *SMALL, "--tensorboard", "--out", str(run)]) == 0
    events = _events(run)
    steps = _steps(events, "train/loss")
    assert steps == sorted(set(steps)) and 300 not in steps and 123.0 not in [e.value for e in events.Scalars("train/loss")]
