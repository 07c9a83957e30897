"""`evaluate --likelihood`: grey-level likelihoods against closed forms, the VAE's grey-level decoder, the
continuous bound's truncation, the scores of the shipped models on a few images, metrics.json, and a kind
without a likelihood refused."""

import math

import pytest
import torch

from mnistgen import greylevels as gl
from mnistgen import kinds
from mnistgen.config import apply_overrides, preset
from mnistgen.errors import UserError
from mnistgen.evaluation.likelihood import BitsPerDim, LikelihoodRequest, LikelihoodScores, iwae_nll_mean
from mnistgen.evaluation.results import RunMetrics
from mnistgen.defaults import run_path
from mnistgen.diffusion import likelihood as lk
from mnistgen.diffusion.denoiser import Denoiser
from mnistgen.kinds.likelihood import check_likelihood_request
from mnistgen.models.vae import VAE, fit_code
from mnistgen.runs import build_trainer, likelihood_scores


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v)) if v > -700 else 0.0


def test_a_discretized_logistic_puts_mass_one_on_the_256_levels_as_float64_formulas_say():
    levels = torch.arange(256, dtype=torch.float64) / 255  # every level of one pixel, [0, 1]
    x = levels.view(256, 1, 1, 1)
    for mean, scale in ((0.3, 0.01), (0.0, 0.2), (1.0, 0.002), (0.97, 1e-4)):
        nll = gl.discretized_pixel_nll(x, torch.tensor(mean, dtype=torch.float64),
                                       torch.tensor(scale, dtype=torch.float64), "logistic", 0.0, 1.0).flatten()
        assert nll.neg().exp().sum().item() == pytest.approx(1.0, abs=1e-9)
        half = 0.5 / 255
        for k in (0, 1, 77, 254, 255):
            lo = 0.0 if k == 0 else sigmoid((k / 255 - half - mean) / scale)
            hi = 1.0 if k == 255 else sigmoid((k / 255 + half - mean) / scale)
            if hi - lo > 1e-300:
                assert nll[k].item() == pytest.approx(-math.log(hi - lo), rel=1e-6, abs=1e-6)


def test_the_logistic_decoder_scores_each_pixel_as_the_float64_formula_says():
    model = VAE(apply_overrides(preset("vae", "smoke"), {"model.decoder": "logistic"}).model)
    logits = torch.zeros(1, 2, 28, 28)
    logits[0, 0, 0, :4] = torch.tensor([0.5, 0.88, 0.27, -0.02])  # locations, unbounded
    logits[0, 1, 0, :4] = torch.tensor([-3.0, -5.0, -9.0, -6.0])  # log-scales (the third below the floor)
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 0, :4] = torch.tensor([128, 224, 0, 0]) / 255
    got = model.pixel_nll(logits, x)[0, 0, 0, :4].tolist()
    floor = math.log(1 / (8 * 255))
    cases = ((128, 0.5, -3.0), (224, 0.88, -5.0), (0, 0.27, floor), (0, -0.02, -6.0))
    for k, (level, mean, log_scale) in enumerate(cases):
        s, half = math.exp(log_scale), 0.5 / 255
        lo = 0.0 if level == 0 else sigmoid((level / 255 - half - mean) / s)
        hi = 1.0 if level == 255 else sigmoid((level / 255 + half - mean) / s)
        assert got[k] == pytest.approx(-math.log(hi - lo), rel=1e-4)
    assert got[3] < 0.01  # a location below 0 gives the black level nearly all the mass


def test_the_logistic_vae_scores_grey_levels_and_fills_in_with_its_own_likelihood(mnist_dir, tmp_path):
    config = apply_overrides(preset("vae", "smoke"), {"model.decoder": "logistic", "train.epochs": 1})
    trainer = build_trainer(config, tmp_path / "vae-grey", data_dir=mnist_dir, preview=False)
    untrained = VAE(config.model).eval()
    trainer.fit()
    model = trainer.model.eval()
    assert model.decode_logits(torch.zeros(1, 20)).shape == (1, 2, 28, 28)
    x = kinds.get("vae").load_data(config, "test", mnist_dir, torch.device("cpu")).x[:64]
    g = torch.Generator().manual_seed(0)
    before, after = iwae_nll_mean(untrained, x, 20, g), iwae_nll_mean(model, x, 20, g)
    assert after < before - 100  # nats per image: 32 steps already learn something of the grey levels
    assert 0 < gl.bits_per_dim(after, 784) < 8  # below a uniform model of 256 levels
    mask = torch.ones(1, 1, 28, 28)
    mask[..., 14:, :] = 0
    z = fit_code(model, x[:4], mask, steps=30)
    assert torch.isfinite(z).all() and not torch.allclose(z, model.encode(x[:4] * mask)[0])


def test_a_bad_decoder_is_refused_with_the_valid_ones():
    with pytest.raises(Exception, match="bernoulli, logistic"):
        apply_overrides(preset("vae", "smoke"), {"model.decoder": "gaussian"})


def test_defaults_fit_the_run_and_explicit_values_are_kept():
    short = apply_overrides(preset("ddpm", "smoke"), {"process.timesteps": 40, "process.sample_steps": 5,
                                                      "data.val_limit": 300})
    filled = check_likelihood_request(kinds.get("ddpm"), short, LikelihoodRequest())
    assert (filled.images, filled.strata) == (300, 39)  # every test image and every level the run has
    full = check_likelihood_request(kinds.get("cfg"), preset("cfg", "cpu"), LikelihoodRequest())
    assert (full.images, full.strata) == (1000, 100)
    kept = check_likelihood_request(kinds.get("ddpm"), short, LikelihoodRequest(images=7, strata=3))
    assert (kept.images, kept.strata) == (7, 3)
    assert check_likelihood_request(kinds.get("vae"), preset("vae", "cpu"), LikelihoodRequest()).strata is None


