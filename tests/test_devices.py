"""The device policy, checked on the CPU by simulating each device's constraint.

- MPS has no float64: training steps, sampling loops and evaluation run under a guard that fails
  on any float64 operator.
- CUDA: the autocast dtype per compute capability (monkeypatched), the fp16 + GradScaler path
  executed for real (CPU autocast runs float16), schedule lookups that never copy between
  devices (checked on the ``meta`` device), checkpoints that load to the CPU whatever wrote them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
import math

import pytest
import torch

from guards import DeviceTransfers, NoFloat64
from mnistgen.config import apply_overrides, preset
from tests.diffusion.sampling import sample
from mnistgen.diffusion.logsnr import LogSNRDiffusion
from mnistgen.errors import UserError
from mnistgen.evaluation.fd import judge, load_classifier
from mnistgen.evaluation.likelihood import iwae_nll_mean, neg_elbo_mean
from mnistgen import kinds
from mnistgen.diffusion.samplers import SamplerSettings
from mnistgen.runs import build_trainer
from mnistgen.training import device as policy
from mnistgen.storage.checkpoint import load_checkpoint, save_checkpoint
from mnistgen.storage.rundir import RunDir
from mnistgen.training.trainer import Trainer

CPU = torch.device("cpu")
KINDS = ["vae", "ddpm", "cfg", "classifier"]


def _cfg(kind, **overrides):
    base = {"data.train_limit": 256, "data.val_limit": 64, "train.epochs": 1, "train.log_every": 2,
            "train.checkpoint_minutes": 0}
    return apply_overrides(preset(kind, "smoke"), {**base, **overrides})


def _trainer(cfg, out, mnist_dir, objective=None) -> Trainer:
    return build_trainer(cfg, out, CPU, mnist_dir, objective=objective)


# -- MPS: no float64 on the device --------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_training_has_no_float64_op(kind, tmp_path, mnist_dir):
    """A whole epoch: steps, validation, the preview samples, the checkpoint."""
    trainer = _trainer(_cfg(kind, **{"train.ema_start": 0}), tmp_path, mnist_dir)
    with NoFloat64() as guard:
        trainer.fit()
    assert trainer.optimizer.param_groups[0]["fused"]  # the fused Adam kernel ran under the guard too
    assert trainer.step > 0 and guard.ops == []


@pytest.mark.parametrize("kind, options", [("vae", {}), ("ddpm", {"sampler": "ancestral"}),
                                           ("ddpm", {"sampler": "ddim", "steps": 10, "eta": 1.0}),
                                           ("ddpm", {"sampler": "ancestral", "steps": 10}),
                                           ("ddpm", {"sampler": "dpm++2m", "steps": 10}),
                                           ("ddpm", {"sampler": "dpm++2m-sde", "steps": 10}),
                                           ("cfg", {"guidance": 1.0, "steps": 10})])
def test_sampling_loops_have_no_float64_op(kind, options):
    cfg = _cfg(kind, **({"process.timesteps": 100} if kind == "ddpm" else {}))
    model_kind = kinds.get(kind)
    model = model_kind.build_model(cfg).eval()
    process = model_kind.build_process(cfg, CPU)
    labels = torch.arange(4) if model_kind.takes_labels else None
    with NoFloat64() as guard:
        images = model_kind.sample(cfg, model, 4, torch.Generator().manual_seed(0), SamplerSettings(**options), labels,
                                   process)
    assert images.shape == (4, 1, 28, 28) and guard.ops == []


@pytest.mark.parametrize("kind", ["ddpm", "cfg"])
@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_other_predictions_have_no_float64_op(kind, prediction):
    """The loss and the sampler of a network that predicts v or x_0 (the conversion to eps included)."""
    cfg = _cfg(kind, **{"process.prediction": prediction, "process.loss_weighting": "clamped-snr",
                        "process.t_distribution": "cosine"} if kind == "ddpm" else {"process.prediction": prediction})
    model_kind = kinds.get(kind)
    model, process = model_kind.build_model(cfg), model_kind.build_process(cfg, CPU)
    x, labels = torch.rand(4, 1, 28, 28) * 2 - 1, torch.arange(4)
    with NoFloat64() as guard:
        y = labels if model_kind.takes_labels else None
        process.loss(model, x, y).backward()
        model_kind.sample(cfg, model.eval(), 4, torch.Generator().manual_seed(0), SamplerSettings(steps=5), y, process)
    assert guard.ops == []


def test_evaluation_has_no_float64_op_on_the_device(mnist_test_unit):
    cfg = _cfg("vae")
    model = kinds.get("vae").build_model(cfg).eval()
    x = mnist_test_unit.x[:64]
    classifier = load_classifier()
    with NoFloat64() as guard:
        verdict = judge(classifier, x)
        neg_elbo_mean(model, x)
        iwae_nll_mean(model, x, 4)
    assert verdict.features.dtype == torch.float32 and verdict.features.device.type == "cpu"
    assert guard.ops == []


def test_log_snr_is_accurate_in_float32():
    """lambda(u) = -2 log tan(a u + b) evaluated in float32 agrees with float64 to 1e-5 everywhere,
    including u -> 1 where the angle approaches pi/2."""
    process = LogSNRDiffusion()
    u = torch.cat([torch.linspace(0, 1, 10_001), 1 - torch.logspace(-7, -1, 200), torch.logspace(-7, -1, 200)])
    exact = [-2 * math.log(math.tan(process.a * v + process.b)) for v in u.double().tolist()]
    got = process.log_snr(u)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), torch.tensor(exact, dtype=torch.float64), rtol=0, atol=1e-5)


# -- CUDA and MPS: the mixed-precision choice -----------------------------------------------

@pytest.mark.parametrize("capability, expected", [((7, 0), torch.float16), ((7, 5), torch.float16),
                                                  ((8, 0), torch.bfloat16), ((8, 6), torch.bfloat16),
                                                  ((9, 0), torch.bfloat16)])
def test_autocast_follows_the_cuda_capability(capability, expected, monkeypatch):
    """V100 / T4 (7.x) have no native bf16 (is_bf16_supported() says True there through emulation)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    cuda = torch.device("cuda")
    assert policy.amp_dtype(cuda, "auto") == expected
    assert policy.needs_grad_scaler(policy.amp_dtype(cuda, "auto")) == (expected == torch.float16)
    assert policy.amp_dtype(cuda, "fp16") == torch.float16 and policy.amp_dtype(cuda, "off") is None


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(False, False, None), (True, False, torch.bfloat16),
                                                         (False, True, torch.bfloat16)])
