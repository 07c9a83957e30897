"""`evaluate --edits`: the measures against closed forms, the scores against the same edits made through
the public Model API and read by the judge independently, metrics.json, and bad input refused first."""

import json
import math

import pytest
import torch

import mnistgen
from mnistgen.defaults import run_path
from mnistgen.evaluation.edits import EditRequest, EditScores, known_max_diff, psnr, read_as, same_class_pairs, share
from mnistgen.evaluation.fd import load_classifier
from mnistgen.evaluation.results import RunMetrics
from mnistgen.images import named_mask
from mnistgen.runs import edit_scores


@pytest.fixture(scope="module")
def judge():
    return load_classifier()


def test_psnr_of_a_constant_error_is_its_closed_form():
    a = torch.zeros(3, 1, 28, 28)
    for error in (0.1, 0.01, 0.5):
        # mean squared error e^2 -> 10 log10(1 / e^2) = -20 log10(e)
        assert psnr(a, a + error).tolist() == pytest.approx([-20 * math.log10(error)] * 3, rel=1e-7)  # a float32 error
    b = a.clone()
    b[1, 0, 0, 0] = 1.0  # one pixel of 784 off by 1: mse 1/784
    assert psnr(a, b)[1].item() == pytest.approx(10 * math.log10(784), rel=1e-9)


def test_known_max_diff_looks_only_at_known_pixels():
    x = torch.rand(2, 1, 28, 28)
    mask = named_mask("lower")
    out = x.clone()
    out[:, :, 20:, :] = 0  # hidden half changed
    assert known_max_diff(out, x, mask) == 0
    out[1, 0, 3, 4] = x[1, 0, 3, 4] + 0.25  # one known pixel changed
    assert known_max_diff(out, x, mask) == pytest.approx(0.25)


def test_same_class_pairs_are_exactly_count_distinct_same_class_pairs(mnist_test_unit):
    y = mnist_test_unit.y
    for count in (1, 7, 10, 23, 100):
        a, b = same_class_pairs(y, count)
        assert len(a) == len(b) == count
        assert (y[a] == y[b]).all() and (a != b).all()
        used = torch.cat([a, b])
        assert len(set(used.tolist())) == 2 * count  # no image in two pairs
        assert sorted(set(y[a].tolist())) == list(range(min(count, 10)))  # round the digits
    with pytest.raises(ValueError, match="same-class pairs"):
        same_class_pairs(y[:30], 40)


def test_the_judge_reads_test_digits_and_not_shifted_labels(judge, mnist_test_unit):
    x, y = mnist_test_unit.x[:300], mnist_test_unit.y[:300]
    read = read_as(judge, x)
    assert share(read, y) > 0.97
    assert share(read, (y + 1) % 10) < 0.03


def test_vae_scores_equal_the_same_edits_through_the_model_api(judge, mnist_test_unit):
    request = EditRequest(digits=40, pairs=10)
    scores = edit_scores(run_path("pretrained:vae"), torch.device("cpu"), request, progress=False)
    model = mnistgen.load("pretrained:vae", device="cpu")
    x, y = mnist_test_unit.x[:40], mnist_test_unit.y[:40]
    out = model.inpaint(x, "lower")  # the VAE's fit is deterministic
    assert scores.accuracy == pytest.approx(share(read_as(judge, out), y), abs=1e-9)
    assert scores.known_max_diff == 0.0
    assert scores.method_known_max_diff > 0.2  # the decoder redraws the known pixels; they are pasted back
    a, b = same_class_pairs(mnist_test_unit.y, 10)
    mids = torch.cat([model.interpolate(mnist_test_unit.x[i], mnist_test_unit.x[j], 3)[1:2]
                      for i, j in zip(a.tolist(), b.tolist())])
    assert scores.midpoints_keep_class == pytest.approx(share(read_as(judge, mids), mnist_test_unit.y[a]), abs=1e-9)
    assert (scores.digits, scores.interpolation_pairs) == (40, 10)
    assert scores.guided_accuracy is None and scores.inversion_psnr is None  # parts a VAE does not do
    assert "fitted" in scores.method


@pytest.mark.slow
def test_ddpm_round_trip_psnr_equals_the_model_apis(judge, mnist_test_unit):
    request = EditRequest(digits=6, pairs=2, inversion_steps=10)
    scores = edit_scores(run_path("pretrained:ddpm"), torch.device("cpu"), request, progress=False)
    model = mnistgen.load("pretrained:ddpm", device="cpu")
    x = mnist_test_unit.x[:6]
    back = model.from_noise(model.invert(x, steps=10), steps=10)
    assert scores.inversion_psnr == pytest.approx(psnr(back, x).mean().item(), abs=1e-4)
    assert scores.inversion_steps == 10 and scores.known_max_diff == 0.0
    assert scores.method_known_max_diff <= 1 / 255  # RePaint's last step puts the known pixels back itself
    g = torch.Generator().manual_seed(0)
    out = model.inpaint(x, "lower", generator=g)
    assert scores.accuracy == pytest.approx(share(read_as(judge, out), mnist_test_unit.y[:6]), abs=1e-9)
    assert scores.guided_accuracy is None and scores.method.startswith("RePaint: 50 steps")


