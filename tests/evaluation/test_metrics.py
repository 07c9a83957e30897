from mnistgen.config import preset
from mnistgen import kinds
from mnistgen.diffusion.samplers import SamplerSettings
from mnistgen.evaluation.results import SampleQuality


def resolve(config, settings):
    return kinds.get(config.kind).resolve(config, settings)


def test_resolve_fills_the_runs_defaults_and_keeps_what_was_asked():
    """The run's sampler, steps, eta, guidance and grid unless asked; a grid's power is the run's on the
    run's own grid, 1 on another powered one, and none on log-SNR."""
    ddpm, cfg = preset("ddpm", "cpu"), preset("cfg", "cpu")
    assert resolve(ddpm, SamplerSettings()) == SamplerSettings("dpm++2m-sde", 10, grid="trailing", grid_power=0.8)
    assert resolve(ddpm, SamplerSettings(sampler="ddim", steps=20, eta=0.0, grid="time")) == \
        SamplerSettings("ddim", 20, 0.0, grid="time", grid_power=1.0)
    assert resolve(ddpm, SamplerSettings(sampler="ddim")) == SamplerSettings("ddim", 10, 1.0, grid="trailing",
                                                                             grid_power=0.8)
    assert resolve(ddpm, SamplerSettings(grid_power=0.5)).grid_power == 0.5
    assert resolve(ddpm, SamplerSettings(sampler="ancestral")) == SamplerSettings("ancestral", 1000, grid="trailing",
                                                                                  grid_power=0.8)
    assert resolve(ddpm, SamplerSettings(sampler="ancestral", steps=100, grid="time")) == \
        SamplerSettings("ancestral", 100, grid="time", grid_power=1.0)
    assert resolve(ddpm, SamplerSettings(sampler="dpm++2m", grid="log-snr")) == SamplerSettings("dpm++2m", 10,
                                                                                               grid="log-snr")
    assert resolve(cfg, SamplerSettings()) == SamplerSettings("ancestral", cfg.process.sample_steps, guidance=0.3,
                                                              grid="time", grid_power=1.0)
    assert resolve(cfg, SamplerSettings(guidance=2.0)).guidance == 2.0
    assert resolve(cfg, SamplerSettings(sampler="ddim")) == SamplerSettings("ddim", 16, 0.0, 0.3, "time", 1.0)
    assert resolve(cfg, SamplerSettings(sampler="dpm++2m", steps=10, guidance=1.0)) == \
        SamplerSettings("dpm++2m", 10, None, 1.0, "time", 1.0)
    assert resolve(preset("vae", "cpu"), SamplerSettings(steps=5)) == SamplerSettings("prior")


def test_record_is_the_metrics_json_form():
    q = SampleQuality(SamplerSettings("cfg", 64, guidance=0.3), 200, 12.5, [20] * 10, 8.0, 0.9, [0.9] * 10)
    record = q.to_json()
    assert record["sampler"] == "cfg" and record["guidance"] == 0.3 and "eta" not in record
    assert record["seconds_per_100_samples"] == 4.0 and record["class_accuracy"] == 0.9
    plain = SampleQuality(SamplerSettings("prior"), 100, 3.0, [10] * 10, 1.0).to_json()
    assert "steps" not in plain and "class_accuracy" not in plain and plain["n_samples"] == 100


def test_every_part_of_a_sample_quality_survives_metrics_json():
    from mnistgen.evaluation.fd import FDSpread
    from mnistgen.evaluation.kid import KID
    from mnistgen.evaluation.results import RunMetrics, SweepPoint
    from mnistgen.evaluation.prdc import PRDC

    q = SampleQuality(SamplerSettings("cfg", 64, guidance=0.3), 200, 12.5, [20] * 10, 8.0, 0.9, [0.9] * 10,
                      FDSpread(0.4, 100, 11.9), KID(0.02, 0.003, 100, 200), PRDC(0.8, 0.7, 0.95, 0.6, 5),
                      [0.5] * 10)
    metrics = RunMetrics("cfg", "smoke", quality=q, guidance_sweep=(SweepPoint.of(q),))
    again = RunMetrics.from_json(metrics.to_json())
    assert again == metrics
    assert again.guidance_sweep[0].kid == 0.02
    old = {k: v for k, v in metrics.to_json().items() if k in ("model", "preset", "n_samples", "mnist_fd",
                                                                 "class_histogram", "sample_seconds")}
    assert RunMetrics.from_json(old).quality.kid is None  # files from before these metrics still read


def test_per_class_coverage_sees_which_digits_the_samples_reach():
    """Ten well-separated real clusters, one per digit; every sample, whatever digit was asked
    for, lands in the cluster of 3: only digit 3's real images are covered."""
    import torch

    from mnistgen.evaluation.fd import feature_stats
    from mnistgen.evaluation.metrics import Reference, per_class_coverage

    g = torch.Generator().manual_seed(0)
    centres = 20 * torch.eye(10)  # (10, 10): digit d at 20 e_d
    real_labels = torch.arange(10).repeat_interleave(60)
    real = centres[real_labels] + torch.randn(600, 10, generator=g)
    reference = Reference(real, real_labels, feature_stats(real))
    asked = torch.arange(10).repeat_interleave(40)
    collapsed = centres[3] + torch.randn(400, 10, generator=g)
    coverage = per_class_coverage(collapsed, asked, reference, g)
    assert coverage[3] > 0.6 and max(coverage[:3] + coverage[4:]) == 0.0
    faithful = per_class_coverage(centres[asked] + torch.randn(400, 10, generator=g), asked, reference, g)
    assert min(faithful) > 0.6
    assert per_class_coverage(collapsed[:50], asked[::8], reference, g) is None  # 5 per digit: too few for k = 5
