import json

import pytest

from mnistgen.config import PRESETS, RunConfig, apply_overrides, preset
from mnistgen.errors import UserError


@pytest.mark.parametrize("kind", ["vae", "ddpm", "cfg"])
@pytest.mark.parametrize("name", ["reference", "cpu", "smoke"])
def test_presets_round_trip_through_json(kind, name):
    cfg = preset(kind, name)
    assert RunConfig.from_dict(json.loads(cfg.to_json())) == cfg
    assert apply_overrides(cfg, {}) == cfg  # every preset validates


def test_reference_presets_match_the_study():
    ddpm = PRESETS["ddpm"]["reference"]
    assert (ddpm.train.lr, ddpm.train.batch_size, ddpm.train.epochs) == (2e-4, 256, 20)
    assert (ddpm.train.ema_decay, ddpm.train.ema_start, ddpm.train.lr_step_epochs, ddpm.train.lr_gamma) == \
        (0.995, 2000, 10, 0.1)
    assert (ddpm.process.timesteps, ddpm.process.beta_start, ddpm.process.beta_end) == (1000, 1e-4, 0.02)
    assert ddpm.data.resolution == 32
    vae = PRESETS["vae"]["reference"]
    assert (vae.train.lr, vae.train.batch_size, vae.train.epochs, vae.model.hidden, vae.model.latent) == \
        (1e-3, 128, 20, 400, 20)
    assert PRESETS["cfg"]["reference"].process.p_uncond == 0.1


def test_overrides_are_typed():
    cfg = apply_overrides(preset("ddpm", "smoke"), {"train.lr": "3e-4", "model.channels": "16,32",
                                                    "train.tf32": "false", "process.eta": 0.5,
                                                    "train.amp": "fp16"})
    assert cfg.train.lr == 3e-4 and cfg.model.channels == (16, 32) and cfg.train.tf32 is False
    assert cfg.process.eta == 0.5 and cfg.train.amp == "fp16"


def test_config_written_with_a_boolean_amp_still_loads():
    """mnistgen 0.1 wrote train.amp as true / false (mixed precision on CUDA or not)."""
    for old, new in ((True, "auto"), (False, "off")):
        d = preset("ddpm", "cpu").to_dict()
        d["train"]["amp"] = old
        assert RunConfig.from_dict(d).train.amp == new


@pytest.mark.parametrize("overrides, message", [
    ({"train.nope": 1}, "valid: epochs"),
    ({"nope.lr": 1}, "valid: data, train, model, process"),
    ({"train.epochs": "many"}, "expected int"),
    ({"train.epochs": 0}, "epochs must be >= 1"),
    ({"process.sampler": "euler"}, "valid: ancestral, ddim"),
    ({"train.amp": "fp8"}, "valid: auto, bf16, fp16, off"),
    ({"data.dataset": "cifar"}, "valid: mnist, fashion-mnist"),
    ({"data.resolution": 30}, "valid: 28, 32"),
    ({"train.ema_warmup_power": -1}, "ema_warmup_power must be >= 0"),
])
def test_bad_overrides_are_rejected_with_choices(overrides, message):
    with pytest.raises(UserError, match=message):
        apply_overrides(preset("ddpm", "smoke"), overrides)


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(UserError, match="valid: reference, cpu, smoke"):
        preset("vae", "huge")


def test_configs_are_frozen():
    cfg = preset("vae", "smoke")
    with pytest.raises(Exception):
        cfg.train.lr = 1.0  # type: ignore[misc]