def test_the_api_refuses_likelihood_options_without_likelihood_and_a_count_of_zero(tmp_path):
    import mnistgen

    with pytest.raises(UserError, match="strata need likelihood"):
        mnistgen.evaluate("pretrained:ddpm", out=tmp_path / "a", strata=5)
    with pytest.raises(UserError, match="probes need likelihood"):
        mnistgen.evaluate("pretrained:ddpm", out=tmp_path / "b", likelihood=False, probes=2)
    with pytest.raises(UserError, match="--likelihood-images must be a whole number in"):
        mnistgen.evaluate("pretrained:ddpm", out=tmp_path / "c", likelihood=0)


def test_a_classifier_has_no_likelihood():
    with pytest.raises(UserError, match="no likelihood of images"):
        check_likelihood_request(kinds.get("classifier"), preset("classifier", "smoke"), LikelihoodRequest())


def test_the_truncated_bound_ends_in_the_full_bound_and_adds_up():
    from mnistgen.config import CFGConfig
    from mnistgen.diffusion.logsnr import LogSNRDiffusion

    process = LogSNRDiffusion(CFGConfig())
    net = torch.nn.Conv2d(1, 1, 1)
    x = torch.rand(3, 1, 4, 4) * 2 - 1
    bound = lk.continuous_vlb(Denoiser(lambda z, t: net(z), "eps"), process, x, strata=8,
                              generator=torch.Generator().manual_seed(0))
    cut = bound.truncated()  # (3, 9)
    assert torch.allclose(cut[:, -1], bound.total)
    assert torch.allclose(cut[:, 3], bound.prior + bound.terms[:, :3].sum(1) + bound.edge_decoders[:, 3])
    assert torch.allclose(cut[:, 0], bound.prior + bound.edge_decoders[:, 0])


@pytest.fixture(scope="module")
def shipped_scores():
    request = LikelihoodRequest(images=6, strata=6, tolerance=1e-2, iwae_k=8, batch=3)
    return {name: likelihood_scores(run_path(f"pretrained:{name}"), torch.device("cpu"), request, progress=False)
            for name in ("vae", "ddpm", "cfg")}


def test_each_model_reports_its_estimates_on_one_scale(shipped_scores):
    ddpm, cfg, vae = shipped_scores["ddpm"], shipped_scores["cfg"], shipped_scores["vae"]
    assert [r.method for r in ddpm.rows] == ["vlb", "ode"] and ddpm.pixels == 784 and ddpm.model_dims == 1024
    assert [(r.method, r.label) for r in cfg.rows] == [("vlb-continuous", "true")] * 2 + [("ode", "true")] + \
        [("vlb-continuous", "null")] * 2 + [("ode", "null")]
    assert cfg.rows[0].decoder_at == 20 and cfg.rows[1].chosen_on == 200 and cfg.rows[1].decoder_at < 20
    assert cfg.rows[1].bits_per_dim < cfg.rows[0].bits_per_dim  # the best edge on held-out images is lower here
    assert all(a.bits_per_dim != b.bits_per_dim for a, b in zip(cfg.rows[:3], cfg.rows[3:]))  # the null label is used
    for r in ddpm.rows[:1] + cfg.rows[:1]:  # the parts add up to the bound
        assert r.prior + r.steps + r.decoder == pytest.approx(r.bits_per_dim, rel=1e-6)
    assert ddpm.rows[1].bits_per_dim < ddpm.rows[0].bits_per_dim  # the ODE below the bound, as for this model
    assert vae.rows[0].protocol == "dynamically binarized" and vae.rows[0].method == "iwae"
    for scores in shipped_scores.values():
        for r in scores.rows:
            assert 0 < r.bits_per_dim < 20 and 0 < r.standard_error < 5 and r.images == 6
    assert len(ddpm.curve) == 6 and ddpm.curve_axis == "t" and cfg.curve_axis == "log-SNR"


def test_bits_round_trip_through_metrics_json(shipped_scores):
    m = RunMetrics("cfg", "cpu", bits=shipped_scores["cfg"])
    back = RunMetrics.from_json(m.to_json())
    assert back.bits == m.bits
    scalars = m.scalars()
    assert scalars["bits/ode-true"] == m.bits.rows[2].bits_per_dim
    assert any(k.startswith("bits/vlb-continuous-true@") for k in scalars)
    assert BitsPerDim.from_json(m.bits.rows[1].to_json()).name.endswith("(best on 200 training images)")
    assert LikelihoodScores.from_json(m.bits.to_json()).curve == m.bits.curve


def test_the_logistic_decoders_last_layer_stays_float32_under_autocast():
    model = VAE(apply_overrides(preset("vae", "smoke"), {"model.decoder": "logistic"}).model)
    z = torch.randn(3, 20, generator=torch.Generator().manual_seed(0))
    plain = model.decode_logits(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model.decode_logits(z)
    assert mixed.dtype == torch.float32
    assert (mixed - plain).abs().max().item() < 0.05  # the hidden layer in bf16, the output layer not rounded