def test_native_autocast_on_a_cpu_follows_its_bf16_instructions(avx512_bf16, amx, expected, monkeypatch):
    """"native": bf16 on CPUs that run it natively, float32 on the rest (where bf16 is emulated)."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert policy.amp_dtype(torch.device("cpu"), "native") == expected
    assert policy.amp_dtype(torch.device("cpu"), "auto") is None
    assert policy.amp_dtype(torch.device("mps"), "native") is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert policy.amp_dtype(torch.device("cuda"), "native") == torch.float16  # as auto on a GPU


def test_the_cpu_diffusion_presets_train_in_bf16_where_the_cpu_has_it(monkeypatch, mnist_dir, tmp_path):
    from mnistgen.config import apply_overrides, preset
    from mnistgen.runs import build_trainer

    assert preset("ddpm", "cpu").train.amp == preset("cfg", "cpu").train.amp == "native"
    assert preset("vae", "cpu").train.amp == preset("ddpm", "reference").train.amp == "auto"
    assert preset("cfg", "reference").train.amp == "auto"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    config = apply_overrides(preset("ddpm", "smoke"), {"train.amp": "native", "data.train_limit": 128,
                                                       "data.val_limit": 64})
    trainer = build_trainer(config, tmp_path / "run", torch.device("cpu"), mnist_dir, preview=False)
    assert trainer.amp_dtype == torch.bfloat16 and not trainer.scaler.is_enabled()
    seen = []
    handle = trainer.model.register_forward_hook(lambda m, i, out: seen.append(torch.is_autocast_enabled("cpu")))
    trainer.train_step(trainer.epoch_batches()[0])
    handle.remove()
    assert seen == [True]  # the step ran under CPU bf16 autocast


@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_no_autocast_by_default_off_cuda(device):
    assert policy.amp_dtype(torch.device(device), "auto") is None
    assert policy.amp_dtype(torch.device(device), "bf16") == torch.bfloat16


def test_backends_are_configured_on_cuda_only():
    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    try:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = False, True
        torch.set_float32_matmul_precision("medium")
        policy.configure_backends(CPU, tf32=False)
        assert torch.backends.cudnn.benchmark is False and torch.get_float32_matmul_precision() == "medium"
        policy.configure_backends(torch.device("cuda"), tf32=False)
        assert torch.backends.cudnn.benchmark is True and torch.backends.cudnn.allow_tf32 is False
        assert torch.get_float32_matmul_precision() == "highest"
        policy.configure_backends(torch.device("cuda"), tf32=True)
        assert torch.backends.cudnn.allow_tf32 is True and torch.get_float32_matmul_precision() == "high"
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])


def test_default_preset_follows_the_device():
    assert policy.default_preset(torch.device("cuda")).name == "reference"
    assert policy.default_preset(torch.device("mps")).name == "cpu"
    assert policy.default_preset(CPU).name == "cpu"


def test_unknown_or_absent_device_is_a_user_error():
    with pytest.raises(UserError, match="valid: auto, cpu, cuda, mps"):
        policy.pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            policy.pick_device("cuda:1")


class AutocastSpy:
    """The real objective, noting which autocast dtype was active for each loss."""

    def __init__(self, objective):
        self.objective, self.seen = objective, set()

    def loss(self, model, x, y, generator=None):
        if torch.is_autocast_enabled("cpu"):
            self.seen.add(torch.get_autocast_dtype("cpu"))
        return self.objective.loss(model, x, y, generator)


@pytest.mark.slow
def test_fp16_with_grad_scaler_trains_and_resumes(tmp_path, mnist_dir, monkeypatch):
    """The T4 path, executed: float16 autocast, a GradScaler that scales, unscales before clipping,
    is checkpointed, and a resumed run ends bit-identical to an uninterrupted one."""
    from torch.amp.grad_scaler import OptState

    cfg = _cfg("ddpm", **{"train.amp": "fp16", "train.epochs": 2, "train.grad_clip": 1.0})
    spy = AutocastSpy(kinds.get(cfg.kind).build_objective(cfg, CPU))
    full = _trainer(cfg, tmp_path / "full", mnist_dir, spy)
    stages, clip = [], torch.nn.utils.clip_grad_norm_

    def clip_spy(parameters, max_norm, *args, **kwargs):  # clipping must see unscaled gradients
        stages.append(full.scaler._per_optimizer_states[id(full.optimizer)]["stage"])
        return clip(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_spy)
    initial = [p.detach().clone() for p in full.model.parameters()]
    assert full.amp_dtype == torch.float16 and full.scaler.is_enabled()
    full.fit()
    assert spy.seen == {torch.float16} and [r.compute_dtype for r in full.history] == ["float16", "float16"]
    assert len(stages) == full.step and set(stages) == {OptState.UNSCALED}
    assert full.scaler.get_scale() > 1  # a real loss scale, not the disabled scaler's 1.0
    moved = [not torch.equal(a, b) for a, b in zip(initial, full.model.parameters())]
    assert all(moved) and all(torch.isfinite(p).all() for p in full.model.parameters())
    assert load_checkpoint(RunDir(tmp_path / "full").last_checkpoint, "ddpm")["scaler"]["scale"] > 1

    half = _trainer(apply_overrides(cfg, {"train.epochs": 1}), tmp_path / "half", mnist_dir)
    half.fit()
    resumed = _trainer(cfg, tmp_path / "half", mnist_dir)
    assert resumed.resume() and resumed.epoch == 1
    resumed.fit()
    assert resumed.scaler.state_dict() == full.scaler.state_dict()  # scale and growth tracker
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


# -- checkpoints across devices ----------------------------------------------------------

def test_resume_hands_only_cpu_tensors_to_the_rng_setters(tmp_path, mnist_dir, monkeypatch):
    """A checkpoint is read onto the CPU whatever device trains (mapping it onto a GPU moved the RNG
    ByteTensors there, and Generator.set_state / torch.set_rng_state raise TypeError for those)."""
    from mnistgen.storage import checkpoint

    cfg = _cfg("ddpm", **{"train.epochs": 2})
    first = _trainer(apply_overrides(cfg, {"train.epochs": 1}), tmp_path, mnist_dir)
    first.fit()
    seen, real_load, real_set_rng_state = [], torch.load, torch.set_rng_state

    def load_spy(*args, **kwargs):
        seen.append(f"map_location={kwargs.get('map_location')}")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "load", load_spy)
    monkeypatch.setattr(torch, "set_rng_state", lambda s: (seen.append(s.device.type), real_set_rng_state(s))[1])
    resumed = _trainer(cfg, tmp_path, mnist_dir)
    real_generator = resumed.generator

    class GeneratorSpy:
        def set_state(self, state):
            seen.append(state.device.type)
            real_generator.set_state(state)

    resumed.generator = GeneratorSpy()
    assert resumed.resume()
    assert seen[-3:] == ["map_location=cpu", "cpu", "cpu"] and set(seen[:-3]) <= {"map_location=cpu"}
    assert torch.equal(real_generator.get_state(), first.generator.get_state())


def test_checkpoint_from_another_kind_of_device_resumes(tmp_path, mnist_dir, monkeypatch):
    """A run saved on a GPU (a 16-byte Philox generator state, fused Adam flags) continues on a device
    without that generator or that kernel: weights and optimizer moments load, the stream is reseeded."""
    cfg = _cfg("cfg", **{"train.epochs": 2})
    first = _trainer(apply_overrides(cfg, {"train.epochs": 1}), tmp_path, mnist_dir)
    first.fit()
    path = RunDir(tmp_path).last_checkpoint
    state = load_checkpoint(path, "cfg")
    state["generator"] = [torch.zeros(16, dtype=torch.uint8)]  # what a CUDA generator's get_state() gives
    save_checkpoint(path, {k: v for k, v in state.items() if k != "format_version"})

    monkeypatch.setattr(policy, "FUSED_ADAM_DEVICES", ())  # a device without a fused Adam kernel
    resumed = _trainer(cfg, tmp_path, mnist_dir)
    assert not resumed.optimizer.param_groups[0].get("fused")
    assert resumed.resume()
    assert not resumed.optimizer.param_groups[0].get("fused")
    for a, b in zip(first.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    exp_avg = [resumed.optimizer.state[p]["exp_avg"] for p in resumed.model.parameters()]
    assert all(torch.equal(a, first.optimizer.state[p]["exp_avg"])
               for a, p in zip(exp_avg, first.model.parameters()))
    resumed.fit()
    assert resumed.epoch == 2 and all(torch.isfinite(p).all() for p in resumed.model.parameters())


H100_RUN = Path(__file__).parent / "fixtures" / "h100_smoke_ddpm"  # written by an H100 (its README says how)


def test_a_run_saved_on_an_h100_resumes_and_samples_on_a_cpu(tmp_path, mnist_dir, capsys):
    """Not simulated: the checkpoint holds tensors saved from CUDA memory (unloadable on a CPU without
    map_location) and CUDA's 16-byte Philox generator state. Weights, EMA and Adam moments load
    exactly, the noise stream is reseeded with a notice, training goes on and the run samples."""
    run = tmp_path / "run"
    shutil.copytree(H100_RUN, run)
    saved = load_checkpoint(run / "checkpoints" / "last.pt")  # format 2: NumPy's arrays admitted, nothing else
    assert saved["generator"][0].numel() == 16 and saved["optimizer"]["param_groups"][0]["fused"]
    trainer = _trainer(RunDir(run).read_config(), run, mnist_dir)
    assert trainer.resume()
    assert "another kind of device" in capsys.readouterr().err
    assert trainer.epoch == saved["epoch"] == 2 and trainer.step == saved["step"]
    for mine, theirs in ((trainer.model, saved["model"]), (trainer.ema, saved["ema"])):
        for name, value in mine.state_dict().items():
            assert value.device.type == "cpu" and torch.equal(value, theirs[name]), name
    moments = [trainer.optimizer.state[p]["exp_avg_sq"] for p in trainer.model.parameters()]
    assert all(torch.equal(m, s["exp_avg_sq"])
               for m, s in zip(moments, saved["optimizer"]["state"].values(), strict=True))

    from mnistgen.cli import main
    assert main(["train", "ddpm", "--resume", "--out", str(run), "--epochs", "3", "--no-progress",
                 "--device", "cpu", "--data-dir", str(mnist_dir)]) == 0
    history = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3] and math.isfinite(history[-1]["val_loss"])
    assert history[:2] == json.loads((H100_RUN / "history.json").read_text())  # the H100's epochs kept
    assert main(["sample", str(run), "--n", "4", "--out", str(tmp_path / "s.png"), "--device", "cpu",
                 "--no-progress"]) == 0
    import numpy as np
    images = np.load(tmp_path / "s.npz")["images"]
    assert images.shape == (4, 1, 28, 28) and np.isfinite(images).all() and images.std() > 0


# -- CUDA: no device transfer inside a step ------------------------------------------------

def _meta(kind, **overrides):
    cfg = _cfg(kind, **overrides)
    return cfg, kinds.get(kind).build_model(cfg).to("meta"), kinds.get(kind).build_process(cfg, "meta")


@pytest.mark.slow
def test_ddpm_schedule_lookups_never_copy_between_devices():
    cfg, model, process = _meta("ddpm", **{"process.loss_weighting": "clamped-snr", "process.prediction": "v",
                                           "process.t_distribution": "cosine", "process.timesteps": 50})
    assert all(v.device.type == "meta" for v in process.schedule)
    x = torch.empty(4, 1, 28, 28, device="meta")
    with DeviceTransfers() as guard:
        process.loss(model, x)
        sample("ancestral", model, process, x)
        sample("ancestral", model, process, x, steps=10)
        sample("ddim", model, process, x, steps=10, eta=1.0)
        sample("dpm++2m", model, process, x, steps=10)
        sample("dpm++2m-sde", model, process, x, steps=10)
    assert guard.ops == []


def test_cfg_sampler_moves_its_grid_once():
    cfg, model, process = _meta("cfg")
    z, labels = torch.empty(4, 1, 28, 28, device="meta"), torch.zeros(4, dtype=torch.long, device="meta")
    with DeviceTransfers() as guard:
        process.loss(model, z, labels)
    assert guard.ops == []
    counts = []
    for steps in (4, 16):
        with DeviceTransfers() as guard:
            sample("ancestral", model, process, z, steps=steps, labels=labels, w=1.0)
        counts.append(len(guard.ops))
    assert counts[0] == counts[1] <= 1


def test_a_process_on_another_device_is_refused():
    process = kinds.get("ddpm").build_process(_cfg("ddpm"), "meta")
    x = torch.zeros(2, 1, 28, 28)
    with pytest.raises(ValueError, match="schedule is on meta"):
        process.q_sample(x, torch.zeros(2, dtype=torch.long), x)


def test_train_without_preset_says_which_it_uses(tmp_path, capsys):
    from mnistgen.cli import main

    assert main(["train", "vae", "--out", str(tmp_path / "vae"), "--epochs", "1", "--no-progress", "--device", "cpu",
                 "--set", "data.train_limit=256", "--set", "data.val_limit=64"]) == 0
    out = capsys.readouterr().out
    assert "no --preset given: using 'cpu' because the device is cpu" in out
    assert json.loads((tmp_path / "vae" / "config.json").read_text())["preset"] == "cpu"



def test_resume_without_preset_or_out_finds_the_run_started_under_another_default(tmp_path, monkeypatch, capsys):
    """A run started with the CPU default (or any preset) is what a later bare `--resume` continues."""
    from mnistgen.cli import main

    monkeypatch.chdir(tmp_path)
    small = ["--no-progress", "--device", "cpu", "--set", "data.train_limit=256", "--set", "data.val_limit=64"]
    assert main(["train", "vae", "--preset", "smoke", "--epochs", "1", *small]) == 0
    capsys.readouterr()
    assert main(["train", "vae", "--resume", "--epochs", "2", "--no-progress", "--device", "cpu"]) == 0
    assert "resuming runs/vae-smoke with its own settings (preset 'smoke')" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "runs" / "vae-smoke" / "checkpoints" / "last.pt")["epoch"] == 2

    seen = []
    monkeypatch.setattr("mnistgen.api.run_study", lambda name, out, *a, **k: seen.append((name, out)) or out)
    shutil.copytree(tmp_path / "runs" / "vae-smoke", tmp_path / "runs" / "study-smoke" / "vae")  # a study begun
    assert main(["reproduce", "--device", "cpu", "--no-progress"]) == 0
    assert seen == [("smoke", Path("runs") / "study-smoke")]


def test_a_format_1_checkpoint_resumes_exactly(tmp_path, mnist_dir):
    """mnistgen 0.1 wrote one generator / RNG state (not a list per rank) and a boolean train.amp."""
    cfg = _cfg("cfg", **{"train.epochs": 2})
    full = _trainer(cfg, tmp_path / "full", mnist_dir)
    full.fit()
    _trainer(apply_overrides(cfg, {"train.epochs": 1}), tmp_path / "old", mnist_dir).fit()
    path = RunDir(tmp_path / "old").last_checkpoint
    state = load_checkpoint(path, "cfg")
    state.update(format_version=1, generator=state["generator"][0], rng=state["rng"][0])
    del state["world_size"]
    state["config"]["train"]["amp"] = False
    torch.save(state, path)
    resumed = _trainer(cfg, tmp_path / "old", mnist_dir)
    assert resumed.resume() and resumed.epoch == 1
    resumed.fit()
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_a_picked_device_can_be_picked_again():
    """Callers that pick the device once pass the torch.device on (the demo's models load with it)."""
    import mnistgen
    from mnistgen.errors import UserError
    from mnistgen.training.device import pick_device

    assert pick_device(torch.device("cpu")) == torch.device("cpu")
    assert mnistgen.load("pretrained:vae", device=torch.device("cpu")).device == torch.device("cpu")
    with pytest.raises(UserError, match="unknown device"):
        pick_device(torch.device("meta"))
