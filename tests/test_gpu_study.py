"""bench/gpu_study.sh, rehearsed on the CPU with the `smoke` preset: the reference study's script runs
the three models side by side, writes the report and its summary, and inside a budget too short for
the study stops each piece with a checkpoint and says the report was not written; a second call with
the same OUT resumes and finishes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(out: Path, budget: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PRESET": "smoke", "DEVICE": "cpu", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(["bash", str(REPO / "bench" / "gpu_study.sh"), str(out), str(budget)], env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_budget_too_short_stops_the_pieces_and_a_second_call_finishes(tmp_path):
    out = tmp_path / "gpu-study"
    cut = _run(out, 52)  # 12 s per piece: not even the smoke trainings fit
    summary = (out / "summary.txt").read_text()
    assert cut.returncode == 1, cut.stdout + cut.stderr
    assert "stopped by the budget" in summary and "report not written" in summary
    assert not (out / "study" / "report.html").exists()
    done = _run(out, 400)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = (out / "summary.txt").read_text()
    assert "report written" in summary
    for kind in ("vae", "ddpm", "cfg"):
        assert f"{kind}: exit 0" in summary
        assert f"{kind}: 2 epochs" in summary  # the summary's line per model, with its scores
        assert (out / "study" / kind / "metrics.json").is_file()
    report = (out / "study" / "report.html").read_text()
    assert "guidance_sweep.png" in report and "f9_epochs.png" in report
    assert (out / "results.tgz").stat().st_size > 10_000
    record = json.loads((out / "study.json").read_text())
    assert [len(record[k]["history"]) for k in ("vae", "ddpm", "cfg")] == [2, 2, 2] and "mnist_fd" in record["cfg"]["metrics"]
