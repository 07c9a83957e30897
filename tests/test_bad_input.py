"""Every bad input, of every subcommand, ends with exit status 2 and exactly one line on stderr, no
traceback, before any work, and leaves the runs already on disk byte-for-byte as they were."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mnistgen.cli import main
from mnistgen.config import preset
from mnistgen.storage.checkpoint import load_checkpoint, save_checkpoint
from mnistgen.storage.rundir import RunDir

SMALL = ["--preset", "smoke", "--no-progress", "--set", "data.train_limit=256", "--set", "data.val_limit=64"]


@pytest.fixture(scope="module")
def place(tmp_path_factory, mnist_dir):
    """Runs of each model, and damaged copies of them, in one folder."""
    root = tmp_path_factory.mktemp("bad-input")
    for kind in ("vae", "ddpm", "cfg"):
        assert main(["train", kind, *SMALL, "--out", str(root / kind)]) == 0
    (root / "file.txt").write_text("not a directory")
    (root / "garbage.pt").write_bytes(b"\x80\x03 this is not a checkpoint")
    (root / "empty").mkdir()
    judge = RunDir(root / "judge")
    judge.root.mkdir()
    judge.write_config(preset("classifier", "smoke"))
    for name, text in (("config-list", "[1, 2]"), ("config-null", "null"), ("config-string", '"ddpm"'),
                       ("config-broken", "{\"kind\": \"ddpm\", "), ("config-groups", None),
                       ("config-widths", None)):
        shutil.copytree(root / "ddpm", root / name)
        if text is not None:
            (root / name / "config.json").write_text(text)
    config = json.loads((root / "ddpm" / "config.json").read_text())
    (root / "config-groups" / "config.json").write_text(json.dumps({**config, "model": {**config["model"], "groups": 0}}))
    (root / "config-widths" / "config.json").write_text(
        json.dumps({**config, "model": {**config["model"], "channels": [16, 32]}}))
    for name, edit in (("ckpt-no-ema", lambda s: s.pop("ema")), ("ckpt-no-model", lambda s: s.pop("model")),
                       ("ckpt-bad-step", lambda s: s.update(step="many")),
                       ("ckpt-no-history", lambda s: s.pop("history")),
                       ("ckpt-bad-generator", lambda s: s.update(generator=[torch.zeros(3)]))):
        shutil.copytree(root / "ddpm", root / name)
        state = load_checkpoint(root / name / "checkpoints" / "last.pt")
        edit(state)
        save_checkpoint(root / name / "checkpoints" / "last.pt", state)
    for name, text in (("metrics-broken", '{"mnist_fd": '), ("metrics-edited", '{"mnist_fd": 3.0}')):
        shutil.copytree(root / "cfg", root / name)
        (root / name / "metrics.json").write_text(text)
    shutil.copytree(root / "ddpm", root / "ckpt-garbage")
    for p in (root / "ckpt-garbage" / "checkpoints").iterdir():
        p.write_bytes(b"garbage")
    shutil.copytree(root / "ddpm", root / "ckpt-other-kind")
    shutil.copy(root / "vae" / "checkpoints" / "last.pt", root / "ckpt-other-kind" / "checkpoints" / "last.pt")
    (root / "study-smoke").mkdir()
    shutil.copytree(root / "vae", root / "study-smoke" / "vae")
    judge_state = {"config": {**preset("classifier", "smoke").to_dict()}, "model": {}}
    judge_state["config"]["model"]["width"] = 12
    save_checkpoint(root / "bad-judge.pt", judge_state)
    bad_data = root / "bad-data"
    shutil.copytree(mnist_dir, bad_data)
    images = next(bad_data.glob("train-images*"))
    images.write_bytes(images.read_bytes()[:1000])
    return root


ROWS = [
    # train: presets, flags, every class of config value
    ("train vae --preset huge", "valid: reference, cpu, smoke"),
    ("train vae --preset ''", "valid: reference, cpu, smoke"),
    ("train gan", "invalid choice"),
    ("train vae --epochs -3", "must be >= 1"),
    ("train vae --epochs 0", "must be >= 1"),
    ("train vae --epochs x", "expected a whole number"),
    ("train vae --batch-size 0", "must be >= 1"),
    ("train vae --lr nan", "train.lr"),
    ("train vae --lr inf", "train.lr"),
    ("train vae --lr -1", "train.lr"),
    ("train vae --lr 0", "train.lr"),
    ("train vae --lr 5", "train.lr"),
    ("train vae --seed -1", "must be >= 0"),
    ("train vae --dataset cifar", "invalid choice"),
    ("train vae --set train.bogus=1", "valid: epochs"),
    ("train vae --set nope.lr=1", "valid: data, train, model"),
    ("train vae --set train.lr", "SECTION.FIELD=VALUE"),
    ("train vae --set train.epochs=many", "expected int"),
    ("train vae --set train.epochs=1.5", "expected int"),
    ("train vae --set model.latent=-1", "model.latent"),
    ("train vae --set model.hidden=0", "model.hidden"),
    ("train ddpm --set model.groups=0", "model.groups"),
    ("train ddpm --set model.groups=3", "model.groups"),
    ("train ddpm --set model.time_dim=3", "model.time_dim"),
    ("train ddpm --set model.blocks=0", "model.blocks"),
    ("train ddpm --set model.bottleneck=0", "model.bottleneck"),
    ("train ddpm --set model.channels=8,0", "model.channels"),
    ("train ddpm --set model.channels=", "model.channels"),
    ("train ddpm --set model.num_classes=10", "model.num_classes"),
    ("train ddpm --set model.unshuffle=3", "model.unshuffle"),
    ("train ddpm --set model.attention=maybe", "expected bool"),
    ("train cfg --set model.num_classes=0", "model.num_classes"),
    ("train cfg --set model.num_classes=-1", "model.num_classes"),
    ("train classifier --set model.dropout=2", "model.dropout"),
    ("train classifier --set model.feature_dim=0", "model.feature_dim"),
    ("train classifier --set model.width=12", "model.width"),
    ("train vae --set train.grad_clip=nan", "train.grad_clip"),
    ("train ddpm --set process.min_snr_gamma=-1", "process.min_snr_gamma"),
    ("train ddpm --set process.loss_weighting=clamped-snr --set process.min_snr_gamma=0.5", "process.min_snr_gamma"),
    ("train ddpm --set process.prediction=noise", "process.prediction"),
    ("train ddpm --set process.prediction=eps --set process.loss_weighting=clamped-snr", "needs process.prediction v"),
    ("train ddpm --set process.t_distribution=normal", "valid: uniform, cosine"),
    ("train vae --set train.lr_gamma=-1", "train.lr_gamma"),
    ("train vae --set train.lr_step_epochs=0", "train.lr_step_epochs"),
    ("train vae --set train.checkpoint_minutes=-1", "train.checkpoint_minutes"),
    ("train vae --set train.seed=-1", "train.seed"),
    ("train vae --set train.ema_decay=1", "train.ema_decay"),
    ("train vae --set train.weight_decay=inf", "train.weight_decay"),
    ("train vae --set train.amp=fp8", "valid: auto, native, bf16, fp16, off"),
    ("train vae --set train.lr_schedule=linear", "valid: constant, step, cosine"),
    ("train vae --set data.resolution=30", "valid: 28, 32"),
    ("train vae --set data.train_limit=-5", "data.train_limit"),
    ("train ddpm --set process.sample_steps=5000", "process.sample_steps"),
    ("train ddpm --set process.sample_steps=0", "process.sample_steps"),
    ("train ddpm --set process.eta=2", "process.eta"),
    ("train ddpm --set process.beta_start=0.5", "beta_start"),
    ("train ddpm --set process.sampler=euler", "valid: ancestral, ddim"),
    ("train cfg --set process.p_uncond=1", "process.p_uncond"),
    ("train cfg --set process.v=2", "process.v"),
    ("train cfg --set process.guidance=inf", "process.guidance"),
    ("train cfg --set process.lambda_min=30", "lambda_min < process.lambda_max"),
    ("train vae --device tpu", "valid: auto, cpu, cuda, mps"),
    ("train vae --device cuda:99", "cuda:99"),
    # train: where it writes, and resuming
    ("train vae --preset smoke --out {root}/file.txt", "is a file"),
    ("train vae --preset smoke --out /proc/mnistgen/run", "cannot be written"),
    ("train vae --preset smoke --out {root}/vae", "already holds a run"),
    ("train vae --preset smoke --out {root}/empty --resume", "no checkpoint to resume"),
    ("train vae --preset smoke --out {root}/nothing/here --resume", "no checkpoint to resume"),
    ("train vae --out {root}/vae --resume --lr 0.5", "train.lr 0.001 -> 0.5"),
    ("train vae --out {root}/vae --resume --epochs 1", "train.epochs 2 -> 1"),
    ("train vae --preset cpu --out {root}/vae --resume", "preset 'smoke' -> 'cpu'"),
    ("train ddpm --out {root}/vae --resume", "holds a 'vae' run"),
    ("train ddpm --out {root}/config-list --resume", "config-list/config.json"),
    ("train vae --preset smoke --out {root}/new --data-dir {root}/empty", "t10k-labels-idx1-ubyte.gz"),
    ("train vae --preset smoke --out {root}/new --data-dir {root}/bad-data", "train-images-idx3-ubyte"),
    ("train ddpm --out {root}/ckpt-no-ema --resume", "ckpt-no-ema/checkpoints/last.pt"),
    ("train ddpm --out {root}/ckpt-bad-generator --resume", "ckpt-bad-generator/checkpoints/last.pt"),
    ("train ddpm --out {root}/ckpt-garbage --resume", "ckpt-garbage/checkpoints"),
    # sample
    ("sample /nonexistent/run --n 4 --out {root}/x", "does not exist"),
    ("sample {root}/vae --n 0 --out {root}/x", "must be >= 1"),
    ("sample {root}/vae --n -4 --out {root}/x", "must be >= 1"),
    ("sample {root}/vae --n 4", "--out"),
    ("sample {root}/vae --n 4 --out {root}/empty", "is a directory"),
    ("sample {root}/vae --n 4 --out /proc/mnistgen/x", "cannot be written"),
    ("sample {root}/vae --n 4 --out {root}/file.txt/x", "is a file"),
    ("sample {root}/vae --steps 5 --out {root}/x", "does not apply to the vae model"),
    ("sample {root}/vae --eta 1 --out {root}/x", "does not apply to the vae model"),
    ("sample {root}/vae --guidance 1 --out {root}/x", "does not apply to the vae model"),
    ("sample {root}/vae --label 3 --out {root}/x", "model takes no labels"),
    ("sample {root}/ddpm --sampler ancestral --eta 0.5 --out {root}/x", "--eta applies to --sampler ddim only"),
    ("sample {root}/ddpm --sampler dpm++2m --eta 0.5 --out {root}/x", "--eta applies to --sampler ddim only"),
    ("sample {root}/ddpm --sampler ancestral --steps 1001 --out {root}/x", "--steps must be in [1, 1000]"),
    ("sample {root}/ddpm --sampler ddim --steps 5000 --out {root}/x", "--steps must be in [1, 1000]"),
    ("sample {root}/ddpm --eta 2 --out {root}/x", "--eta must be in [0, 1]"),
    ("sample {root}/ddpm --eta nan --out {root}/x", "finite number"),
    ("sample {root}/ddpm --guidance 1 --out {root}/x", "does not apply to the ddpm model"),
    ("sample {root}/ddpm --label 3 --out {root}/x", "model takes no labels"),
    ("sample {root}/ddpm --sampler euler --out {root}/x", "invalid choice"),
    ("sample {root}/cfg --out {root}/x", "needs --label"),
    ("sample {root}/cfg --label 12 --out {root}/x", "digit 0-9"),
    ("sample {root}/cfg --label \u0663 --out {root}/x", "digit 0-9"),
    ("sample {root}/cfg --label 3 --guidance inf --out {root}/x", "finite number"),
    ("sample {root}/cfg --label 3 --guidance 1000 --out {root}/x", "--guidance must be"),
    ("sample {root}/cfg --label 3 --eta 1 --out {root}/x", "--eta applies to --sampler ddim only"),
    ("sample {root}/cfg --label 3 --sampler dpm++2m --eta 0.5 --out {root}/x", "--eta applies to --sampler ddim only"),
    ("sample {root}/cfg --label 3 --sampler euler --out {root}/x", "invalid choice: 'euler'"),
    ("sample {root}/cfg --label 3 --grid karras --out {root}/x", "invalid choice: 'karras'"),
    ("sample {root}/cfg --label 3 --steps 0 --out {root}/x", "--steps"),
    ("sample {root}/cfg --label 3 --n 10000000000 --out {root}/x", "GiB free"),
    ("sample {root}/judge --n 2 --out {root}/x", "'classifier' run"),
    ("sample {root}/config-list --out {root}/x", "expected a JSON object"),
    ("sample {root}/config-null --out {root}/x", "expected a JSON object"),
    ("sample {root}/config-string --out {root}/x", "expected a JSON object"),
    ("sample {root}/config-broken --out {root}/x", "config-broken/config.json is unreadable"),
    ("sample {root}/config-groups --out {root}/x", "model.groups"),
    ("sample {root}/config-widths --out {root}/x", "does not fit its config.json"),
    ("sample {root}/ckpt-no-ema --out {root}/x", "damaged"),
    ("sample {root}/ckpt-no-history --out {root}/x", "damaged"),
    ("train ddpm --set process.timesteps=500 --set process.sampler=ddim --set process.sample_steps=600",
     "process.sample_steps 600"),
    ("sample {root}/cfg --label 3 --steps 1000000000 --out {root}/x", "--steps must be"),
    ("evaluate {root}/cfg --classifier {root}/bad-judge.pt", "model.width"),
    ("reproduce --preset cpu --out {root}/study-smoke", "holds a 'smoke' study"),
    ("train ddpm --out {root}/ckpt-no-model --resume", "ckpt-no-model"),
    ("sample {root}/ckpt-garbage --out {root}/x", "cannot read checkpoint"),
    ("sample {root}/ckpt-other-kind --out {root}/x", "'vae' model, not a 'ddpm' model"),
    # evaluate
    ("evaluate /nonexistent/run", "does not exist"),
    ("evaluate {root}/vae --n 0", "must be >= 1"),
    ("evaluate {root}/vae --steps 5", "does not apply to the vae model"),
    ("evaluate {root}/vae --iwae-k 0", "must be >= 1"),
    ("evaluate {root}/vae --n 5", "--n must be a whole number >= 6"),
    ("evaluate {root}/cfg --guidance-sweep 0,1 --sweep-samples 1", "--sweep-samples must be a whole number >= 6"),
    ("evaluate {root}/ddpm --steps-sweep 5 --sweep-samples 3", "--sweep-samples must be a whole number >= 6 "
                                                              "(precision and recall look at the 5 nearest"),
    ("sample {root}/vae --n 4 --grid-power 2 --out {root}/x", "--grid-power does not apply to the vae model"),
    ("evaluate {root}/vae --grid-power nan", "--grid-power does not apply to the vae model"),
    ("evaluate {root}/ddpm --steps-sweep 5 --samplers ,", "--samplers takes one or more names"),
    ("evaluate {root}/cfg --sweep-samples 50", "--sweep-samples needs --guidance-sweep or --steps-sweep"),
    ("evaluate {root}/ddpm --sweep-samples 50", "--sweep-samples needs --guidance-sweep or --steps-sweep"),
    ("evaluate pretrained:vae --out {root}/never-made --n 5", "--n must be a whole number >= 6"),
    ("sample {root}/vae --n 4 --out {root}/x --animate {root}/x.gif", "--animate shows a reverse process"),
    ("evaluate {root}/ddpm --guidance-sweep 0,1", "--guidance-sweep applies to the cfg model"),
    ("evaluate {root}/ddpm --sampler ancestral --eta 1", "--eta applies to --sampler ddim only"),
    ("evaluate {root}/cfg --guidance-sweep nan", "finite weights"),
    ("evaluate {root}/cfg --guidance-sweep 1,x", "numbers separated by commas"),
    ("evaluate {root}/cfg --guidance-sweep -1", "finite weights"),
    ("evaluate {root}/cfg --guidance-sweep 0,500", "--guidance must be"),
    ("evaluate {root}/cfg --classifier {root}/garbage.pt", "cannot read checkpoint"),
    ("evaluate {root}/cfg --classifier {root}/vae/checkpoints/last.pt", "not a 'classifier' model"),
    ("evaluate {root}/cfg --classifier /nonexistent.pt", "not found"),
    ("evaluate {root}/ckpt-bad-step", "ckpt-bad-step"),
    ("evaluate {root}/metrics-broken", "metrics-broken/metrics.json is not a metrics file"),
    ("evaluate {root}/ddpm --strata 5", "--strata need --likelihood"),
    ("evaluate {root}/ddpm --likelihood --strata 1000", "--strata must be a whole number in [1, 999]"),
    ("evaluate {root}/cfg --likelihood --strata 20000", "--strata must be a whole number in [1, 10000]"),
    ("evaluate {root}/vae --likelihood --ode-tolerance 2", "--ode-tolerance must be in [1e-06, 0.1]"),
    ("evaluate {root}/ddpm --likelihood --ode-tolerance nan", "--ode-tolerance must be in"),
    ("evaluate {root}/ddpm --likelihood --likelihood-images 20000", "--likelihood-images must be a whole number in"),
    ("evaluate {root}/ddpm --likelihood --likelihood-images 65", "--likelihood-images must be a whole number in [1, 64] "
                                                               "(the run's test images)"),
    ("evaluate {root}/cfg --likelihood --probes 101", "--probes must be a whole number in [1, 100]"),
    ("evaluate {root}/cfg --probes 0", "--probes"),
    ("evaluate {root}/ddpm --steps-sweep 0,5", "--steps-sweep takes whole numbers in [1, 1000] on this model, got 0"),
    ("evaluate {root}/ddpm --steps-sweep 5,1001", "--steps-sweep takes whole numbers in [1, 1000]"),
    ("evaluate {root}/cfg --steps-sweep 5,100001", "--steps-sweep takes whole numbers in [1, 100000]"),
    ("evaluate {root}/ddpm --steps-sweep 5,10,5", "--steps-sweep repeats a number of steps"),
    ("evaluate {root}/ddpm --steps-sweep 5,x", "--steps-sweep expects whole numbers separated by commas"),
    ("evaluate {root}/ddpm --steps-sweep ,", "--steps-sweep needs one or more numbers"),
    ("evaluate {root}/ddpm --samplers ddim", "--samplers needs --steps-sweep"),
    ("evaluate {root}/ddpm --steps-sweep 5 --samplers euler", "unknown sampler 'euler'"),
    ("evaluate {root}/ddpm --steps-sweep 5 --samplers ddim:karras", "unknown grid 'karras'"),
    ("evaluate {root}/ddpm --steps-sweep 5 --samplers ddim:time:x", "grid power in 'ddim:time:x' is not a number"),
    ("evaluate {root}/ddpm --steps-sweep 5 --samplers ddim:time,ddim:time", "--samplers names one sampler twice"),
    ("evaluate {root}/ddpm --steps-sweep 5 --samplers ddim:log-snr:0.8", "--grid-power applies to --grid time"),
    ("evaluate {root}/ddpm --steps-sweep 5 --samplers ddim:time:9", "--grid-power must be in [0.25, 4]"),
    ("evaluate {root}/ddpm --steps-sweep 5 --sampler ancestral --eta 1", "--eta applies to --sampler ddim only"),
    ("evaluate {root}/vae --steps-sweep 5", "--steps-sweep and --samplers apply to the diffusion models"),
    ("evaluate {root}/vae --steps-sweep 5 --samplers ddim", "apply to the diffusion models"),
    ("sample {root}/ddpm --grid log-snr --grid-power 2 --out {root}/x", "--grid-power applies to --grid time / "
                                                                        "trailing only (log-snr takes none)"),
    ("sample {root}/ddpm --grid-power 0.1 --out {root}/x", "--grid-power must be in [0.25, 4]"),
    ("sample {root}/ddpm --grid-power nan --out {root}/x", "--grid-power must be in"),
    ("train ddpm --set process.grid=log-snr --set process.grid_power=2", "process.grid_power applies to"),
    ("train ddpm --set process.grid=karras", "process.grid"),
    # figures
    ("figures /nonexistent/run", "does not exist"),
    ("figures {root}/judge", "'classifier' run"),
    ("figures {root}/config-list", "expected a JSON object"),
    ("figures {root}/ckpt-garbage", "cannot read checkpoint"),
    ("figures {root}/metrics-broken", "metrics-broken/metrics.json is not a metrics file"),
    ("figures {root}/metrics-edited", "missing entry 'n_samples'"),
    # reproduce and the command itself
    ("reproduce --preset huge", "valid: reference, cpu, smoke"),
    ("reproduce --preset ''", "valid: reference, cpu, smoke"),
    ("reproduce --preset smoke --out {root}/file.txt", "is a file"),
    ("reproduce --preset smoke --device tpu", "valid: auto, cpu, cuda, mps"),
    ("", "the following arguments are required"),
    ("fly", "invalid choice"),
]


def _snapshot(root: Path) -> dict[Path, bytes | None]:
    """Every file's bytes and every folder (None), so that a created directory counts as a change."""
    return {p: p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("command, message", ROWS, ids=[r[0][:60] for r in ROWS])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(command, message, place, capsys, monkeypatch):
    import shlex

    monkeypatch.chdir(place)  # a default --out lands here, never in the source tree
    before = _snapshot(place)
    args = shlex.split(command.format(root=place))
    status = main(args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert message in lines[0], lines[0]
    assert _snapshot(place) == before


def test_the_table_covers_every_subcommand_and_enough_cases():
    commands = {row[0].split(" ")[0] for row in ROWS}
    assert {"train", "sample", "evaluate", "figures", "reproduce"} <= commands and len(ROWS) >= 80


@pytest.mark.parametrize("command", ["evaluate {root}/vae", "figures {root}/vae",
                                     "reproduce --preset smoke --out {root}/new-study",
                                     "train vae --preset smoke --out {root}/new-run"])
def test_a_read_only_destination_is_refused_before_work(command, place, capsys, monkeypatch):
    """A read-only file system (EROFS on the probe file): one line, exit 2, nothing written or created."""
    import errno
    import shlex

    from mnistgen import files

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    before = _snapshot(place)
    assert main(shlex.split(command.format(root=place))) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "cannot be written (" in lines[0] and "Read-only file system" in lines[0], lines
    assert _snapshot(place) == before
