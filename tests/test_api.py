"""The public Python API: load, sample (always 28x28 in [0, 1]), reverse chains and animations,
the VAE's latent space, and train / evaluate / draw_figures / export as the CLI uses them."""

import json
import re
import shutil
import subprocess
import sys
import types

import pytest
import torch
from PIL import Image

import mnistgen
from mnistgen import api, defaults
from mnistgen.errors import UserError
from mnistgen.weightfiles import read_weights

SMALL = {"data.train_limit": 512, "data.val_limit": 128}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mnist_dir):
    """Smoke runs of the three generative models; the DDPM at 32x32 (padded) and the CFG network predicting v,
    like the cpu presets."""
    root = tmp_path_factory.mktemp("api")
    made = {}
    for kind, extra in (("vae", {}), ("ddpm", {"data.resolution": 32}), ("cfg", {"process.prediction": "v"})):
        made[kind] = mnistgen.train(kind, "smoke", root / kind, overrides={**SMALL, **extra, "train.epochs": 1},
                                    progress=False, log=None, data_dir=mnist_dir)
    return made


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.slow
def test_importing_mnistgen_loads_no_torch():
    code = "import sys, mnistgen; assert 'torch' not in sys.modules; mnistgen.load; assert 'torch' in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_train_returns_the_run_and_its_history(runs):
    run = runs["ddpm"]
    assert run.path.is_dir() and run.config.kind == "ddpm" and [r.epoch for r in run.history] == [1]
    assert isinstance(run.load(), mnistgen.Model)


@pytest.mark.parametrize("kind", ["vae", "ddpm", "cfg"])
def test_samples_are_28x28_in_unit_range_and_repeatable(runs, kind):
    model = mnistgen.load(runs[kind].path, device="cpu")
    labels = 3 if kind == "cfg" else None
    a = model.sample(5, labels=labels, generator=_generator(1), progress=False)
    b = model.sample(5, labels=labels, generator=_generator(1), progress=False)
    assert a.shape == (5, 1, 28, 28) and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, model.sample(5, labels=labels, generator=_generator(2), progress=False))


def test_batches_stream_n_samples_repeatably(runs):
    """Batches of 3, 3 and 1 (the noise is drawn per batch, so the same seed and batch size give
    the same samples; another batch size gives other, equally valid ones)."""
    model = mnistgen.load(runs["ddpm"].path, device="cpu")
    parts = list(model.sample_batches(7, generator=_generator(3), steps=3, batch_size=3, progress=False))
    again = list(model.sample_batches(7, generator=_generator(3), steps=3, batch_size=3, progress=False))
    assert [len(p) for p in parts] == [3, 3, 1]
    assert all(torch.equal(a, b) for a, b in zip(parts, again))
    assert not torch.equal(parts[0], parts[1])
    with pytest.raises(UserError, match="batch_size"):
        model.sample_batches(7, batch_size=0)


def test_ddpm_sampler_options_are_checked(runs):
    ddpm = mnistgen.load(runs["ddpm"].path, "cpu")
    with pytest.raises(UserError, match=r"unknown sampler 'euler'; valid: ancestral, ddim, dpm\+\+2m, dpm\+\+2m-sde"):
        ddpm.sample(2, sampler="euler")
    with pytest.raises(UserError, match="--eta applies to --sampler ddim only"):
        ddpm.sample(2, sampler="dpm++2m", eta=0.5)
    with pytest.raises(UserError, match="--eta applies to --sampler ddim only"):
        ddpm.sample(2, sampler="dpm++2m-sde", eta=1.0)
    with pytest.raises(UserError, match="whole number"):
        ddpm.sample(2, sampler="ancestral", steps=2.5)
    for sampler in ("ancestral", "dpm++2m", "dpm++2m-sde"):
        assert ddpm.sample(2, sampler=sampler, steps=3, generator=_generator(), progress=False).shape == (2, 1, 28, 28)
    sde = [ddpm.sample(2, sampler="dpm++2m-sde", steps=3, generator=_generator(seed), progress=False) for seed in (0, 0, 1)]
    assert torch.equal(sde[0], sde[1]) and not torch.equal(sde[0], sde[2])  # its noise comes from the generator


