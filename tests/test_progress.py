"""Progress on a terminal is a live bar; in a log file (a pipe, nohup, CI) it is plain lines with no
carriage returns: one per epoch, one per long sampling step."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

SMALL = ["--preset", "smoke", "--set", "data.train_limit=512", "--set", "data.val_limit=64", "--set", "train.log_every=1"]


def _on_a_terminal(args: list[str]) -> str:
    """Run ``python -m mnistgen ARGS`` with stdout and stderr on a pseudo-terminal; everything it wrote."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 rows, 100 columns
    job = subprocess.Popen([sys.executable, "-m", "mnistgen", *args], stdout=child, stderr=child, close_fds=True)
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    assert job.wait(timeout=120) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def _through_a_pipe(args: list[str]) -> str:
    done = subprocess.run([sys.executable, "-m", "mnistgen", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=120)
    assert done.returncode == 0, done.stdout
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "pipe"])
def test_training_and_sampling_show_bars_on_a_terminal_and_lines_in_a_file(terminal, tmp_path):
    run = _on_a_terminal if terminal else _through_a_pipe
    trained = run(["train", "vae", *SMALL, "--out", str(tmp_path / "vae")])
    sampled = run(["sample", str(tmp_path / "vae"), "--n", "1200", "--out", str(tmp_path / "x")])
    evaluated = run(["evaluate", str(tmp_path / "vae"), "--n", "20", "--n-images", "50", "--iwae-k", "2"])
    epochs = [line for line in trained.splitlines() if "vae epoch " in line and " val " in line]
    assert len(epochs) == 2  # the epoch lines either way
    if terminal:
        assert "\r" in trained.replace("\r\n", "\n") and "it/s" in trained  # live bar frames
        assert "\r" in sampled.replace("\r\n", "\n") and "img/s" in sampled
        assert "\r" in evaluated.replace("\r\n", "\n") and "IWAE-2 bound" in evaluated
    else:
        assert "\r" not in trained and "\r" not in sampled
        assert len(trained.splitlines()) == 4, trained  # device, two epochs, the summary
        summary = [line for line in sampled.splitlines() if line.startswith("sampling: 1,200 img in ")]
        assert len(summary) == 1 and len(sampled.splitlines()) == 2, sampled
        steps = [line for line in evaluated.splitlines() if line.startswith("ELBO and IWAE-2 bound, ")]
        assert [line.split(":")[0] for line in steps] == ["ELBO and IWAE-2 bound, grey levels",
                                                          "ELBO and IWAE-2 bound, binarized"], evaluated
        assert all(" 50 img in " in line for line in steps) and "\r" not in evaluated


@pytest.mark.slow
def test_an_epoch_line_reaches_a_log_file_while_the_run_goes_on(tmp_path):
    """stdout into a pipe is block-buffered by Python unless told otherwise: each epoch's line must
    be there when the epoch ends, not when the process exits (a kill would lose it)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    job = subprocess.Popen([sys.executable, "-m", "mnistgen", "train", "vae", *SMALL, "--epochs", "200",
                            "--out", str(tmp_path / "vae")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           text=True, env=env)
    try:
        for line in job.stdout:
            if "vae epoch 1:" in line:
                break
        history = json.loads((tmp_path / "vae" / "history.json").read_text())
        assert job.poll() is None and len(history) < 20  # read soon after it was written, not a buffer later
    finally:
        job.kill()
        job.wait()
