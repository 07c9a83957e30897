"""What protects a run directory: the lock, stale temporary files, the resume policy, signals,
a full disk, and the newest checkpoint winning after a kill between two writes."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mnistgen.cli import main
from mnistgen.config import apply_overrides, preset
from mnistgen.errors import Interrupted, StopNow, UserError
from mnistgen import kinds
from mnistgen.runs import build_trainer, train
from mnistgen import files
from mnistgen.storage.checkpoint import load_checkpoint
from mnistgen.storage.rundir import RunDir
from mnistgen.training.trainer import Trainer

CPU = torch.device("cpu")
SMALL = {"data.train_limit": 256, "data.val_limit": 64, "train.log_every": 1, "train.checkpoint_minutes": 0}
TRAIN = ["train", "vae", "--preset", "smoke", "--no-progress", "--set", "data.train_limit=256",
         "--set", "data.val_limit=64"]


def _cfg(kind="vae", **overrides):
    return apply_overrides(preset(kind, "smoke"), {**SMALL, **overrides})


def _weights(out: Path, name="last.pt") -> dict:
    return load_checkpoint(out / "checkpoints" / name)["model"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- resume policy ------------------------------------------------------------------------

def test_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(UserError, match="no checkpoint to resume"):
        train(_cfg(), tmp_path / "empty", device=CPU, resume=True, show_progress=False)
    assert not (tmp_path / "empty").exists()  # nothing created


def test_resume_refuses_changed_settings_and_lists_them(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out), "--epochs", "2"]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main([*TRAIN, "--out", str(out), "--resume", "--lr", "0.5", "--seed", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.lr 0.001 -> 0.5" in err[0] and "train.seed 0 -> 3" in err[0], err
    assert main(["train", "vae", "--out", str(out), "--resume", "--epochs", "1"]) == 2  # fewer epochs
    assert "train.epochs 2 -> 1" in capsys.readouterr().err
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # refused runs touch nothing


def test_larger_epochs_extends_a_run_to_the_weights_of_a_longer_one(tmp_path):
    assert main([*TRAIN, "--out", str(tmp_path / "long"), "--epochs", "3"]) == 0
    assert main([*TRAIN, "--out", str(tmp_path / "short"), "--epochs", "2"]) == 0
    assert main(["train", "vae", "--no-progress", "--out", str(tmp_path / "short"), "--resume", "--epochs", "3"]) == 0
    assert _same(_weights(tmp_path / "long"), _weights(tmp_path / "short"))
    assert load_checkpoint(tmp_path / "short" / "checkpoints" / "last.pt")["config"]["train"]["epochs"] == 3


# -- the lock and stale temporary files --------------------------------------------------------

def test_a_second_trainer_of_the_same_run_is_refused(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.locked():
        with pytest.raises(UserError, match=f"being trained by another process .*pid {os.getpid()}"):
            train(_cfg(), run.root, device=CPU, show_progress=False)
    with run.locked():  # released
        pass


@pytest.mark.slow
def test_a_lock_held_by_another_process_refuses_until_that_process_dies(tmp_path):
    """The lock belongs to a process: refused while it lives, free the moment it is killed (kill -9)."""
    run = RunDir(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from mnistgen.storage.rundir import RunDir\n"
        f"with RunDir(Path({str(run.root)!r})).locked():\n    print('locked', flush=True); time.sleep(120)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(UserError, match=f"pid {holder.pid}"):
        train(_cfg(), run.root, device=CPU, show_progress=False)
    holder.kill()
    holder.wait()
    train(_cfg(**{"train.epochs": 1}), run.root, device=CPU, show_progress=False)
    assert run.last_checkpoint.is_file()


def test_stale_temp_files_are_cleared_on_the_next_start(tmp_path):
    run = RunDir(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    stale = [run.checkpoints / ".last.pt.99999.tmp", run.root / ".history.json.99999.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    train(_cfg(**{"train.epochs": 1}), run.root, device=CPU, show_progress=False)
    assert not any(p.exists() for p in stale) and run.last_checkpoint.is_file()


def test_a_failed_write_removes_its_temporary_file(tmp_path, monkeypatch):
    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full_disk)
    with pytest.raises(OSError):
        files.write_atomic(tmp_path / "x.pt", b"data")
    assert list(tmp_path.iterdir()) == []


# -- a full disk, signals ---------------------------------------------------------------------

def test_a_full_disk_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out), "--epochs", "1"]) == 0
    kept = (out / "checkpoints" / "last.pt").read_bytes()

    def full_disk(path, state):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("mnistgen.training.trainer.save_checkpoint", full_disk)
    capsys.readouterr()
    assert main(["train", "vae", "--no-progress", "--out", str(out), "--resume", "--epochs", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0], err
    assert f"the last good checkpoint is {out / 'checkpoints' / 'last.pt'}" in err[0]
    assert (out / "checkpoints" / "last.pt").read_bytes() == kept


class SignalAt:
    """The real objective; sends ``signal_number`` to this process at call ``n`` (like a scheduler would)."""

    def __init__(self, objective, n, signal_number):
        self.objective, self.n, self.signal_number, self.calls = objective, n, signal_number, 0

    def loss(self, model, x, y, generator=None):
        self.calls += 1
        if self.calls == self.n:
            os.kill(os.getpid(), self.signal_number)
        return self.objective.loss(model, x, y, generator)


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.slow
def test_a_signal_saves_between_two_steps_and_the_run_resumes_exactly(signal_number, tmp_path, mnist_dir):
    cfg = _cfg("ddpm", **{"train.epochs": 2, "train.ema_start": 0})

    def trainer(out, objective=None):
        return build_trainer(cfg, out, CPU, mnist_dir, objective=objective, preview=False)

    before = signal.getsignal(signal_number)  # SIG_IGN for SIGINT when started in the background
    full = trainer(tmp_path / "full")
    full.fit()
    stopped = trainer(tmp_path / "cut", SignalAt(kinds.get("ddpm").build_objective(cfg), 3, signal_number))
    with pytest.raises(Interrupted, match=f"{signal.Signals(signal_number).name}.*--resume") as info:
        stopped.fit()
    assert info.value.exit_status == 128 + signal_number
    state = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert (state["epoch"], state["batch"], state["step"]) == (0, 3, 3)  # saved right after the step
    assert signal.getsignal(signal_number) == before  # handlers restored
    resumed = trainer(tmp_path / "cut")
    assert resumed.resume()
    resumed.fit()
    assert _same(full.model.state_dict(), resumed.model.state_dict())


@pytest.mark.slow
def test_sigterm_from_outside_ends_the_command_with_one_line(tmp_path):
    """A real `mnistgen train` process, terminated while it trains: exit 128 + 15, one line, a checkpoint."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "mnistgen", "train", "ddpm", "--preset", "smoke", "--no-progress",
               "--epochs", "50", "--set", "train.checkpoint_minutes=0", "--out", str(out)]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(600):  # the first epoch's checkpoint says training is under way
        if (out / "checkpoints" / "epoch_001.pt").is_file() or job.poll() is not None:
            break
        subprocess.run(["sleep", "0.1"])
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=60)
    assert job.returncode == 128 + signal.SIGTERM, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "interrupted by SIGTERM" in lines[0] and "--resume" in lines[0], err
    run = RunDir(out)
    saved = load_checkpoint(run.last_checkpoint)
    newest_epoch = run.epoch_checkpoints()[-1][1]
    assert saved["step"] >= load_checkpoint(newest_epoch)["step"] > 0  # the signal's save is the newest state
    with run.locked():  # and the lock went with the process
        pass


