import dataclasses
import json
import math
import typing
from dataclasses import fields

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
    assert (ddpm.process.prediction, ddpm.process.loss_weighting) == ("eps", "uniform")  # DDPM eq. 14
    assert PRESETS["cfg"]["reference"].process.prediction == "eps"


@pytest.mark.parametrize("kind", ["ddpm", "cfg"])
def test_a_run_written_before_the_prediction_field_loads_as_eps(kind):
    """Runs (and models shipped) before process.prediction / t_distribution existed predicted eps from
    uniform timesteps."""
    d = preset(kind, "cpu").to_dict()
    d["process"] = {k: v for k, v in d["process"].items() if k not in ("prediction", "t_distribution", "loss_weighting")}
    process = RunConfig.from_dict(d).process
    assert process.prediction == "eps" and getattr(process, "t_distribution", "uniform") == "uniform"


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
    ({"train.epochs": 0}, r"train.epochs 0: must be in \[1, 100000\]"),
    ({"process.sampler": "euler"}, "valid: ancestral, ddim"),
    ({"train.amp": "fp8"}, "valid: auto, native, bf16, fp16, off"),
    ({"data.dataset": "cifar"}, "valid: mnist, fashion-mnist"),
    ({"data.resolution": 30}, "valid: 28, 32"),
    ({"train.ema_warmup_power": -1}, "train.ema_warmup_power -1.0: must be in"),
    ({"model.groups": 3}, "model.groups 3: must divide every width"),
    ({"model.time_dim": 3}, "model.time_dim 3: must be even"),
    ({"model.num_classes": 10}, "the ddpm model needs 0"),
    ({"process.sample_steps": 5000}, "process.sample_steps 5000: sampling steps must be in"),
    ({"process.beta_start": 0.5}, "beta_start < process.beta_end"),
    ({"model.channels": "8,0"}, "model.channels"),
])
def test_bad_overrides_are_rejected_with_choices(overrides, message):
    with pytest.raises(UserError, match=message):
        apply_overrides(preset("ddpm", "smoke"), overrides)


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(UserError, match="valid: reference, cpu, smoke"):
        preset("vae", "huge")


def test_configs_are_frozen():
    cfg = preset("vae", "smoke")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0  # type: ignore[misc]


NUMERIC_PROBES = (float("nan"), float("inf"), float("-inf"), -1, 0, 10**12)


def _numeric_fields():
    """Every int / float field of every section of every kind: (kind, "section.field", range, whole numbers?)."""
    for kind in ("vae", "ddpm", "cfg", "classifier"):
        cfg = preset(kind, "smoke")
        for section in ("data", "train", "model", "process"):
            component = getattr(cfg, section)
            for f in fields(component) if component is not None else ():
                hint = typing.get_type_hints(type(component))[f.name]
                if hint in (int, float, tuple[int, ...]):
                    yield kind, f"{section}.{f.name}", f.metadata.get("range"), hint is not float


CHOICES = {"data.resolution": (28, 32), "model.unshuffle": (1, 2)}


@pytest.mark.parametrize("kind, key, declared, whole", list(_numeric_fields()), ids=str)
def test_every_numeric_field_is_checked_for_nan_inf_negative_zero_and_huge(kind, key, declared, whole):
    """Each probe is either accepted by the field's stated range or rejected with the field's name.
    Non-finite values are always rejected; every numeric field states a range (or is a choice)."""
    assert declared is not None or key in CHOICES, f"{key} has no declared range"
    for probe in NUMERIC_PROBES:
        legal = math.isfinite(probe) and (not whole or float(probe).is_integer()) and (
            probe in CHOICES[key] if key in CHOICES else declared.holds(probe))
        try:
            apply_overrides(preset(kind, "smoke"), {key: f"8,{probe}" if key.endswith("channels") else probe})
        except UserError as e:
            assert key.split(".")[1] in str(e), (key, probe, str(e))
        else:
            assert legal, f"{key} = {probe} was accepted outside its stated range {declared}"