def test_labels_are_checked(runs):
    cfg, vae = mnistgen.load(runs["cfg"].path, "cpu"), mnistgen.load(runs["vae"].path, "cpu")
    with pytest.raises(UserError, match="needs labels"):
        cfg.sample(2)
    with pytest.raises(UserError, match="digits 0-9"):
        cfg.sample(2, labels=[1, 12])
    with pytest.raises(UserError, match="2 of them"):
        cfg.sample(2, labels=[1, 2, 3])
    with pytest.raises(UserError, match="takes no labels"):
        vae.sample(2, labels=1)
    with pytest.raises(UserError, match="--guidance does not apply"):
        vae.sample(2, guidance=1.0)
    with pytest.raises(UserError, match="n must be"):
        vae.sample(0)
    with pytest.raises(UserError, match="whole digits"):
        cfg.sample(2, labels=[1.7, 2.0])  # refused, not truncated to 1 and 2
    with pytest.raises(UserError, match="generator is on"):  # a CUDA generator for a model on the CPU
        cfg.sample(2, labels=1, generator=types.SimpleNamespace(device=torch.device("cuda", 0)))
    per_sample = cfg.sample(3, labels=[0, 1, 2], generator=_generator(), steps=3, progress=False)
    assert per_sample.shape == (3, 1, 28, 28)
    import numpy as np

    for digit in (7, np.int64(7), torch.tensor(7)):  # one digit, however it is given
        same = cfg.sample(2, labels=digit, generator=_generator(), steps=3, progress=False)
        assert torch.equal(same, cfg.sample(2, labels=[7, 7], generator=_generator(), steps=3, progress=False))
    with pytest.raises(UserError, match="steps"):
        cfg.reverse_chain(2, labels=1, steps=-1)  # the settings are checked before the chain's steps


@pytest.mark.parametrize("kind, options", [("ddpm", {"sampler": "ancestral"}), ("ddpm", {"steps": 5}),
                                           ("cfg", {"labels": 4, "steps": 6})])
@pytest.mark.slow
def test_the_reverse_chain_ends_in_the_sample(runs, kind, options):
    """The chain's last state (t = 0) is the sample drawn from the same generator; its first state
    is still nearly noise (far from it)."""
    model = mnistgen.load(runs[kind].path, "cpu")
    chain = model.reverse_chain(3, generator=_generator(5), **options)
    states = 6 if options.get("sampler") == "ancestral" else 5 if kind == "ddpm" else 4
    # ancestral-1000: six by fraction of t; 5 DDIM steps: too few by fraction, so all 5 steps; CFG: 4 by fraction
    assert chain.shape == (3, states, 1, 28, 28)
    sample = model.sample(3, generator=_generator(5), progress=False, **options)
    torch.testing.assert_close(chain[:, -1], sample)
    assert (chain[:, 0] - sample).abs().mean() > 0.05


@pytest.mark.slow
def test_reverse_chain_at_chosen_steps_and_its_checks(runs):
    model = mnistgen.load(runs["ddpm"].path, "cpu")
    chain = model.reverse_chain(2, at=[999, 500, 0], sampler="ancestral", generator=_generator())
    assert chain.shape == (2, 3, 1, 28, 28)
    with pytest.raises(UserError, match=r"in \[0, 999\]"):
        model.reverse_chain(2, at=[1000])
    with pytest.raises(UserError, match="one pass"):
        mnistgen.load(runs["vae"].path, "cpu").reverse_chain(2)


def test_animation_is_a_gif_that_ends_in_the_samples(runs, tmp_path):
    model = mnistgen.load(runs["cfg"].path, "cpu")
    path = model.animate(tmp_path / "chain.gif", 4, frames=5, labels=[1, 2, 3, 4], steps=8, generator=_generator(9))
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 5
        gif.seek(gif.n_frames - 1)
        last = torch.tensor(list(gif.convert("L").tobytes()), dtype=torch.float32).view(gif.size[1], gif.size[0])
    sample = model.sample(4, labels=[1, 2, 3, 4], steps=8, generator=_generator(9), progress=False)
    first_digit = last[2:30, 2:30] / 255  # the grid's first image, after its 2-pixel border
    torch.testing.assert_close(first_digit, sample[0, 0], atol=1 / 255 + 1e-6, rtol=0)