def test_a_second_signal_stops_at_once_without_saving(tmp_path, mnist_dir):
    cfg = _cfg("ddpm", **{"train.epochs": 2})

    class TwoSignals(SignalAt):
        def loss(self, model, x, y, generator=None):
            if self.calls + 1 == self.n:
                os.kill(os.getpid(), signal.SIGTERM)  # the first, noted; the second, inside this step
            return super().loss(model, x, y, generator)

    trainer = build_trainer(cfg, tmp_path, CPU, mnist_dir, preview=False,
                            objective=TwoSignals(kinds.get("ddpm").build_objective(cfg), 3, signal.SIGTERM))
    with pytest.raises(StopNow) as info:  # not an Exception: no `except Exception` on the way can swallow it
        trainer.fit()
    assert info.value.exit_status == 128 + signal.SIGTERM
    assert not RunDir(tmp_path).last_checkpoint.exists()


# -- the newest checkpoint wins -----------------------------------------------------------------

def test_a_kill_between_the_epoch_file_and_last_pt_loses_no_work(tmp_path):
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out), "--epochs", "2"]) == 0
    final = _weights(out)
    shutil.copy(out / "checkpoints" / "epoch_001.pt", out / "checkpoints" / "last.pt")  # last.pt one epoch behind
    run = RunDir(out)
    assert run.newest_checkpoint() == run.epoch_checkpoint(2)
    from mnistgen.runs import load_run

    assert _same(load_run(out).model.state_dict(), final)  # sampling uses the newest weights
    assert main(["train", "vae", "--no-progress", "--out", str(out), "--resume"]) == 0  # nothing left to train
    assert _same(load_run(out).model.state_dict(), final)


def test_an_edited_config_json_cannot_slip_past_the_resume_policy(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out), "--epochs", "1"]) == 0
    config = json.loads((out / "config.json").read_text())
    config["train"]["lr"] = 0.5
    (out / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["train", "vae", "--no-progress", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was edited" in err[0] and "train.lr 0.001 -> 0.5" in err[0], err


def test_a_nearly_full_disk_is_refused_before_training(tmp_path, monkeypatch):
    free = files.MIN_FREE_BYTES - 1
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12, free))
    with pytest.raises(UserError, match="MiB free on its disk"):
        train(_cfg(), tmp_path / "run", device=CPU, show_progress=False)
    assert not (tmp_path / "run").exists()



def test_a_signal_during_the_last_epochs_end_still_stops_the_command(tmp_path, mnist_dir, monkeypatch, capsys):
    """SIGTERM while the last epoch's checkpoint is written: the run is complete, and the command ends
    with 143 and one line instead of going on (to evaluation, in `reproduce`)."""
    real_save = Trainer.save

    def save_then_signal(self, epoch_file):
        real_save(self, epoch_file)
        if epoch_file and self.epoch == self.tc.epochs:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Trainer, "save", save_then_signal)
    assert main([*TRAIN, "--out", str(tmp_path / "run"), "--epochs", "1"]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "after the last epoch (the run is complete)" in err[0], err
