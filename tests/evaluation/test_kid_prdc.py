"""KID and precision / recall / density / coverage against closed forms and brute-force loops."""

import itertools
import math

import pytest
import torch

from mnistgen.evaluation import prdc as prdc_module
from mnistgen.evaluation.kid import kid, mmd2_unbiased
from mnistgen.evaluation.prdc import knn_radii, prdc, prdc_against_subsets


def _k(a, b):
    return (sum(p * q for p, q in zip(a, b)) / len(a) + 1) ** 3


def test_mmd_of_two_point_masses_is_the_kernel_closed_form():
    a, b = [0.5, -1.0, 2.0], [1.5, 0.0, -0.5]
    x, y = torch.tensor([a] * 6), torch.tensor([b] * 4)
    expected = _k(a, a) + _k(b, b) - 2 * _k(a, b)
    assert mmd2_unbiased(x, y).item() == pytest.approx(expected, rel=1e-12)


def test_mmd_matches_a_loop_over_distinct_pairs():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(9, 3, generator=g, dtype=torch.float64) + 0.5
    xs, ys = x.tolist(), y.tolist()
    within_x = sum(_k(p, q) for p, q in itertools.permutations(xs, 2)) / (7 * 6)
    within_y = sum(_k(p, q) for p, q in itertools.permutations(ys, 2)) / (9 * 8)
    cross = sum(_k(p, q) for p in xs for q in ys) / (7 * 9)
    assert mmd2_unbiased(x, y).item() == pytest.approx(within_x + within_y - 2 * cross, rel=1e-10)


def test_kid_is_unbiased_for_equal_distributions():
    """E[MMD^2_u] = 0 when both sets come from one distribution; the biased estimator (with the
    diagonal) is positive by about (E k(x, x) - E k(x, y)) (1/m + 1/n), many standard errors away."""
    g = torch.Generator().manual_seed(1)
    values = torch.stack([mmd2_unbiased(torch.randn(20, 4, generator=g), torch.randn(20, 4, generator=g))
                          for _ in range(400)])
    assert abs(values.mean().item()) < 3 * values.std().item() / math.sqrt(400)


def test_kid_reads_the_same_at_any_sample_count():
    g = torch.Generator().manual_seed(2)
    real = torch.randn(4000, 8, generator=g)
    fake = torch.randn(4000, 8, generator=g) * 1.3 + 0.2
    small = kid(real, fake, subsets=200, subset_size=100, generator=g)
    large = kid(real, fake, subsets=20, subset_size=2000, generator=g)
    assert small.subset_size == 100 and large.subset_size == 2000
    assert small.mean == pytest.approx(large.mean, rel=0.1)
    assert large.mean > 10 * large.std / math.sqrt(20)  # a real difference, clearly detected


def _brute_prdc(real, fake, k):
    """Kynkaanniemi et al. / Naeem et al. by definition, one pair at a time."""
    d = lambda a, b: math.dist(a, b)  # noqa: E731
    radius = lambda p, pts: sorted(d(p, q) for q in pts)[k]  # index 0 is p itself  # noqa: E731
    real_r = [radius(r, real) for r in real]
    fake_r = [radius(f, fake) for f in fake]
    precision = sum(any(d(f, r) <= rr for r, rr in zip(real, real_r)) for f in fake) / len(fake)
    recall = sum(any(d(r, f) <= fr for f, fr in zip(fake, fake_r)) for r in real) / len(real)
    density = sum(d(f, r) <= rr for f in fake for r, rr in zip(real, real_r)) / (k * len(fake))
    coverage = sum(min(d(r, f) for f in fake) <= rr for r, rr in zip(real, real_r)) / len(real)
    return precision, recall, density, coverage


def test_prdc_by_hand_on_a_line():
    """Reals at 0..9 (k = 1: every ball has radius 1); fakes at 0.5 and 20. The fake at 0.5 lies in
    the balls of 0 and 1; the fake at 20 in none; each fake's ball has radius 19.5 and holds every real."""
    real = torch.arange(10.0)[:, None]
    fake = torch.tensor([[0.5], [20.0]])
    result = prdc(real, fake, k=1)
    assert (result.precision, result.recall, result.density, result.coverage) == (0.5, 1.0, 1.0, 0.2)


def test_prdc_matches_the_definitions_with_small_chunks(monkeypatch):
    monkeypatch.setattr(prdc_module, "CHUNK", 7)  # several chunks, and a ragged last one
    g = torch.Generator().manual_seed(3)
    real = torch.randn(40, 2, generator=g, dtype=torch.float64)
    fake = torch.randn(30, 2, generator=g, dtype=torch.float64) * 0.7 + 0.8
    result = prdc(real, fake, k=3)
    expected = _brute_prdc(real.tolist(), fake.tolist(), 3)
    assert (result.precision, result.recall, result.density, result.coverage) == pytest.approx(expected)
    assert knn_radii(real, 3).tolist() == pytest.approx([sorted(math.dist(p, q) for q in real.tolist())[3]
                                                         for p in real.tolist()])


def test_dropping_modes_lowers_recall_and_coverage_but_not_precision():
    """Two of four well-separated clusters removed from the fakes."""
    g = torch.Generator().manual_seed(4)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    cluster = lambda n, which: (centres[which].repeat_interleave(n, 0)  # noqa: E731
                                + torch.randn(n * len(which), 2, generator=g))
    real = cluster(100, [0, 1, 2, 3])
    full, dropped = prdc(real, cluster(100, [0, 1, 2, 3])), prdc(real, cluster(200, [0, 1]))
    assert full.recall > 0.9 and full.coverage > 0.8
    assert dropped.recall < 0.55 and dropped.coverage < 0.55
    assert dropped.precision > 0.9 and full.precision > 0.9


def test_prdc_against_subsets_averages_equal_sized_comparisons():
    g = torch.Generator().manual_seed(5)
    real, fake = torch.randn(400, 3, generator=g), torch.randn(50, 3, generator=g) * 0.8
    assert prdc_against_subsets(real[:40], fake) == prdc(real[:40], fake)  # no more reals than fakes: all of them
    averaged = prdc_against_subsets(real, fake, repeats=10, generator=torch.Generator().manual_seed(0))
    picks = torch.Generator().manual_seed(0)
    single = [prdc(real[torch.randperm(400, generator=picks)[:50]], fake) for _ in range(10)]
    assert averaged.precision == pytest.approx(sum(r.precision for r in single) / 10)
    assert averaged.coverage == pytest.approx(sum(r.coverage for r in single) / 10)
    assert averaged.recall == pytest.approx(sum(r.recall for r in single) / 10)  # uses the fakes' radii
    assert min(r.precision for r in single) < max(r.precision for r in single)  # one subset alone varies
