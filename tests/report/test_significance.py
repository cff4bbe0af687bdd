"""The significance test: identical predictions are indistinguishable, a clearly better model is not, Holm."""

import numpy as np
import pytest

from mmgpt.report.significance import RunPredictions, bootstrap_difference, holm, pairwise


def runs(correct_rate: float, seeds: int = 3, n: int = 300, classes: int = 4, base_seed: int = 0):
    """Runs whose argmax is right on about ``correct_rate`` of the samples (different samples per seed)."""
    labels = np.random.default_rng(123).integers(0, classes, n)
    out = {}
    for s in range(seeds):
        rng = np.random.default_rng(base_seed + s)
        scores = rng.random((n, classes))
        right = rng.random(n) < correct_rate
        scores[np.arange(n), labels] = np.where(right, 2.0, -1.0)
        out[s] = RunPredictions(np.arange(n), labels, scores)
    return out


def test_identical_predictions_have_p_value_one():
    a = runs(0.7)
    d = bootstrap_difference(a, {s: RunPredictions(r.ids, r.labels, r.scores.copy()) for s, r in a.items()},
                             n_boot=300)
    assert d.diff == 0.0 and d.p_value == 1.0 and d.low == d.high == 0.0  # paired: every replicate is 0


def test_a_clearly_better_model_has_a_small_p_value():
    d = bootstrap_difference(runs(0.9), runs(0.5, base_seed=10), n_boot=300)
    assert d.diff > 0.3 and d.p_value < 0.01 and d.low > 0


def test_a_small_difference_over_three_seeds_is_not_distinguishable():
    d = bootstrap_difference(runs(0.71), runs(0.70, base_seed=10), n_boot=300)
    assert d.p_value > 0.05 and d.low < 0 < d.high


def test_samples_are_paired_by_id_whatever_their_order():
    a = runs(0.8)
    shuffled = {}
    for s, r in a.items():
        perm = np.random.default_rng(5).permutation(len(r.ids))
        shuffled[s] = RunPredictions(r.ids[perm], r.labels[perm], r.scores[perm])
    b = runs(0.6, base_seed=7)
    b_shuffled = {s: RunPredictions(r.ids[::-1], r.labels[::-1], r.scores[::-1]) for s, r in b.items()}
    x, y = bootstrap_difference(shuffled, b_shuffled, n_boot=100), bootstrap_difference(a, b, n_boot=100)
    assert (x.diff, x.low, x.high, x.p_value) == (y.diff, y.low, y.high, y.p_value)
    with pytest.raises(ValueError, match="missing"):
        bootstrap_difference(a, {s: RunPredictions(r.ids + 1000, r.labels, r.scores) for s, r in a.items()},
                             n_boot=10)
    with pytest.raises(ValueError, match="no seed in common"):
        bootstrap_difference(a, {7: a[0]}, n_boot=10)


def test_holm_by_hand():
    # sorted: 0.01 * 3 = 0.03; 0.02 * 2 = 0.04; 0.04 * 1 = 0.04 (monotone)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_pairwise_adjusts_every_pair():
    diffs = pairwise({"early": runs(0.9), "late": runs(0.5, base_seed=10), "cross": runs(0.9, base_seed=20)},
                     n_boot=200)
    assert [(d.a, d.b) for d in diffs] == [("cross", "early"), ("cross", "late"), ("early", "late")]
    assert all(d.p_holm >= d.p_value for d in diffs)
    assert not diffs[0].distinguishable() and diffs[1].distinguishable() and diffs[2].distinguishable()
