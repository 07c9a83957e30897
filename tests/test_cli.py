"""The command line: exit codes, one-line errors, and the file contracts of sample / evaluate / figures."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnistgen.cli import main
from mnistgen.diffusion.registry import SAMPLERS

SAMPLER_NAMES = tuple(SAMPLERS)


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mnistgen", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("runs") / "vae"
    assert main(["train", "vae", "--preset", "smoke", "--out", str(out), "--no-progress",
                 "--data-dir", str(mnist_dir)]) == 0
    return out


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("runs") / "ddpm"
    assert main(["train", "ddpm", "--preset", "smoke", "--out", str(out), "--no-progress", "--epochs", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def cfg_run(tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("runs") / "cfg"
    assert main(["train", "cfg", "--preset", "smoke", "--out", str(out), "--no-progress", "--epochs", "1"]) == 0
    return out


@pytest.mark.parametrize("args, message", [
    (["train", "vae", "--preset", "huge"], "valid: reference, cpu, smoke"),
    (["train", "vae", "--epochs", "-3"], "must be >= 1"),
    (["train", "gan"], "invalid choice"),
    (["train", "vae", "--set", "train.bogus=1"], "valid: epochs"),
    (["sample", "/nonexistent/run", "--n", "4", "--out", "x.png"], "does not exist"),
    (["sample", "/nonexistent/run", "--n", "-4", "--out", "x.png"], "must be >= 1"),
    (["figures", "/nonexistent/run"], "does not exist"),
    (["evaluate", "/nonexistent/run"], "does not exist"),
    (["reproduce", "--preset", "huge"], "valid: reference, cpu, smoke"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, cli):
    result = cli(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_the_entry_point_exits_2_with_one_line_and_no_traceback():
    """The installed ``python -m mnistgen`` (not only ``main``) turns bad input into exit status 2."""
    result = _run("train", "vae", "--preset", "huge")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "mnistgen: error: bad preset 'huge'; valid: reference, cpu, smoke"], result.stderr


def test_missing_data_is_one_line_and_exit_2(tmp_path, cli):
    result = cli("train", "vae", "--preset", "smoke", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "train-images-idx3-ubyte.gz" in lines[0]


HELP = {  # each command's help names its own options
    "train": ("--preset", "--resume", "--tensorboard", "--set"),
    "sample": ("--sampler", "--grid", "--guidance", "--label", "--animate", *SAMPLER_NAMES),
    "evaluate": ("--guidance-sweep", "--iwae-k", "--classifier", "--grid", *SAMPLER_NAMES),
    "figures": ("--out",),
    "reproduce": ("--preset", "--out"),
    "export": ("--to", "--commit"),
    "edit": ("inpaint", "invert", "interpolate", "--mask", "--jump", "--resample", "--frames", "RePaint"),
}


@pytest.mark.parametrize("command", list(HELP))
def test_help_explains_each_command(command, cli):
    result = cli(command, "--help")
    assert result.returncode == 0 and f"usage: mnistgen {command}" in result.stdout
    text = " ".join(result.stdout.split())  # argparse wraps lines
    missing = [word for word in HELP[command] if word not in text]
    assert missing == []


@pytest.mark.slow
def test_vae_sample_evaluate_figures(vae_run, tmp_path, mnist_dir):
    assert main(["sample", str(vae_run), "--n", "10", "--out", str(tmp_path / "s")]) == 0
    with np.load(tmp_path / "s.npz") as f:
        images = f["images"]
    assert images.shape == (10, 1, 28, 28) and images.dtype == np.float32
    assert 0 <= images.min() and images.max() <= 1 and (tmp_path / "s.png").is_file()
    assert main(["evaluate", str(vae_run), "--iwae-k", "5", "--n-images", "200", "--n", "100"]) == 0
    metrics = json.loads((vae_run / "metrics.json").read_text())
    assert metrics["iwae_k"] == 5 and metrics["iwae_n_images"] == 200
    assert metrics["iwae_nll"] < metrics["val_neg_elbo"] + 1.0 and metrics["n_samples"] == 100
    assert main(["figures", str(vae_run)]) == 0
    names = {"f1_loss.png", "f2_samples.png", "f3_traversals_0-9.png", "f4_traversals_10-19.png",
             "f5_interpolation.png", "f6_interp_4_9.png", "f7_interp_5_6.png", "f8_interp_8_2.png"}
    assert names <= {p.name for p in (vae_run / "figures").iterdir()}
    for name in ("config.json", "history.json", "checkpoints", "samples", "figures", "metrics.json"):
        assert (vae_run / name).exists()


def test_rerunning_a_finished_run_without_resume_is_refused(vae_run, cli):
    result = cli("train", "vae", "--preset", "smoke", "--out", str(vae_run))
    assert result.returncode == 2 and "--resume" in result.stderr


@pytest.mark.slow
def test_ddpm_samplers_write_the_promised_files(ddpm_run, tmp_path, cli):
    for extra in (["--sampler", "ddim", "--steps", "5", "--eta", "1"], ["--sampler", "ancestral"],
                  ["--sampler", "dpm++2m", "--steps", "5"]):
        assert main(["sample", str(ddpm_run), "--n", "3", "--out", str(tmp_path / "d.npz"), *extra]) == 0
        with np.load(tmp_path / "d.npz") as f:
            assert f["images"].shape == (3, 1, 28, 28)
    assert cli("sample", str(ddpm_run), "--n", "3", "--out", str(tmp_path / "x"), "--eta", "2").returncode == 2
    assert cli("sample", str(ddpm_run), "--n", "3", "--out", str(tmp_path / "x"), "--label", "3").returncode == 2


def test_cfg_sample_labels(cfg_run, tmp_path, cli):
    assert main(["sample", str(cfg_run), "--n", "2", "--label", "all", "--guidance", "1", "--steps", "4",
                 "--out", str(tmp_path / "c.png")]) == 0
    with np.load(tmp_path / "c.npz") as f:
        assert f["images"].shape == (20, 1, 28, 28) and f["labels"].tolist() == sorted(list(range(10)) * 2)
    assert main(["sample", str(cfg_run), "--n", "3", "--label", "7", "--steps", "4", "--out", str(tmp_path / "s")]) == 0
    with np.load(tmp_path / "s.npz") as f:
        assert f["labels"].tolist() == [7, 7, 7]
    bad = cli("sample", str(cfg_run), "--n", "3", "--label", "12", "--out", str(tmp_path / "b"))
    assert bad.returncode == 2 and "0-9" in bad.stderr


def test_checkpoint_of_another_kind_is_exit_2(vae_run, ddpm_run, tmp_path, cli):
    import shutil

    shutil.copytree(ddpm_run, tmp_path / "mixed")
    shutil.copy(vae_run / "checkpoints" / "last.pt", tmp_path / "mixed" / "checkpoints" / "last.pt")
    result = cli("sample", str(tmp_path / "mixed"), "--n", "2", "--out", str(tmp_path / "m"))
    assert result.returncode == 2 and "'vae' model, not a 'ddpm'" in result.stderr


def test_sample_and_figures_refuse_a_classifier_run(tmp_path, cli):
    from mnistgen.config import preset
    from mnistgen.storage.rundir import RunDir

    run = RunDir(tmp_path / "judge")
    run.root.mkdir()
    run.write_config(preset("classifier", "smoke"))
    for args in (["sample", str(run.root), "--n", "2", "--out", str(tmp_path / "s")], ["figures", str(run.root)]):
        result = cli(*args)
        assert result.returncode == 2 and "'classifier' run" in result.stderr


def test_sample_draws_any_n_in_bounded_batches(vae_run, tmp_path, monkeypatch):
    """n above one batch: the model never sees more than SAMPLE_BATCH at once, the .npz holds every
    sample (streamed), and the grid shows only the first ones."""
    from mnistgen.kinds import base
    from mnistgen.kinds.vae import VAEKind

    sizes, real = [], VAEKind.sample

    def spy(self, config, model, n, *args, **kwargs):
        sizes.append(n)
        return real(self, config, model, n, *args, **kwargs)

    monkeypatch.setattr(VAEKind, "sample", spy)
    n = 2 * base.SAMPLE_BATCH + 7
    assert main(["sample", str(vae_run), "--n", str(n), "--out", str(tmp_path / "many"), "--seed", "3"]) == 0
    assert sizes == [base.SAMPLE_BATCH, base.SAMPLE_BATCH, 7]
    with np.load(tmp_path / "many.npz") as f:
        images = f["images"]
    assert images.shape == (n, 1, 28, 28) and np.isfinite(images).all()
    assert len({images[i].tobytes() for i in range(n)}) == n  # every sample is its own draw
    from PIL import Image

    with Image.open(tmp_path / "many.png") as grid:  # 400 of the 1,007 samples: 20 columns of 30 px
        assert grid.size[0] <= 20 * 30 + 2 < 32 * 30


@pytest.mark.parametrize("out, written", [
    ("{run}.npz", ("{run}.npz", "{run}.png")),  # a file named after the run, beside its folder
    ("{run}.png", ("{run}.npz", "{run}.png")),
    ("{run}.v2", ("{run}.v2.npz", "{run}.v2.png")),  # any other suffix is part of the name
])
def test_sample_files_may_sit_beside_the_run_they_come_from(out, written, vae_run, capsys):
    """``--out runs/vae.npz`` names two files, not the folder ``runs/vae``: both are written beside it."""
    for path in written:
        Path(path.format(run=vae_run)).unlink(missing_ok=True)
    assert main(["sample", str(vae_run), "--n", "4", "--out", out.format(run=vae_run), "--no-progress"]) == 0
    for path in written:
        assert Path(path.format(run=vae_run)).is_file()
    assert (vae_run / "config.json").is_file()  # the run itself untouched


def test_sample_out_that_is_a_folder_or_would_overwrite_one_is_refused(vae_run, tmp_path, capsys):
    (tmp_path / "grid.png").mkdir()
    for out, message in ((vae_run, f"--out {vae_run} is a directory"), (Path("."), "--out . is a directory"),
                         (Path("/"), "--out / is a directory"),
                         (tmp_path / "grid", f"would write {tmp_path / 'grid.png'}, which is a directory")):
        assert main(["sample", str(vae_run), "--n", "4", "--out", str(out)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "grid.npz").exists()


@pytest.fixture
def digits(tmp_path, mnist_test_unit):
    path = tmp_path / "digits.npz"
    np.savez(path, images=mnist_test_unit.x[:3].numpy())
    return path


def test_edit_inpaint_keeps_the_known_half_and_writes_both_files(digits, tmp_path, cli):
    result = cli("edit", "inpaint", "pretrained:cfg", "--input", digits, "--mask", "upper", "--label", "4",
                 "--guidance", "1", "--steps", "10", "--jump", "2", "--resample", "2", "--out", tmp_path / "done")
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "done.npz") as f, np.load(digits) as given:
        out, mask, x = f["images"], f["mask"], given["images"]
    assert out.shape == (3, 1, 28, 28) and mask.shape == out.shape and mask[:, :, :14].max() == 0
    assert np.array_equal(out[:, :, 14:], x[:, :, 14:]) and (tmp_path / "done.png").is_file()


def test_edit_invert_and_interpolate_write_their_arrays(digits, tmp_path, cli):
    assert cli("edit", "invert", "pretrained:ddpm", "--input", digits, "--steps", "20",
               "--out", tmp_path / "inv").returncode == 0
    with np.load(tmp_path / "inv.npz") as f:
        assert f["noise"].shape == (3, 1, 32, 32) and f["images"].shape == (3, 1, 28, 28)
    assert cli("edit", "interpolate", "pretrained:vae", "--input", digits, "--frames", "4",
               "--out", tmp_path / "path.png").returncode == 0
    with np.load(tmp_path / "path.npz") as f:
        assert f["images"].shape == (4, 1, 28, 28)


@pytest.mark.parametrize("args, message", [
    (["invert", "pretrained:ddpm", "--mask", "lower"], "--mask does not apply to edit invert"),
    (["inpaint", "pretrained:ddpm"], "edit inpaint needs --mask"),
    (["inpaint", "pretrained:ddpm", "--mask", "diagonal"], "neither a named mask"),
    (["inpaint", "pretrained:ddpm", "--mask", "lower", "--label", "3"], "takes no labels"),
    (["inpaint", "pretrained:cfg", "--mask", "lower", "--label", "x"], "must be a digit 0-9"),
    (["inpaint", "pretrained:vae", "--mask", "lower", "--steps", "9"], "takes no RePaint settings"),
    (["interpolate", "pretrained:ddpm", "--frames", "1"], "--frames: must be >= 2"),
    (["invert", "pretrained:vae"], "need a diffusion model"),
])
def test_bad_edits_are_one_line_and_exit_2(digits, tmp_path, cli, args, message):
    task, run, *rest = args
    result = cli("edit", task, run, "--input", digits, "--out", tmp_path / "x", *rest)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "x.npz").exists()


def test_an_edit_input_that_is_not_an_image_is_exit_2(tmp_path, cli):
    (tmp_path / "notes.png").write_text("hello")
    result = cli("edit", "invert", "pretrained:ddpm", "--input", tmp_path / "notes.png", "--out", tmp_path / "x")
    assert result.returncode == 2 and "neither a PNG" in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.slow
def test_evaluate_likelihood_prints_and_writes_bits_per_pixel(cfg_run, capsys):
    assert main(["evaluate", str(cfg_run), "--n", "20", "--likelihood", "--likelihood-images", "4", "--strata", "4",
                 "--ode-tolerance", "1e-2", "--probes", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    bits = json.loads((cfg_run / "metrics.json").read_text())["bits_per_dim"]
    assert [(r["method"], r["label"]) for r in bits["rows"]] == [("vlb-continuous", "true")] * 2 + \
        [("ode", "true")] + [("vlb-continuous", "null")] * 2 + [("ode", "null")]
    assert all(r["images"] == 4 for r in bits["rows"]) and bits["rows"][0]["evaluations"] == 4  # the decoder calls no network
    for r in bits["rows"]:
        assert f"{r['bits_per_dim']:.4f} +- {r['standard_error']:.4f} (4 images" in out
    assert "bits/dim ode, null label:" in out and "decoder at log-SNR 20 (the process's end)" in out
