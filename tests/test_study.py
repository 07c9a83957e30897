"""`mnistgen reproduce --preset smoke` end to end: every figure, a metrics table, and a resumable study."""

import json
import re
import shutil

import pytest
import torch
from PIL import Image

from mnistgen.cli import main
from mnistgen.figures.edits import CAPTIONS as EDIT_CAPTIONS
from mnistgen.kinds.base import STEPS_FIGURE
from mnistgen.study import CAPTIONS, LIKELIHOOD, TERMS_FIGURE, write_report
from mnistgen.storage.checkpoint import load_checkpoint
from mnistgen.training.device import amp_dtype, pick_device


@pytest.mark.slow
def test_reproduce_smoke_end_to_end(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["reproduce", "--preset", "smoke", "--out", str(out), "--no-progress"]) == 0
    report = (out / "report.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', report)
    assert {name.split("/")[-1] for name in images} == set(CAPTIONS) | set(EDIT_CAPTIONS) | {TERMS_FIGURE}
    assert len(images) == len(CAPTIONS) + len(EDIT_CAPTIONS) + 1  # every figure, once
    assert f"{LIKELIHOOD}/{TERMS_FIGURE}" in images
    for rel in images:
        with Image.open(out / rel) as image:
            image.verify()
    for needle in ("negative ELBO, grey-level test images", "IWAE", "MNIST-FD", "class accuracy", "w = 4", "smoke",
                   "not Inception FID", "training:", "ddim-5, eta = 0", "Editing with the trained models",
                   "10 test digits, lower half hidden: read as the true digit", "guided to the true digit",
                   "DDIM inversion round trip, 10 steps", "midpoints that keep the class",
                   "Likelihood in bits per pixel", "bits per pixel: vlb (4 test images", "bits per pixel: ode, null label",
                   "VAE (grey-level decoder)", "iwae (4 test images", "iwae, dynamically binarized", "FFJORD",
                   "dpm++2m-sde, trailing grid, 5 steps (50 samples): MNIST-FD / KID / precision / recall",
                   "ddim, eta = 0, 2 steps (50 samples)", "dpm++2m, trailing grid, 2 steps",
                   "w = 4: MNIST-FD / class accuracy / KID / recall (50 samples)"):
        assert needle in report, needle
    dtype = amp_dtype(pick_device("auto"), "auto") or torch.float32  # the smoke preset's amp = auto
    assert f"training: 2 epochs ({str(dtype).removeprefix('torch.')})" in report
    for kind in ("vae", "ddpm", "cfg", "vae-grey"):
        assert (out / kind / "metrics.json").is_file()
    assert f"ddpm/figures/{STEPS_FIGURE}" in images and "cfg/figures/guidance_tradeoff.png" in images
    assert len(json.loads((out / "ddpm" / "metrics.json").read_text())["steps_sweep"]) == 3 * 2
    assert json.loads((out / "vae-grey" / "config.json").read_text())["model"]["decoder"] == "logistic"

    capsys.readouterr()
    assert main(["reproduce", "--preset", "smoke", "--out", str(out), "--no-progress"]) == 0
    log = capsys.readouterr().out
    assert log.count("trained already") == 4 and "evaluating" not in log  # the grey-level VAE too

    # a kill while the VAE's final last.pt was being written: history.json lists epoch 2, the checkpoint
    # holds epoch 1 and epoch_002.pt never landed. The next reproduce must train it, not skip it.
    checkpoints = out / "vae" / "checkpoints"
    shutil.copy(checkpoints / "epoch_001.pt", checkpoints / "last.pt")
    (checkpoints / "epoch_002.pt").unlink()
    assert len(json.loads((out / "vae" / "history.json").read_text())) == 2
    assert main(["reproduce", "--preset", "smoke", "--out", str(out), "--no-progress"]) == 0
    log = capsys.readouterr().out
    assert "[vae] training" in log and "[vae] evaluating" in log and log.count("trained already") == 3
    assert load_checkpoint(checkpoints / "last.pt")["epoch"] == 2

    # a history written before compute_dtype was recorded (the shipped models'): the report says so
    history = out / "ddpm" / "history.json"
    history.write_text(json.dumps([{k: v for k, v in r.items() if k != "compute_dtype"}
                                   for r in json.loads(history.read_text())]))
    assert "training: 2 epochs (dtype not recorded)" in write_report(out, "smoke", torch.device("cpu")).read_text()
