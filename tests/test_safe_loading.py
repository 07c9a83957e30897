"""Opening a file someone else made runs none of their code, and writing never follows their links.

Each payload is a real pickle whose ``__reduce__`` calls ``exec`` to create a marker file: a
test passes only if the marker never appears and the command ends in one line with exit 2.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pickle
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import mnistgen
from mnistgen import api, defaults, export
from mnistgen.cli import main
from mnistgen.errors import UserError
from mnistgen.evaluation import fd
from mnistgen.study import write_report
from mnistgen.storage.checkpoint import FORMAT_VERSION, load_checkpoint
from mnistgen.runs import build_trainer, train
from mnistgen.config import RunConfig
from mnistgen.weightfiles import FORMAT, MANIFEST_NAME, WEIGHTS_NAME, read_weights, write_manifest

SMALL = ["--preset", "smoke", "--no-progress", "--set", "data.train_limit=256", "--set", "data.val_limit=64"]
FORMAT2 = Path(__file__).parent / "fixtures" / "format2_smoke_ddpm"


class Payload:
    """Unpickling this runs ``exec``, which writes ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def _poison(checkpoint: Path, marker: Path) -> None:
    """A genuine checkpoint with the payload added to its state."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["note"] = Payload(marker)
    torch.save(state, checkpoint)


def _run(command: str, capsys) -> tuple[int, list[str]]:
    status = main(shlex.split(command))
    return status, capsys.readouterr().err.strip().splitlines()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mnist_dir) -> Path:
    """Genuine smoke runs of the three generative models, with the shipped metrics.json (as if evaluated)."""
    root = tmp_path_factory.mktemp("genuine")
    for kind in ("vae", "ddpm", "cfg"):
        assert main(["train", kind, *SMALL, "--out", str(root / kind)]) == 0
        shutil.copy(defaults.PRETRAINED_DIR / kind / "metrics.json", root / kind / "metrics.json")
    return root


@pytest.fixture
def poisoned(runs, tmp_path) -> tuple[Path, Path]:
    """(a study of the three runs with a payload in the DDPM's last.pt, the marker it would write)."""
    study, marker = tmp_path / "study", tmp_path / "ran"
    shutil.copytree(runs, study)
    _poison(study / "ddpm" / "checkpoints" / "last.pt", marker)
    return study, marker


def _refused(status: int, lines: list[str], marker: Path, what: str = "builtins.exec") -> None:
    assert not marker.exists(), "the payload ran"
    assert status == 2 and len(lines) == 1, lines
    assert what in lines[0] and "refused" in lines[0], lines[0]


@pytest.mark.parametrize("command", [
    "sample {study}/ddpm --n 2 --out {tmp}/x --no-progress",
    "evaluate {study}/ddpm --n 20 --no-progress",
    "figures {study}/ddpm",
    "train ddpm --out {study}/ddpm --resume --no-progress",
    "reproduce --out {study} --no-progress",
    "export {study} --to {tmp}/shipped",
])
def test_a_payload_in_a_checkpoint_never_runs(command, poisoned, tmp_path, capsys):
    study, marker = poisoned
    before = {p: p.read_bytes() for p in study.rglob("*") if p.is_file()}
    status, lines = _run(command.format(study=study, tmp=tmp_path), capsys)
    _refused(status, lines, marker)
    assert {p: p.read_bytes() for p in study.rglob("*") if p.is_file()} == before  # nothing written first
    assert not (tmp_path / "shipped").exists() and not (tmp_path / "x.npz").exists()


def test_load_refuses_a_payload_naming_the_file_and_the_global(poisoned):
    study, marker = poisoned
    with pytest.raises(UserError, match=r"ddpm/checkpoints/last\.pt is refused: opening it would call builtins\.exec"):
        mnistgen.load(study / "ddpm", device="cpu")
    assert not marker.exists()


def test_a_payload_in_an_epoch_checkpoint_is_not_a_fallback(runs, tmp_path, capsys):
    """last.pt unreadable and epoch_002.pt poisoned: the fallback to the epoch file refuses it too."""
    run, marker = tmp_path / "run", tmp_path / "ran"
    shutil.copytree(runs / "ddpm", run)
    (run / "checkpoints" / "last.pt").write_bytes(b"half a checkpoint")
    _poison(run / "checkpoints" / "epoch_002.pt", marker)
    for command in (f"sample {run} --n 2 --out {tmp_path}/x --no-progress", f"train ddpm --out {run} --resume"):
        _refused(*_run(command, capsys), marker)
    with pytest.raises(UserError, match="epoch_002.pt is refused"):
        mnistgen.load(run, device="cpu")


def test_a_legacy_pickle_checkpoint_is_refused_not_skipped(runs, tmp_path, capsys):
    """A last.pt in torch's old non-zip format (here a bare pickle) cannot be scanned: it is loaded
    weights-only, refused as a payload, and never passed over for the genuine epoch_002.pt."""
    run, marker = tmp_path / "run", tmp_path / "ran"
    shutil.copytree(runs / "ddpm", run)
    (run / "checkpoints" / "last.pt").write_bytes(pickle.dumps(Payload(marker), protocol=2))
    for command in (f"sample {run} --n 2 --out {tmp_path}/x --no-progress", f"train ddpm --out {run} --resume"):
        _refused(*_run(command, capsys), marker, what="last.pt")
    assert not (tmp_path / "x.npz").exists()


def test_a_bare_payload_as_the_classifier_never_runs(runs, tmp_path, capsys):
    marker, judge = tmp_path / "ran", tmp_path / "judge.pt"
    torch.save(Payload(marker), judge)
    _refused(*_run(f"evaluate {runs}/cfg --n 20 --classifier {judge} --no-progress", capsys), marker)


def _rewrite_safetensors(path: Path, **metadata: str) -> None:
    """Replace a safetensors file's metadata (its tensors kept), as anyone can."""
    tensors = read_weights(path).tensors
    save_file(tensors, str(path), metadata=metadata)


def test_a_payload_in_safetensors_metadata_is_inert_text(tmp_path, capsys):
    """A pickle payload in a metadata field is only text: the model loads (its manifest rewritten to
    match) and nothing runs; a payload in place of the config is refused in one line."""
    marker = tmp_path / "ran"
    pickled = pickle.dumps(Payload(marker)).decode("latin-1")
    model = tmp_path / "ddpm"
    shutil.copytree(defaults.PRETRAINED_DIR / "ddpm", model)
    config = json.loads((model / "config.json").read_text())
    _rewrite_safetensors(model / WEIGHTS_NAME, format=FORMAT, config=json.dumps(config), note=pickled)
    write_manifest(model, json.loads((model / MANIFEST_NAME).read_text())["sha256"].keys())
    assert mnistgen.load(model, device="cpu").sample(2, progress=False).shape == (2, 1, 28, 28)
    _rewrite_safetensors(model / WEIGHTS_NAME, format=FORMAT, config=pickled)
    write_manifest(model, json.loads((model / MANIFEST_NAME).read_text())["sha256"].keys())
    status, lines = _run(f"sample {model} --n 2 --out {tmp_path}/x --no-progress", capsys)
    assert status == 2 and len(lines) == 1 and "no readable config in its metadata" in lines[0], lines
    judge = tmp_path / "judge.safetensors"
    shutil.copy(fd.BUNDLED_CLASSIFIER, judge)
    _rewrite_safetensors(judge, format=FORMAT, config=pickled)
    status, lines = _run(f"evaluate pretrained:cfg --out {tmp_path}/cfg --n 20 --classifier {judge}", capsys)
    assert status == 2 and len(lines) == 1 and "judge.safetensors has no readable config" in lines[0], lines
    assert not marker.exists()


# -- checkpoint formats ----------------------------------------------------------------------------

@pytest.mark.slow
def test_a_format_2_checkpoint_resumes_bit_exact(tmp_path):
    """The committed format-2 run (stopped after epoch 1 of 2) resumes to the same weights, EMA and
    Adam moments as an uninterrupted two-epoch run; its next checkpoint is written in format 3."""
    resumed = tmp_path / "resumed"
    shutil.copytree(FORMAT2, resumed)
    config = RunConfig.from_dict(json.loads((FORMAT2 / "config.json").read_text()))
    saved = load_checkpoint(FORMAT2 / "checkpoints" / "last.pt")
    assert saved["format_version"] == 2
    trainer = build_trainer(config, resumed, preview=False)
    assert trainer.resume()
    algorithm, key, pos, has_gauss, cached = np.random.get_state()  # format 2's NumPy state restored
    assert (key == saved["rng"][0]["numpy"][1]).all() and (pos, has_gauss, cached) == saved["rng"][0]["numpy"][2:]
    train(config, resumed, device=torch.device("cpu"), resume=True, show_progress=False)
    train(config, tmp_path / "whole", device=torch.device("cpu"), show_progress=False)
    a = load_checkpoint(resumed / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")
    assert a["format_version"] == FORMAT_VERSION == 3 and a["epoch"] == b["epoch"] == 2
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    moments = [(s["exp_avg"], t["exp_avg"]) for s, t in zip(a["optimizer"]["state"].values(),
                                                             b["optimizer"]["state"].values())]
    assert moments and all(torch.equal(x, y) for x, y in moments)
    numpy_state = a["rng"][0]["numpy"]
    assert isinstance(numpy_state, dict) and numpy_state["key"].shape == (624,)


def test_a_format_2_checkpoint_pickled_under_numpy_1_loads(tmp_path):
    """NumPy 1 names its array reconstructor ``numpy.core.multiarray._reconstruct`` (NumPy 2:
    ``numpy._core``): the fixture's pickle with that name still loads, with the same RNG key."""
    import zipfile

    path = tmp_path / "last.pt"
    with zipfile.ZipFile(FORMAT2 / "checkpoints" / "last.pt") as source, zipfile.ZipFile(path, "w") as out:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("data.pkl"):  # protocol 2: GLOBAL takes newline-ended names
                data = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
            out.writestr(info.filename, data)
    assert "numpy.core.multiarray._reconstruct" in torch.serialization.get_unsafe_globals_in_checkpoint(path)
    expected = load_checkpoint(FORMAT2 / "checkpoints" / "last.pt")["rng"][0]["numpy"]
    found = load_checkpoint(path, mmap=True)["rng"][0]["numpy"]
    assert (found[1] == expected[1]).all() and found[2:] == expected[2:]


def test_format_2_admits_numpy_arrays_and_nothing_else(tmp_path):
    """A format-2 file with one more global than NumPy's array types is refused with that global's name."""
    state = load_checkpoint(FORMAT2 / "checkpoints" / "last.pt")
    state["extra"] = datetime.timedelta(days=1)  # harmless, but not a tensor or a plain value
    torch.save(state, tmp_path / "last.pt")
    with pytest.raises(UserError, match=r"would call datetime\.timedelta"):
        load_checkpoint(tmp_path / "last.pt")


# -- writes never follow a planted link ------------------------------------------------------------

def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def victim(tmp_path) -> Path:
    """A file outside every run directory, which no write may change."""
    path = tmp_path / "outside" / "victim.txt"
    path.parent.mkdir()
    path.write_text("precious\n")
    return path


def test_a_linked_lock_file_is_refused_and_its_target_kept(tmp_path, victim, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.lock").symlink_to(victim)
    status, lines = _run(f"train vae {' '.join(SMALL)} --out {run}", capsys)
    assert status == 2 and len(lines) == 1 and "train.lock is a symbolic link" in lines[0], lines
    assert victim.read_text() == "precious\n"
    (run / "train.lock").unlink()
    (run / "train.lock").hardlink_to(victim)
    status, lines = _run(f"train vae {' '.join(SMALL)} --out {run}", capsys)
    assert status == 2 and "hard link" in lines[0], lines
    assert victim.read_text() == "precious\n"


@pytest.mark.slow
def test_links_at_the_old_predictable_temp_names_are_never_followed(runs, tmp_path, victim):
    """Links planted at every name a write of this process could have used before (``.NAME.PID.tmp``)
    and at the files themselves: training, evaluation and sampling replace links, never write through them."""
    run = tmp_path / "run"
    shutil.copytree(runs / "vae", run)
    for folder, names in ((run, ["metrics.json", "history.json", "config.json"]),
                          (run / "checkpoints", ["last.pt", "epoch_003.pt"]), (tmp_path, ["x.npz", "x.png"])):
        for name in names:
            (folder / f".{name}.{os.getpid()}.tmp").symlink_to(victim)
    (run / "history.json").unlink()
    (run / "history.json").symlink_to(victim)
    before = _digest(victim)
    assert main(["train", "vae", "--out", str(run), "--resume", "--epochs", "3", "--no-progress"]) == 0
    assert main(["sample", str(run), "--n", "4", "--out", str(tmp_path / "x"), "--no-progress"]) == 0
    mnistgen.evaluate(run, n=20, n_images=20, iwae_k=2, progress=False)
    assert _digest(victim) == before
    assert not (run / "history.json").is_symlink() and len(json.loads((run / "history.json").read_text())) == 3
    assert (tmp_path / "x.npz").is_file() and not (tmp_path / "x.npz").is_symlink()


def test_the_atomic_writers_never_write_through_a_link_at_a_predictable_name(tmp_path, victim):
    """Direct: links at the names the writers once used (``.NAME.PID.tmp``) and at the target itself."""
    from mnistgen.arrays import ArraySpec, write_npz
    from mnistgen.files import write_atomic

    for name in ("a.json", "b.npz"):
        (tmp_path / f".{name}.{os.getpid()}.tmp").symlink_to(victim)
        (tmp_path / name).symlink_to(victim)
    write_atomic(tmp_path / "a.json", b"{}")
    write_npz(tmp_path / "b.npz", {"x": ArraySpec(np.float32, (2,), [np.zeros(2, np.float32)])})
    assert victim.read_text() == "precious\n"
    assert (tmp_path / "a.json").read_bytes() == b"{}" and np.load(tmp_path / "b.npz")["x"].shape == (2,)


def test_a_linked_report_is_replaced_not_written_through(runs, tmp_path, victim):
    study = tmp_path / "study"
    shutil.copytree(runs, study)
    (study / "report.html").symlink_to(victim)
    write_report(study, "smoke", torch.device("cpu"))
    assert victim.read_text() == "precious\n"
    assert not (study / "report.html").is_symlink() and "<h1>mnistgen study</h1>" in (study / "report.html").read_text()


def test_a_run_whose_folders_are_links_is_refused(runs, tmp_path, victim, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs / "vae", run)
    shutil.rmtree(run / "samples")
    (run / "samples").symlink_to(victim.parent, target_is_directory=True)
    for command in (f"train vae --out {run} --resume --epochs 3 --no-progress", f"figures {run}"):
        status, lines = _run(command, capsys)
        assert status == 2 and len(lines) == 1 and "samples is a symbolic link" in lines[0], lines
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim.txt"]


def test_a_pretrained_copy_never_writes_into_what_out_holds(tmp_path, victim, capsys):
    """--out with planted links is refused unless new or empty; an empty one gets a real copy; an
    earlier genuine copy with a linked figures/ folder is refused too."""
    out = tmp_path / "copy"
    out.mkdir()
    (out / "figures").symlink_to(victim.parent, target_is_directory=True)
    (out / "metrics.json").symlink_to(victim)
    status, lines = _run(f"figures pretrained:vae --out {out}", capsys)
    assert status == 2 and len(lines) == 1 and "is not empty" in lines[0], lines
    for link in out.iterdir():
        link.unlink()
    assert main(["figures", "pretrained:vae", "--out", str(out)]) == 0  # empty: the copy is renamed into place
    assert (out / "figures").is_dir() and not (out / "figures").is_symlink()
    shutil.rmtree(out / "figures")
    (out / "figures").symlink_to(victim.parent, target_is_directory=True)
    status, lines = _run(f"figures pretrained:vae --out {out}", capsys)
    assert status == 2 and "figures is a symbolic link" in lines[0], lines
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim.txt"] and victim.read_text() == "precious\n"


# -- export ------------------------------------------------------------------------------------------

def test_export_needs_to_and_keeps_unrelated_files(runs, tmp_path, victim, capsys):
    study = tmp_path / "study"
    shutil.copytree(runs, study)
    status, lines = _run(f"export {study}", capsys)
    assert status == 2 and "--to" in lines[0], lines
    dest = tmp_path / "shipped"
    assert main(["export", str(study), "--to", str(dest)]) == 0
    (dest / "ddpm" / "notes.txt").write_text("mine")
    listed = json.loads((dest / "ddpm" / MANIFEST_NAME).read_text())
    (dest / "ddpm" / "samples" / "epoch_999.npz").write_text("an earlier export's preview")
    listed["sha256"]["samples/epoch_999.npz"] = "0" * 64
    (dest / "ddpm" / MANIFEST_NAME).write_text(json.dumps(listed))
    assert main(["export", str(study), "--to", str(dest)]) == 0
    assert (dest / "ddpm" / "notes.txt").read_text() == "mine"  # not listed: kept
    assert not (dest / "ddpm" / "samples" / "epoch_999.npz").exists()  # the old export's own, not the new: removed
    assert mnistgen.load(dest / "ddpm", device="cpu").sample(2, progress=False).shape == (2, 1, 28, 28)
    assert not list(dest.glob(".*"))  # no staging folder left behind
    listed["sha256"] = {"../outside/victim.txt": "0" * 64}
    (dest / "ddpm" / MANIFEST_NAME).write_text(json.dumps(listed))
    status, lines = _run(f"export {study} --to {dest}", capsys)
    assert status == 2 and "which is not a file of this folder" in lines[0], lines
    assert victim.read_text() == "precious\n" and (dest / "ddpm" / "notes.txt").is_file()


def test_export_removes_only_its_own_kind_of_file_whatever_a_manifest_lists(runs, tmp_path, victim):
    """An earlier export's manifest (anyone may rewrite it) listing a user's file, or a file behind a
    linked folder, removes neither: only names an export writes are ever removed."""
    study, dest = tmp_path / "study", tmp_path / "shipped"
    shutil.copytree(runs, study)
    assert main(["export", str(study), "--to", str(dest)]) == 0
    (dest / "ddpm" / "notes.txt").write_text("mine")
    (dest / "ddpm" / "figures").symlink_to(victim.parent, target_is_directory=True)
    listed = json.loads((dest / "ddpm" / MANIFEST_NAME).read_text())
    listed["sha256"].update({"notes.txt": "0" * 64, "figures/victim.txt": "0" * 64})
    (dest / "ddpm" / MANIFEST_NAME).write_text(json.dumps(listed))
    assert main(["export", str(study), "--to", str(dest)]) == 0
    assert (dest / "ddpm" / "notes.txt").read_text() == "mine" and victim.read_text() == "precious\n"


def test_export_never_copies_through_a_link_in_the_study(runs, tmp_path, victim, capsys):
    study = tmp_path / "study"
    shutil.copytree(runs, study)
    preview = sorted((study / "ddpm" / "samples").glob("epoch_*.npz"))[-1]
    preview.unlink()
    preview.symlink_to(victim)
    status, lines = _run(f"export {study} --to {tmp_path}/shipped", capsys)
    assert status == 2 and len(lines) == 1 and f"{preview} is a symbolic link" in lines[0], lines
    assert not (tmp_path / "shipped").exists()


@pytest.mark.parametrize("folder", ["cfg", "edits"])
def test_a_study_whose_run_or_figure_folder_is_a_link_is_refused(runs, tmp_path, victim, capsys, folder):
    study = tmp_path / "study"
    shutil.copytree(runs, study)
    shutil.rmtree(study / folder, ignore_errors=True)
    (study / folder).symlink_to(victim.parent, target_is_directory=True)
    status, lines = _run(f"reproduce --out {study} --no-progress", capsys)
    assert status == 2 and len(lines) == 1 and f"{folder} is a symbolic link" in lines[0], lines
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim.txt"]


def test_export_refuses_the_installed_package(runs, tmp_path, monkeypatch):
    fake = tmp_path / "site-packages" / "mnistgen"
    (fake / "pretrained").mkdir(parents=True)
    monkeypatch.setattr(export, "__file__", str(fake / "export.py"))
    with pytest.raises(UserError, match="inside the installed mnistgen package"):
        api.export_pretrained(runs, fake / "pretrained")


def test_the_model_card_escapes_provenance_text(runs, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(runs, study)
    (study / "provenance.json").write_text(json.dumps(
        {"commit": "abc`<img src=x onerror=alert(1)>", "device": "[click](http://evil)\n# Heading"}))
    card = api.export_pretrained(study, tmp_path / "shipped")[0].read_text()
    assert not re.search(r"(?<!\\)<img|(?<!\\)\[click", card) and "\n# Heading" not in card
    assert r"\<img src=x onerror=alert(1)\>" in card and r"\[click\](http://evil) # Heading" in card


# -- the manifest --------------------------------------------------------------------------------------

def _flip_a_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_a_shipped_weight_file_is_named(tmp_path, monkeypatch, capsys):
    shipped = tmp_path / "pretrained"
    shutil.copytree(defaults.PRETRAINED_DIR, shipped)
    monkeypatch.setattr(defaults, "PRETRAINED_DIR", shipped)
    assert mnistgen.load("pretrained:ddpm", device="cpu") is not None
    weights = shipped / "ddpm" / WEIGHTS_NAME
    _flip_a_byte(weights, weights.stat().st_size // 2)  # a weight, not the header: the file still parses
    status, lines = _run(f"sample pretrained:ddpm --n 2 --out {tmp_path}/x", capsys)
    assert status == 2 and len(lines) == 1, lines
    assert f"{weights} does not match its SHA-256 in MANIFEST.json" in lines[0]


def test_a_flipped_byte_in_the_bundled_judge_is_named(tmp_path, monkeypatch):
    weights = tmp_path / "weights"
    shutil.copytree(fd.BUNDLED_CLASSIFIER.parent, weights)
    monkeypatch.setattr(fd, "BUNDLED_CLASSIFIER", weights / fd.BUNDLED_CLASSIFIER.name)
    assert fd.load_classifier() is not None
    _flip_a_byte(fd.BUNDLED_CLASSIFIER, 2000)
    with pytest.raises(UserError, match="classifier.safetensors does not match its SHA-256"):
        fd.load_classifier()


def test_every_torch_load_in_the_package_is_weights_only():
    """The source itself: each call of ``torch.load`` passes ``weights_only=True`` (torch >= 2.5 may
    default to False), and nothing loads through another name for it."""
    import ast

    package = Path(mnistgen.__file__).parent
    calls, other_routes = [], []
    for path in package.rglob("*.py"):
        text = path.read_text()
        other_routes += [path.name for pattern in ("from torch import load", "serialization.load(", "pickle.load",
                                                   "import pickle as", "allow_pickle=True") if pattern in text]
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                calls.append((path.name, node.lineno, safe))
    assert calls and all(safe for _, _, safe in calls), calls
    assert other_routes == []


def test_every_global_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    """Format 3: NumPy's, Python's and torch's global streams continue after a save and a weights-only load."""
    import random

    from mnistgen.storage.checkpoint import save_checkpoint

    config = RunConfig.from_dict(json.loads((FORMAT2 / "config.json").read_text()))
    trainer = build_trainer(config, tmp_path / "run", preview=False)
    np.random.seed(7), random.seed(7), torch.manual_seed(7)
    np.random.random(3), random.random(), np.random.standard_normal()  # a cached Gaussian half-drawn
    save_checkpoint(tmp_path / "state.pt", trainer.state_dict())
    expected = (np.random.random(5).tolist(), np.random.standard_normal(3).tolist(), random.random(), torch.rand(2))
    np.random.seed(0), random.seed(0), torch.manual_seed(0)
    trainer.load_state_dict(load_checkpoint(tmp_path / "state.pt"))
    got = (np.random.random(5).tolist(), np.random.standard_normal(3).tolist(), random.random(), torch.rand(2))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])