@pytest.mark.slow
def test_cfg_guided_scores_equal_the_model_apis(judge, mnist_test_unit):
    request = EditRequest(digits=6, pairs=1, inversion_steps=5)
    scores = edit_scores(run_path("pretrained:cfg"), torch.device("cpu"), request, progress=False)
    model = mnistgen.load("pretrained:cfg", device="cpu")
    x, y = mnist_test_unit.x[:6], mnist_test_unit.y[:6]
    w = model.config.process.guidance
    for labels, value in ((y, scores.guided_accuracy), ((y + 1) % 10, scores.other_label_share)):
        out = model.inpaint(x, "lower", labels=labels, guidance=w, generator=torch.Generator().manual_seed(0))
        assert value == pytest.approx(share(read_as(judge, out), labels), abs=1e-9)
    assert scores.guidance == w and scores.known_max_diff == 0.0 and scores.inversion_psnr > 20


def test_edit_scores_round_trip_through_metrics_json():
    scores = EditScores(1000, "lower", "RePaint: 50 steps, jump 5, resample 5", 0.0, 0.81, 0.3, 0.98, 0.37, 100,
                        37.7, 100, 0.91, 812.5, 1e-7)
    metrics = RunMetrics("cfg", "cpu", edits=scores)
    again = RunMetrics.from_json(json.loads(json.dumps(metrics.to_json())))
    assert again.edits == scores
    scalars = metrics.scalars()
    assert scalars["edits/accuracy"] == 0.81 and scalars["edits/inversion_psnr"] == 37.7
    assert not {"edits/digits", "edits/inversion_steps", "edits/interpolation_pairs", "edits/seconds"} & set(scalars)
    assert RunMetrics.from_json({"model": "vae", "preset": "cpu"}).edits is None  # files written before it


@pytest.mark.parametrize("args, message", [
    (["--edit-pairs", "3", "--inversion-steps", "4"], "--edit-pairs, --inversion-steps need --edits"),
    (["--edit-digits", "5"], "--edit-digits need --edits"),
    (["--edits", "--edit-digits", "0"], "must be >= 1"),
    (["--edits", "--edit-digits", "20000"], "--edit-digits must be a whole number in [1, 10000]"),
    (["--edits", "--edit-pairs", "500"], "--edit-pairs must be a whole number in [1, 400]"),
    (["--edits", "--inversion-steps", "5000"], "--inversion-steps must be a whole number in [1, 1000]"),
])
def test_bad_edit_options_are_one_line_before_any_work(cli, tmp_path, args, message):
    out = tmp_path / "ev"
    result = cli("evaluate", "pretrained:ddpm", "--out", out, *args)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_a_model_that_cannot_edit_is_refused(monkeypatch):
    from mnistgen import kinds
    from mnistgen.config import preset
    from mnistgen.errors import UserError
    from mnistgen.kinds.edits import check_edit_request

    with pytest.raises(UserError, match="cannot inpaint"):
        check_edit_request(kinds.get("classifier"), preset("classifier", "smoke"), EditRequest())


@pytest.mark.slow
def test_evaluate_edits_writes_them_into_metrics_json(cli, tmp_path):
    out = tmp_path / "ev"
    result = cli("evaluate", "pretrained:vae", "--out", out, "--n", "20", "--n-images", "10", "--iwae-k", "2",
                 "--edits", "--edit-digits", "12", "--edit-pairs", "3", "--no-progress")
    assert result.returncode == 0, result.stderr
    written = json.loads((out / "metrics.json").read_text())["edits"]
    assert written["digits"] == 12 and written["interpolation_pairs"] == 3 and written["known_max_diff"] == 0
    assert "edits accuracy:" in result.stdout


def test_inversion_steps_of_a_continuous_process_are_limited_by_its_config():
    from mnistgen import kinds
    from mnistgen.config import CFGConfig, preset, range_of
    from mnistgen.errors import UserError
    from mnistgen.kinds.edits import check_edit_request

    high = range_of(CFGConfig, "sample_steps").high
    config = preset("cfg", "cpu")
    check_edit_request(kinds.get("cfg"), config, EditRequest(inversion_steps=high))
    with pytest.raises(UserError, match=rf"--inversion-steps must be a whole number in \[1, {high}\]"):
        check_edit_request(kinds.get("cfg"), config, EditRequest(inversion_steps=high + 1))
