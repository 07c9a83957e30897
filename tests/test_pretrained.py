"""The models shipped inside the package, checked for what they are sold as: the bundled judge
finds every digit in DDPM samples and the requested digit in CFG samples; the VAE decodes images.
A broken, swapped or missing file fails here."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import mnistgen
from mnistgen import api, defaults
from mnistgen.errors import UserError
from mnistgen.evaluation.fd import judge, load_classifier


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


def test_the_three_models_ship_with_model_cards():
    assert api.pretrained_names() == ["cfg", "ddpm", "vae"]
    for name in api.pretrained_names():
        card = (defaults.PRETRAINED_DIR / name / "MODEL_CARD.md").read_text()
        assert "commit:" in card and "minutes" in card and ("MNIST-FD" in card or "ELBO" in card)


def test_shipped_vae_decodes_digit_images(classifier):
    images = mnistgen.load("pretrained:vae", "cpu").sample(100, generator=torch.Generator().manual_seed(0),
                                                          progress=False)
    assert images.shape == (100, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    assert len(set(judge(classifier, images).predictions.tolist())) >= 8  # varied digits, not one blur


@pytest.mark.slow
def test_shipped_ddpm_draws_all_ten_digits(classifier):
    images = mnistgen.load("pretrained:ddpm", "cpu").sample(200, generator=torch.Generator().manual_seed(0),
                                                           progress=False)
    assert images.shape == (200, 1, 28, 28)
    assert sorted(set(judge(classifier, images).predictions.tolist())) == list(range(10))


@pytest.mark.slow
def test_shipped_cfg_draws_the_requested_digit(classifier):
    model = mnistgen.load("pretrained:cfg", "cpu")
    labels = torch.arange(10).repeat_interleave(10)
    images = model.sample(100, labels=labels, generator=torch.Generator().manual_seed(0), progress=False)
    accuracy = (judge(classifier, images).predictions == labels).float().mean().item()
    assert accuracy >= 0.9, f"class accuracy {accuracy:.2f} at the default w = {model.config.process.guidance}"


def test_a_swapped_weights_file_is_refused(tmp_path):
    """Swapped in: the manifest names the file; with the manifest rewritten to match, the weights'
    own config still refuses them."""
    from mnistgen.weightfiles import write_manifest

    for name in ("ddpm", "cfg"):
        shutil.copytree(defaults.PRETRAINED_DIR / name, tmp_path / name)
    shutil.copy(tmp_path / "ddpm" / "model.safetensors", tmp_path / "cfg" / "model.safetensors")
    with pytest.raises(UserError, match="cfg/model.safetensors does not match its SHA-256"):
        mnistgen.load(tmp_path / "cfg", "cpu")
    write_manifest(tmp_path / "cfg", ["model.safetensors", "config.json", "history.json"])
    with pytest.raises(UserError, match="'ddpm' model, not a 'cfg' model"):
        mnistgen.load(tmp_path / "cfg", "cpu")


@pytest.mark.slow
def test_the_one_liner_samples_sevens(tmp_path, classifier):
    done = subprocess.run([sys.executable, "-m", "mnistgen", "sample", "pretrained:cfg", "--label", "7", "--n", "16",
                           "--out", str(tmp_path / "sevens.png")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "sevens.png").is_file()
    with np.load(tmp_path / "sevens.npz") as f:
        images, labels = torch.from_numpy(f["images"]), f["labels"]
    assert images.shape == (16, 1, 28, 28) and (labels == 7).all()
    assert (judge(classifier, images).predictions == 7).sum() >= 14


@pytest.mark.slow
def test_pretrained_models_are_read_only_and_work_in_a_copy(tmp_path):
    with pytest.raises(UserError, match="--out"):
        mnistgen.draw_figures("pretrained:cfg")
    paths = mnistgen.draw_figures("pretrained:cfg", out=tmp_path / "cfg", device="cpu")
    assert {p.name for p in paths} == {"f12_epochs.png", "guidance_sweep.png"}
    assert not (defaults.PRETRAINED_DIR / "cfg" / "figures").exists()


def test_the_wheel_carries_every_shipped_file(tmp_path):
    """`pip install mnistgen` gets the pretrained models and the judge: each data file under the
    package (not Python) is in the wheel that pip builds from this source tree (offline, no deps)."""
    root = Path(mnistgen.__file__).parents[2]
    source = tmp_path / "source"
    shutil.copytree(root / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    wheel, = (tmp_path / "dist").glob("mnistgen-*.whl")
    packed = set(zipfile.ZipFile(wheel).namelist())
    package = source / "src" / "mnistgen"
    shipped = {f"mnistgen/{p.relative_to(package).as_posix()}" for p in package.rglob("*")
               if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}
    assert {"mnistgen/pretrained/cfg/model.safetensors", "mnistgen/pretrained/cfg/MANIFEST.json",
            "mnistgen/evaluation/weights/classifier.safetensors", "mnistgen/evaluation/weights/MANIFEST.json"} <= shipped
    assert not any(name.endswith(".pt") for name in shipped)  # nothing shipped is a pickle
    assert shipped <= packed, sorted(shipped - packed)