def test_the_vae_latent_space(runs, mnist_test_unit):
    model = mnistgen.load(runs["vae"].path, "cpu")
    a, b = mnist_test_unit.x[0], mnist_test_unit.x[1]
    codes = model.encode(torch.stack([a, b]))
    assert codes.shape == (2, model.config.model.latent)
    path = model.interpolate(a, b, steps=5)
    assert path.shape == (5, 1, 28, 28)
    torch.testing.assert_close(path[0], model.decode(codes[:1])[0])
    torch.testing.assert_close(path[-1], model.decode(codes[1:])[0])
    grid = model.traverse(codes[0], dims=[0, 3], offsets=(-2, 0, 2))
    assert grid.shape == (2, 3, 1, 28, 28)
    torch.testing.assert_close(grid[1, 1], model.decode(codes[:1])[0])  # offset 0: the code itself
    assert not torch.equal(grid[1, 0], grid[1, 2])
    with pytest.raises(UserError, match="no latent space"):
        mnistgen.load(runs["ddpm"].path, "cpu").encode(a[None])


def test_unknown_pretrained_names_list_the_valid_ones():
    with pytest.raises(UserError, match="pretrained:cfg"):
        mnistgen.load("pretrained:gan")


@pytest.mark.slow
def test_export_writes_loadable_models_with_cards(runs, tmp_path, mnist_dir):
    study = tmp_path / "study"
    study.mkdir()
    for kind, run in runs.items():
        mnistgen.evaluate(run.path, n=50, iwae_k=2, n_images=50, device="cpu", data_dir=mnist_dir,
                          guidance_sweep=(0, 1) if kind == "cfg" else None, sweep_samples=20 if kind == "cfg" else None)
        (study / kind).symlink_to(run.path)
    (study / "provenance.json").write_text(json.dumps({"commit": "abc123", "device": "a test CPU"}))
    cards = api.export_pretrained(study, tmp_path / "shipped")
    assert [c.parent.name for c in cards] == ["vae", "ddpm", "cfg"]
    for card in cards:
        text = card.read_text()
        assert "abc123" in text and "a test CPU" in text and "MNIST-FD" in text
        shipped = mnistgen.load(card.parent, "cpu")
        original = mnistgen.load(runs[card.parent.name].path, "cpu")
        labels = 2 if shipped.kind.takes_labels else None
        a = shipped.sample(3, labels=labels, generator=_generator(), progress=False)
        b = original.sample(3, labels=labels, generator=_generator(), progress=False)
        assert (a - b).abs().mean() < 0.005 and (a - b).abs().max() < 0.2  # float16 weights: nearly the same samples
        weights = read_weights(card.parent / "model.safetensors").tensors
        assert all(v.dtype == torch.float16 for v in weights.values() if v.is_floating_point())
        assert not (card.parent / "checkpoints").exists()  # weights only, as safetensors
        listed = json.loads((card.parent / "MANIFEST.json").read_text())["sha256"]
        assert set(listed) == {p.relative_to(card.parent).as_posix() for p in card.parent.rglob("*")
                               if p.is_file() and p.name != "MANIFEST.json"}
    assert "val neg" not in cards[0].read_text() and "ELBO" in cards[0].read_text()
    assert "predicts" not in cards[0].read_text()  # the VAE has no noise process
    for kind, card in zip(("ddpm", "cfg"), cards[1:]):
        assert re.search(rf"predicts {runs[kind].config.process.prediction}\b", card.read_text())
    assert (tmp_path / "shipped" / "ddpm" / "samples").is_dir()  # F9 can be drawn from the shipped run
    assert mnistgen.draw_figures(tmp_path / "shipped" / "ddpm", device="cpu")


@pytest.mark.slow
def test_evaluation_shows_a_sampling_bar_only_when_asked(runs, mnist_dir, capfd):
    """More samples than one batch: a bar on stderr with progress, none without (reproduce --no-progress)."""
    for progress in (False, True):
        capfd.readouterr()
        mnistgen.evaluate(runs["vae"].path, n=600, iwae_k=2, n_images=20, device="cpu", data_dir=mnist_dir,
                          progress=progress)
        assert ("sampling" in capfd.readouterr().err) == progress


