"""Data-parallel runs under torchrun with gloo (2 CPU processes): exact resume after a kill (with
TensorBoard switched on, which only rank 0 writes and which changes no weight), a failing rank that
ends the job promptly, and a refused change of world size."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mnistgen.cli import main
from mnistgen.storage.checkpoint import load_checkpoint

JOB = Path(__file__).with_name("ddp_job.py")
TRAIN = ["train", "ddpm", "--preset", "smoke", "--device", "cpu", "--no-progress", "--epochs", "3",
         "--batch-size", "16", "--set", "data.train_limit=128", "--set", "data.val_limit=32",
         "--set", "train.checkpoint_minutes=0", "--set", "train.ema_start=0"]


def _torchrun(mode: str, out: Path, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(JOB), mode, *TRAIN, "--out", str(out), *extra]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)  # torchrun and its workers
        job.communicate()
        pytest.fail(f"the torchrun job ({mode}) did not end within {timeout} s")
    return subprocess.CompletedProcess(command, job.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "full"
    result = _torchrun("none", out)
    assert result.returncode == 0, result.stderr[-2000:]
    return load_checkpoint(out / "checkpoints" / "last.pt", "ddpm")


@pytest.mark.slow
def test_killed_ddp_run_resumes_to_the_uninterrupted_weights(uninterrupted, tmp_path, capfd):
    out = tmp_path / "killed"
    killed = _torchrun("kill-after-first-checkpoint", out)
    assert killed.returncode != 0
    assert load_checkpoint(out / "checkpoints" / "last.pt", "ddpm")["epoch"] == 1

    # one process cannot continue a two-process run: refused with one line, nothing touched
    assert main([*TRAIN, "--out", str(out), "--resume"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "resume it with 2 process(es) in total" in err[0]

    resumed = _torchrun("none", out, "--resume", "--tensorboard")  # logging switched on for the rest
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 1  # rank 0 alone writes
    final = load_checkpoint(out / "checkpoints" / "last.pt", "ddpm")
    assert final["step"] == uninterrupted["step"] and final["epoch"] == 3
    for section in ("model", "ema"):
        for name, value in uninterrupted[section].items():
            assert torch.equal(final[section][name], value), (section, name)
    assert len(final["generator"]) == 2
    assert not torch.equal(final["generator"][0], final["generator"][1])  # each rank has its own stream
    for mine, theirs in zip(final["generator"], uninterrupted["generator"]):
        assert torch.equal(mine, theirs)


@pytest.mark.slow
def test_a_failing_rank_ends_the_job_promptly(tmp_path):
    start = time.monotonic()
    result = _torchrun("raise-on-rank-1", tmp_path / "failing", timeout=90)
    assert result.returncode != 0 and time.monotonic() - start < 60
    lines = [line for line in result.stderr.splitlines() if line.startswith("mnistgen: error")]
    assert lines == ["mnistgen: error: process 1 of 2 failed: RuntimeError: injected failure on rank 1"], \
        result.stderr[-3000:]
