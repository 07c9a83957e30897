"""``evaluate --steps-sweep``: every sample metric with its spread and the sampling time per (sampler,
steps), in metrics.json, on the command line, in a figure; and the pieces it is built from."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mnistgen
from mnistgen.cli import main
from mnistgen.diffusion.registry import SamplerSettings, parse_sampler
from mnistgen.evaluation.prdc import prdc, prdc_against_subsets
from mnistgen.evaluation.results import RunMetrics, StepsPoint, SweepPoint
from mnistgen.figures import diffusion

FIXTURE = Path(__file__).parents[1] / "fixtures" / "h100_smoke_ddpm"  # a smoke DDPM (ddim-5, eta = 0, time grid)


@pytest.fixture
def run(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "ddpm")
    return tmp_path / "ddpm"


def test_a_steps_sweep_scores_each_sampler_at_each_number_of_steps(run, mnist_dir, capsys):
    """Sampler-major order, each point drawn as its settings say: its MNIST-FD is the one a plain
    evaluation with those settings and the same seed finds. metrics.json holds the points and reads back;
    the command prints one line per point; the curve is drawn from them."""
    args = ["evaluate", str(run), "--n", "30", "--sweep-samples", "20", "--steps-sweep", "2,3", "--samplers",
            "ddim:time,dpm++2m-sde:trailing:0.8", "--no-progress", "--data-dir", str(mnist_dir), "--device", "cpu"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    saved = json.loads((run / "metrics.json").read_text())
    metrics = RunMetrics.from_json(saved)
    points = metrics.steps_sweep
    assert [(p.sampler, p.steps, p.grid, p.grid_power, p.eta) for p in points] == [
        ("ddim", 2, "time", 1.0, 0.0), ("ddim", 3, "time", 1.0, 0.0),
        ("dpm++2m-sde", 2, "trailing", 0.8, None), ("dpm++2m-sde", 3, "trailing", 0.8, None)]
    for p in points:
        assert p.n_samples == 20 and p.seconds_per_100_samples > 0 and p.guidance is None and p.class_accuracy is None
        assert math.isfinite(p.mnist_fd) and p.mnist_fd_std > 0 and p.kid_std > 0
        assert 0 <= p.precision <= 1 and 0 <= p.recall <= 1 and p.recall_std is not None
    assert metrics.quality.n_samples == 30 and metrics.quality.settings.steps == 5  # the run's own evaluation stays
    assert RunMetrics.from_json(json.loads(json.dumps(metrics.to_json()))) == metrics
    assert printed.count(" steps: mnist_fd ") == 4 and "dpm++2m-sde, trailing^0.8 grid, 3 steps" in printed

    plain = mnistgen.evaluate(run, n=20, sampler="dpm++2m-sde", steps=3, grid="trailing", grid_power=0.8,
                              device="cpu", data_dir=mnist_dir, progress=False)
    assert plain.quality.mnist_fd == pytest.approx(points[3].mnist_fd, rel=1e-6)
    assert plain.quality.mnist_fd != pytest.approx(points[2].mnist_fd, rel=1e-3)  # 2 steps draw other samples

    assert main(["evaluate", str(run), "--n", "20", "--steps-sweep", "2", "--no-progress", "--data-dir",
                 str(mnist_dir), "--device", "cpu"]) == 0  # no --samplers: the run's sampler
    again = RunMetrics.from_json(json.loads((run / "metrics.json").read_text())).steps_sweep
    assert [(p.sampler, p.steps, p.grid, p.eta) for p in again] == [("ddim", 2, "time", 0.0)]
    drawn = diffusion.render_steps(run / "steps.png", metrics.steps_sweep)
    with Image.open(drawn[0]) as image:
        assert image.size[0] > 500
    (run / "old.png").write_bytes(b"an earlier sweep's drawing")
    assert diffusion.render_steps(run / "old.png", None) == [] and not (run / "old.png").exists()


def test_the_sweep_inherits_the_requests_settings_where_an_entry_leaves_them(run):
    """An entry without a grid takes the request's grid and power; one with a grid but no power takes 1
    (or the run's power on the run's grid); eta reaches only samplers that take it."""
    from mnistgen import kinds
    from mnistgen.kinds import EvaluationRequest
    from mnistgen.storage.rundir import RunDir

    config = RunDir(run).read_config()
    kind = kinds.get(config.kind)
    request = EvaluationRequest(settings=SamplerSettings(eta=0.5, grid="trailing", grid_power=0.7), steps_sweep=(4,),
                                samplers=(parse_sampler("ddim"), parse_sampler("dpm++2m:time"),
                                          parse_sampler("ancestral:trailing:2")))
    resolved = [kind.resolve(config, s) for s in kind.sweep_samplers(request)]
    assert resolved == [SamplerSettings("ddim", 5, 0.5, None, "trailing", 0.7),
                        SamplerSettings("dpm++2m", 5, None, None, "time", 1.0),
                        SamplerSettings("ancestral", 1000, None, None, "trailing", 2.0)]
    kind.check_request(config, request)


def test_parse_sampler_and_describe():
    assert parse_sampler("ddim") == SamplerSettings("ddim")
    assert parse_sampler(" dpm++2m-sde:trailing:0.8") == SamplerSettings("dpm++2m-sde", grid="trailing",
                                                                          grid_power=0.8)
    assert SamplerSettings("ddim", 50, 1.0, grid="time", grid_power=1.0).describe() == "ddim-50, eta = 1"
    assert SamplerSettings("dpm++2m-sde", 10, grid="trailing", grid_power=0.8).describe() == \
        "dpm++2m-sde-10, trailing^0.8 grid"
    assert SamplerSettings("ancestral", 100, grid="log-snr").describe() == "ancestral-100, log-snr grid"
    assert SamplerSettings("ddim", grid="time", grid_power=2.0).describe() == "ddim, time^2 grid"
    for bad in ("euler", "ddim:karras", "ddim:time:x", "ddim:time:1:2"):
        with pytest.raises(ValueError):
            parse_sampler(bad)


def test_prdc_over_real_subsets_reports_the_spread_of_precision_and_recall():
    """The std over the subsets, recomputed here from each subset's own PRDC with NumPy (ddof = 1)."""
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(300, 6, generator=g), torch.randn(40, 6, generator=g) * 1.2 + 0.3
    got = prdc_against_subsets(real, fake, 5, repeats=7, generator=torch.Generator().manual_seed(3))
    replay = torch.Generator().manual_seed(3)
    rows = [prdc(real[torch.randperm(300, generator=replay)[:40]], fake, 5) for _ in range(7)]
    for name in ("precision", "recall"):
        values = np.array([getattr(r, name) for r in rows])
        assert getattr(got, name) == pytest.approx(values.mean(), abs=1e-12)
        assert getattr(got, f"{name}_std") == pytest.approx(values.std(ddof=1), abs=1e-12)
        assert getattr(got, f"{name}_std") > 0
    assert prdc_against_subsets(real[:30], fake, 5).recall_std is None  # one real set: no spread