@pytest.mark.slow
def test_metrics_json_holds_the_last_evaluation_only(runs, mnist_dir):
    """No key of an earlier, larger evaluation survives next to a smaller one, and no earlier sweep
    (of perhaps another model state) stays beside new scores."""
    cfg = runs["cfg"].path
    mnistgen.evaluate(cfg, n=70, device="cpu", data_dir=mnist_dir, guidance_sweep=(0, 1), sweep_samples=20,
                      progress=False)
    first = json.loads((cfg / "metrics.json").read_text())
    assert len(first["coverage_per_class"]) == 10 and first["n_samples"] == 70
    mnistgen.evaluate(cfg, n=20, device="cpu", data_dir=mnist_dir, progress=False)  # 2 per digit: no per-digit coverage
    second = json.loads((cfg / "metrics.json").read_text())
    assert second["n_samples"] == 20 and "coverage_per_class" not in second
    assert "guidance_sweep" in first and "guidance_sweep" not in second


@pytest.mark.slow
def test_the_vae_is_also_scored_on_binarized_digits(runs, mnist_dir, monkeypatch):
    """The second IWAE bound sees the test images dynamically binarized: values in {0, 1}, each pixel
    1 with its grey level as probability (so the mean ink is kept)."""
    from mnistgen.kinds import vae as vae_kind

    seen = []
    real = vae_kind.iwae_nll_mean
    monkeypatch.setattr(vae_kind, "iwae_nll_mean", lambda model, x, k, g: seen.append(x) or real(model, x, k, g))
    like = mnistgen.evaluate(runs["vae"].path, n=50, iwae_k=50, n_images=200, device="cpu", data_dir=mnist_dir,
                             progress=False).likelihood
    grey, binary = seen
    assert binary.shape == grey.shape and set(binary.unique().tolist()) == {0.0, 1.0}
    assert not set(grey.unique().tolist()) <= {0.0, 1.0}
    assert binary.mean().item() == pytest.approx(grey.mean().item(), abs=0.005)
    assert 0 < like.binarized_iwae_nll <= like.binarized_neg_elbo + 0.5  # a proper bound: IWAE-50 is the tighter


def test_export_refuses_before_it_replaces_anything(runs, tmp_path):
    study = tmp_path / "study"
    for kind, run in runs.items():
        shutil.copytree(run.path, study / kind, ignore=shutil.ignore_patterns("metrics.json"))
    with pytest.raises(UserError, match="has not been evaluated"):
        api.export_pretrained(study, tmp_path / "out")
    for kind in runs:
        (study / kind / "metrics.json").write_text(json.dumps(
            {"model": kind, "preset": "smoke", "n_samples": 6, "mnist_fd": 1.0, "class_histogram": [1] * 10,
             "sample_seconds": 0.1}))
    with pytest.raises(UserError, match="overlaps the study"):
        api.export_pretrained(study, study / "shipped")
    (tmp_path / "taken" / "ddpm").mkdir(parents=True)
    (tmp_path / "taken" / "ddpm" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not an exported model"):
        api.export_pretrained(study, tmp_path / "taken")
    assert (tmp_path / "taken" / "ddpm" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "taken" / "vae").exists()
    (study / "provenance.json").write_text("{broken")
    with pytest.raises(UserError, match="provenance.json is damaged"):
        api.export_pretrained(study, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_pretrained_copy_is_made_once_and_keeps_its_own_results(tmp_path):
    target = defaults.writable_copy("pretrained:vae", tmp_path / "mine")
    (target / "metrics.json").write_text('{"model": "vae", "preset": "cpu"}')
    assert defaults.writable_copy("pretrained:vae", tmp_path / "mine") == target
    assert json.loads((target / "metrics.json").read_text()) == {"model": "vae", "preset": "cpu"}


def test_metrics_name_the_mnistgen_that_computed_them():
    from pathlib import Path

    from mnistgen.provenance import git_commit, source_version

    root = Path(mnistgen.__file__).resolve().parents[2]
    if (root / ".git").exists():  # a checkout: its commit; an installed copy: none
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        assert git_commit() == head and head[:12] in source_version()
    else:
        assert git_commit() is None
    assert source_version().startswith("mnistgen ")
