"""The bench scripts that turn runs into result files: what they write is what the run holds."""

import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def bench(monkeypatch, tmp_path):
    """bench/'s modules importable, with results written under tmp_path, never into the repository."""
    monkeypatch.syspath_prepend(str(BENCH))
    import results_io

    monkeypatch.setattr(results_io, "RESULTS", tmp_path / "results")
    return tmp_path / "results"


def _evaluated_run(root: Path) -> Path:
    run = root / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"kind": "ddpm", "preset": "cpu"}))
    (run / "history.json").write_text(json.dumps([{"epoch": 1, "train_loss": 0.5}]))
    (run / "metrics.json").write_text(json.dumps({"mnist_fd": 23.7, "n_samples": 1000}))
    return run


def test_record_run_writes_the_runs_own_files(bench, tmp_path, capsys):
    import record_run

    run = _evaluated_run(tmp_path)
    record_run.main([str(run), "--name", "ddpm-x0", "--what", "x_0 instead of v"])
    [written] = bench.iterdir()
    assert written.name.startswith("ddpm-x0-") and written.suffix == ".json"
    record = json.loads(written.read_text())
    assert record["what"] == "x_0 instead of v" and record["config"] == {"kind": "ddpm", "preset": "cpu"}
    assert record["history"] == [{"epoch": 1, "train_loss": 0.5}]
    assert record["metrics"] == {"mnist_fd": 23.7, "n_samples": 1000} and {"date", "host"} <= set(record)
    assert "mnist_fd: 23.7" in capsys.readouterr().out


def test_record_run_refuses_a_run_that_was_not_evaluated(bench, tmp_path):
    import record_run

    run = _evaluated_run(tmp_path)
    (run / "metrics.json").unlink()
    with pytest.raises(SystemExit, match="no metrics.json"):
        record_run.main([str(run), "--name", "x", "--what", "y"])
    assert not bench.exists()


@pytest.mark.slow
def test_edit_scores_writes_each_models_scores_side_by_side(bench, capsys):
    import edit_scores

    edit_scores.main(["--models", "pretrained:vae", "--digits", "20", "--pairs", "3"])
    [written] = bench.iterdir()
    record = json.loads(written.read_text())
    scores = record["models"]["pretrained:vae"]
    assert scores["digits"] == 20 and scores["interpolation_pairs"] == 3 and scores["known_max_diff"] == 0
    assert 0.5 < scores["accuracy"] <= 1 and "inversion_psnr" not in scores  # the VAE inverts nothing
    table = capsys.readouterr().out
    assert "accuracy" in table and f"{scores['accuracy']:.4f}"[:6] in table


def test_sampler_quality_reads_steps_eta_and_a_grid_with_its_power(bench):
    import sampler_quality
    from mnistgen.diffusion.registry import SamplerSettings

    assert sampler_quality.settings("ddim-50-eta1:time") == SamplerSettings("ddim", 50, 1.0, None, "time")
    assert sampler_quality.settings("dpm++2m-sde-10:trailing:0.8", 0.3) == \
        SamplerSettings("dpm++2m-sde", 10, None, 0.3, "trailing", 0.8)
    assert sampler_quality.settings("ancestral", grid="log-snr") == SamplerSettings("ancestral", grid="log-snr")
    for bad in ("euler-10", "ddim-10:karras", "ancestral-5-eta1"):
        with pytest.raises(SystemExit):
            sampler_quality.settings(bad)