def test_the_curves_draw(tmp_path):
    points = tuple(StepsPoint(s, k, g, 100, 50.0 / k, 1.0, 5.0, 0.5, 0.8, 0.9 - 0.1 / k, 2.0 * k, p, recall_std=0.01)
                   for s, g, p in (("ddim", "time", 1.0), ("dpm++2m-sde", "trailing", 0.8)) for k in (5, 10, 20))
    path = diffusion.steps_curve(points, tmp_path / "steps.png")
    assert Image.open(path).size[0] > 600
    assert points[3].line == "dpm++2m-sde, trailing^0.8 grid" and points[0].line == "ddim"
    sweep = tuple(SweepPoint(w, 16, 100, 10.0 + w, 0.9 + w / 50, recall=0.9 - w / 10, recall_std=0.02)
                  for w in (0.0, 1.0, 4.0))
    assert Image.open(diffusion.guidance_tradeoff(sweep, tmp_path / "tradeoff.png")).size[0] > 300


def test_eta_reaches_the_sweeps_ddim_on_a_run_whose_sampler_takes_none():
    """On the cpu DDPM (SDE-DPM-Solver++, no eta) --eta goes to a sweep's DDIM; alone it is refused."""
    from mnistgen import kinds
    from mnistgen.config import preset
    from mnistgen.errors import UserError
    from mnistgen.kinds import EvaluationRequest

    config = preset("ddpm", "cpu")
    kind = kinds.get("ddpm")
    swept = EvaluationRequest(settings=SamplerSettings(eta=0.0), steps_sweep=(5, 10),
                              samplers=(parse_sampler("ddim:time"), parse_sampler("dpm++2m-sde")))
    kind.check_request(config, swept)
    assert [s.eta for s in kind.sweep_samplers(swept)] == [0.0, None]
    with pytest.raises(UserError, match="--eta applies to --sampler ddim only"):
        kind.check_request(config, EvaluationRequest(settings=SamplerSettings(eta=0.0)))
    with pytest.raises(UserError, match="--eta applies to --sampler ddim only"):
        kind.check_request(config, EvaluationRequest(settings=SamplerSettings(eta=0.0), steps_sweep=(5,)))


