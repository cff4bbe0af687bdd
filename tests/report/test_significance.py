"""The significance test: identical predictions are indistinguishable, a clearly better model is not, Holm; on
every task's ranking metric (MAE, MMSA's sentiment metrics, micro F1, AUROC), the same metric the task logs."""

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy

from mmgpt.objectives.tasks import Binary, MultiLabel, Regression
from mmgpt.report.significance import (
    SAMPLE_METRICS,
    RunPredictions,
    bootstrap_difference,
    holm,
    pairwise,
    sample_metrics,
)


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


# --- every task's ranking metric, not only accuracy -------------------------------------------------------------

def regression_runs(noise: float, seeds: int = 3, n: int = 300, base_seed: int = 0, bias: float = 0.0):
    """Sentiment-like runs: targets in [-3, 3] (a tenth of them 0), predictions = target + N(bias, noise), saved as
    the (N, 1) logits a regression head writes."""
    labels = np.round(np.random.default_rng(321).uniform(-3, 3, n) * 3) / 3
    labels[: n // 10] = 0.0
    out = {}
    for s in range(seeds):
        pred = labels + np.random.default_rng(base_seed + s).normal(bias, noise, n)
        out[s] = RunPredictions(np.arange(n), labels.astype(np.float32), pred[:, None].astype(np.float32))
    return out


def test_regression_bootstrap_finds_a_real_mae_difference() -> None:
    mae = SAMPLE_METRICS["mae"]
    good, bad = regression_runs(0.5), regression_runs(1.0, base_seed=10)
    d = bootstrap_difference(good, bad, mae, n_boot=300)
    by_hand = np.mean([np.abs(good[s].scores[:, 0] - good[s].labels).mean()
                       - np.abs(bad[s].scores[:, 0] - bad[s].labels).mean() for s in range(3)])
    assert d.diff == pytest.approx(by_hand) and d.diff < -0.3  # mae(a) - mae(b): negative, a is better
    assert d.p_value < 0.05 and d.high < 0
    same = bootstrap_difference(good, {s: RunPredictions(r.ids, r.labels, r.scores.copy()) for s, r in good.items()},
                                mae, n_boot=300)
    assert same.diff == 0.0 and same.p_value == 1.0 and same.low == same.high == 0.0


def test_a_small_mae_difference_over_three_seeds_is_not_distinguishable() -> None:
    d = bootstrap_difference(regression_runs(0.80), regression_runs(0.81, base_seed=10), SAMPLE_METRICS["mae"],
                             n_boot=300)
    assert d.p_value > 0.05 and d.low < 0 < d.high


def _logged(metric: torch.nn.Module, preds: torch.Tensor, target: torch.Tensor) -> float:
    metric.update(preds, target)
    return float(metric.compute())


def _task_examples():
    """(metric name, labels, saved values, the task's own metric object fed as its objective feeds it)."""
    rng = np.random.default_rng(0)
    n = 120
    truth = (np.round(rng.uniform(-3.4, 3.4, n) * 3) / 3).astype(np.float32)
    truth[:12] = 0.0
    pred = (truth + rng.normal(0, 1.0, n)).astype(np.float32)
    regression = Regression(num_classes=1).make_metrics()
    for name, metric in regression.items():
        yield name, truth, pred[:, None], metric, lambda v: torch.from_numpy(v[:, 0])
    multi = (rng.random((n, 5)) < 0.3).astype(np.int64)
    logits = (rng.normal(0, 2.0, (n, 5)) + 1.5 * multi).astype(np.float32)
    yield "f1_micro", multi, logits, MultiLabel(num_classes=5).make_metrics()["f1_micro"], torch.from_numpy
    binary = rng.integers(0, 2, n)
    p1 = np.round(np.clip(0.5 + 0.3 * (binary - 0.5) + rng.normal(0, 0.25, n), 0.01, 0.99), 1)  # ties
    scores = np.stack([1 - p1, p1], axis=1).astype(np.float32)
    yield "auroc", binary, scores, Binary().make_metrics()["auroc"], lambda v: torch.from_numpy(v[:, 1])
    classes = rng.integers(0, 4, n)
    class_scores = rng.random((n, 4)).astype(np.float32)
    yield "acc", classes, class_scores, MulticlassAccuracy(4, average="micro"), torch.from_numpy


@pytest.mark.parametrize("example", list(_task_examples()), ids=lambda e: e[0])
def test_the_tested_metric_is_the_metric_the_task_logs(example) -> None:
    """On the same arrays, the per-sample form gives what the task's objective logs (and the report ranks by),
    on the whole split and on a resample (the weights of a draw == the metric on the drawn samples)."""
    name, labels, values, logged, feed = example
    assert set(SAMPLE_METRICS) >= set(Regression(num_classes=1).make_metrics()) | {"f1_micro", "auroc", "acc"}
    ours = SAMPLE_METRICS[name]
    assert ours(labels, values)[0] == pytest.approx(_logged(logged, feed(values), torch.from_numpy(labels)), abs=1e-5)
    idx = np.random.default_rng(1).integers(0, len(labels), (2, len(labels)))
    weights = np.stack([np.bincount(i, minlength=len(labels)) for i in idx]).astype(np.float64)
    for k in range(2):
        logged.reset()
        drawn = _logged(logged, feed(values[idx[k]]), torch.from_numpy(labels[idx[k]]))
        assert ours(labels, values, weights)[k] == pytest.approx(drawn, abs=1e-5), name


def test_regression_metrics_of_the_test_match_mmsa() -> None:
    from tests.objectives.test_task_metrics import _mmsa_metrics

    reference = _mmsa_metrics()
    rng = np.random.default_rng(2)
    truth = (np.round(rng.uniform(-3.5, 3.5, 200) * 3) / 3).astype(np.float32)
    truth[:20] = 0.0
    pred = (truth + rng.normal(0, 1.0, 200)).astype(np.float32)
    ref = reference(torch.from_numpy(pred), torch.from_numpy(truth))
    for ours, theirs in {"mae": "MAE", "corr": "Corr", "acc2": "Has0_acc_2", "f1": "Has0_F1_score",
                         "acc2_nonzero": "Non0_acc_2", "f1_nonzero": "Non0_F1_score", "acc5": "Mult_acc_5",
                         "acc7": "Mult_acc_7"}.items():
        assert SAMPLE_METRICS[ours](truth, pred[:, None])[0] == pytest.approx(ref[theirs], abs=1e-4), ours


def test_the_multilabel_threshold_is_the_tasks() -> None:
    logits = np.array([[2.0, -2.0], [2.0, 2.0]], dtype=np.float32)  # sigmoid(2) = 0.88
    labels = np.array([[1, 0], [1, 1]])
    assert sample_metrics(0.5)["f1_micro"](labels, logits)[0] == 1.0
    assert sample_metrics(0.9)["f1_micro"](labels, logits)[0] == 0.0
