"""The registry's kinds: what each decides (defaults, which options apply, labels, a latent space),
asked of the kind objects directly, the way the CLI, the API and the study ask them."""

import pytest
import torch

from mnistgen import kinds
from mnistgen.config import preset
from mnistgen.diffusion.registry import GRID_SPACINGS, SAMPLERS, SamplerSettings
from mnistgen.errors import UserError

DIFFUSION = ("ddpm", "cfg")


@pytest.mark.parametrize("kind", DIFFUSION)
@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("grid", GRID_SPACINGS)
def test_every_sampler_and_grid_applies_to_both_diffusion_kinds(kind, sampler, grid):
    k, config = kinds.get(kind), preset(kind, "cpu")
    asked = SamplerSettings(sampler, 10, 1.0 if "eta" in SAMPLERS[sampler].options else None, grid=grid)
    k.check_settings(config, asked)
    resolved = k.resolve(config, asked)
    assert (resolved.sampler, resolved.steps, resolved.grid) == (sampler, 10, grid)
    assert (resolved.guidance is not None) == k.guided
    assert len(k.step_times(config, asked)) == 10 if grid == "time" else len(k.step_times(config, asked)) <= 10


def test_the_vae_takes_no_sampler_option():
    k, config = kinds.get("vae"), preset("vae", "cpu")
    for option in (SamplerSettings("ddim"), SamplerSettings(steps=5), SamplerSettings(grid="time"),
                   SamplerSettings(guidance=1.0)):
        with pytest.raises(UserError, match="does not apply to the vae model"):
            k.check_settings(config, option)


def test_default_steps_per_kind():
    ddpm, cfg = preset("ddpm", "cpu"), preset("cfg", "cpu")
    assert kinds.get("ddpm").resolve(ddpm, SamplerSettings("ancestral")).steps == ddpm.process.timesteps
    assert kinds.get("cfg").resolve(cfg, SamplerSettings("ancestral")).steps == cfg.process.sample_steps == 16
    with pytest.raises(UserError, match=r"--steps must be in \[1, 1000\]"):
        kinds.get("ddpm").check_settings(ddpm, SamplerSettings(steps=1001))


@pytest.mark.parametrize("kind", list(kinds.REGISTRY))
def test_the_one_rule_on_labels(kind):
    k = kinds.get(kind)
    if k.takes_labels:
        k.check_labels(True)
        with pytest.raises(UserError, match=f"the {kind} model needs"):
            k.check_labels(False)
    else:
        k.check_labels(False)
        with pytest.raises(UserError, match=f"the {kind} model takes no labels"):
            k.check_labels(True)


@pytest.mark.parametrize("kind", list(kinds.REGISTRY))
def test_only_the_vae_has_a_latent_space(kind):
    k, config = kinds.get(kind), preset(kind, "smoke")
    if kind == "vae":
        model = k.build_model(config).eval()
        assert k.latent_size(config) == config.model.latent
        codes = k.encode(model, torch.rand(2, 1, 28, 28))
        assert codes.shape == (2, config.model.latent) and k.decode(model, codes).shape == (2, 1, 28, 28)
    else:
        with pytest.raises(UserError, match="has no latent space"):
            k.latent_size(config)


def test_the_registry_lists_the_study_models_in_order():
    assert kinds.GENERATIVE == ("vae", "ddpm", "cfg")
    with pytest.raises(UserError, match="valid: vae, ddpm, cfg, classifier"):
        kinds.get("gan")


@pytest.mark.parametrize("kind", DIFFUSION)
def test_the_epochs_figure_shows_rows_the_preview_holds(kind):
    """F9 / F12 read the per-epoch previews at the kind's indices: each must exist in the preview batch,
    and for the CFG model each row's entry must carry its row's label."""
    k = kinds.get(kind)
    rows = k.preview_rows()
    labels = k.preview_labels(torch.device("cpu"))
    size = len(labels) if labels is not None else k.preview_count()
    assert rows and all(0 <= i < size for i in rows)
    if labels is not None:
        assert [labels[i].item() for i in rows] == list(range(10))
        assert list(rows.values()) == [f"label {d}" for d in range(10)]


def test_the_vae_codes_are_the_posterior_means_that_reconstruct_a_digit():
    """The shipped VAE's encode -> decode gives back a test digit (a code that is not the posterior mean,
    e.g. its log-variance, does not)."""
    import mnistgen
    from mnistgen.data.mnist import load

    model = mnistgen.load("pretrained:vae", device="cpu")
    digits = load("test", "unit").x[:16]
    error = (model.decode(model.encode(digits)) - digits).abs().mean().item()
    assert error < 0.08, error