def test_sweep_checks_that_reach_past_the_command_line():
    """What only the API can pass: an unknown sampler given as settings, a main eta out of range hidden
    behind a sweep's DDIM, two grids that draw on the same levels (the CFG model's trailing is its time
    grid), and a sweep of a model the digit judge cannot score."""
    from dataclasses import replace

    from mnistgen import kinds
    from mnistgen.config import preset
    from mnistgen.errors import UserError
    from mnistgen.kinds import EvaluationRequest
    from mnistgen.runs import check_request

    ddpm, cfg = preset("ddpm", "cpu"), preset("cfg", "cpu")
    with pytest.raises(UserError, match="unknown sampler 'euler'"):
        kinds.get("ddpm").check_request(ddpm, EvaluationRequest(steps_sweep=(5,), samplers=(SamplerSettings("euler"),)))
    main_ddim = EvaluationRequest(settings=SamplerSettings("ddim", eta=7.0), steps_sweep=(5,),
                                  samplers=(parse_sampler("ddim:time"),))
    with pytest.raises(UserError, match="--eta must be"):
        kinds.get("ddpm").check_request(ddpm, main_ddim)
    same = EvaluationRequest(steps_sweep=(4, 8), samplers=(parse_sampler("ddim:time"), parse_sampler("ddim:trailing")))
    with pytest.raises(UserError, match="names one sampler twice"):
        kinds.get("cfg").check_request(cfg, same)
    kinds.get("ddpm").check_request(ddpm, same)  # on the DDPM the two grids differ
    fashion = replace(ddpm, data=replace(ddpm.data, dataset="fashion-mnist"))
    with pytest.raises(UserError, match="judged by mnistgen's digit classifier"):
        check_request(fashion, EvaluationRequest(steps_sweep=(5,)), "RUN")


def test_the_default_reverse_chain_shows_six_states_on_a_short_grid():
    """The shipped DDPM's 10-step trailing grid ends at t = 157: the default states by fraction of t would
    all fall on its last step, so they are taken evenly over its steps, the finished samples last."""
    model = mnistgen.load("pretrained:ddpm", "cpu")
    times = model.kind.step_times(model.config, SamplerSettings())
    assert times == [999, 918, 836, 751, 664, 573, 479, 381, 275, 157]
    chain = model.reverse_chain(2, generator=torch.Generator().manual_seed(0))
    assert chain.shape == (2, 6, 1, 28, 28)
    final = model.sample(2, generator=torch.Generator().manual_seed(0), progress=False)
    torch.testing.assert_close(chain[:, -1], final)
