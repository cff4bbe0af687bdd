"""The task types' metrics against values computed by hand on small examples (and against MMSA where installed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from mmgpt.objectives.metrics import RetrievalRecall, SamplesF1, SentimentBinary, SentimentClasses, recall_at_k
from mmgpt.objectives.tasks import Binary, MultiLabel, Regression

# Sentiment example: zeros in the truth, a prediction of exactly 0, values beyond +-3, halves (rounded to even).
TRUTH = torch.tensor([-3.4, -1.0, 0.0, 0.0, 0.5, 2.5, 1.49])
PRED = torch.tensor([-2.6, 0.2, 0.0, -0.4, 1.0, 3.7, 1.51])


def _value(metric: torch.nn.Module, preds: torch.Tensor, target: torch.Tensor) -> float:
    metric.update(preds, target)
    return float(metric.compute())


def test_acc2_both_conventions() -> None:
    # negative vs non-negative: truth>=0 FFTTTTT, pred>=0 FTTFTTT -> 5 of 7 agree
    assert _value(SentimentBinary(score="acc"), PRED, TRUTH) == pytest.approx(5 / 7)
    # negative vs positive, truth 0 left out (samples 2, 3): truth>0 FFTTT, pred>0 FTTTT -> 4 of 5
    assert _value(SentimentBinary(score="acc", exclude_zero=True), PRED, TRUTH) == pytest.approx(4 / 5)


def test_f1_both_conventions_weighted_by_support() -> None:
    # Has0: class F: support 2, predicted 2, tp 1 -> 0.5; class T: support 5, predicted 5, tp 4 -> 0.8
    assert _value(SentimentBinary(score="f1"), PRED, TRUTH) == pytest.approx((2 * 0.5 + 5 * 0.8) / 7)
    # Non0: class F: support 2, predicted 1, tp 1 -> 2/3; class T: support 3, predicted 4, tp 3 -> 6/7
    assert _value(SentimentBinary(score="f1", exclude_zero=True), PRED, TRUTH) == pytest.approx(
        (2 * 2 / 3 + 3 * 6 / 7) / 5)


def test_acc7_and_acc5_clip_then_round_half_to_even() -> None:
    # [-3,3]: truth -> -3 -1 0 0 0(0.5) 2(2.5) 1; pred -> -3(-2.6) 0 0 0(-0.4) 1 3(3.7 clipped) 2(1.51): 3 agree
    assert _value(SentimentClasses(num_classes=7), PRED, TRUTH) == pytest.approx(3 / 7)
    # [-2,2]: truth -> -2 -1 0 0 0 2 1; pred -> -2 0 0 0 1 2 2: 4 agree
    assert _value(SentimentClasses(num_classes=5), PRED, TRUTH) == pytest.approx(4 / 7)


def test_regression_objective_logs_mae_corr_and_the_sentiment_metrics() -> None:
    metrics = Regression(num_classes=1).make_metrics()
    for m in metrics.values():
        m.update(PRED, TRUTH)
    got = {k: float(m.compute()) for k, m in metrics.items()}
    assert got["mae"] == pytest.approx((0.8 + 1.2 + 0 + 0.4 + 0.5 + 1.2 + 0.02) / 7, abs=1e-6)
    assert got["corr"] == pytest.approx(np.corrcoef(PRED.numpy(), TRUTH.numpy())[0, 1], abs=1e-5)
    assert got["acc2"] == pytest.approx(5 / 7) and got["acc7"] == pytest.approx(3 / 7)
    assert set(got) == {"mae", "corr", "acc2", "f1", "acc2_nonzero", "f1_nonzero", "acc5", "acc7"}
    with pytest.raises(ValueError, match="one value per sample"):
        Regression(num_classes=3)


def test_sentiment_metrics_accumulate_over_batches() -> None:
    one, two = SentimentBinary(score="f1"), SentimentBinary(score="f1")
    one.update(PRED, TRUTH)
    two.update(PRED[:3], TRUTH[:3])
    two.update(PRED[3:], TRUTH[3:])
    assert float(one.compute()) == pytest.approx(float(two.compute()))


# Multi-label example: 4 samples x 3 labels; logit >= 0 <=> predicted at threshold 0.5.
ML_TRUTH = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
ML_LOGITS = torch.tensor([[2.0, -2.0, -2.0], [-2.0, 2.0, 2.0], [2.0, -2.0, -2.0], [-2.0, -2.0, 2.0]])


def test_multilabel_micro_macro_weighted_samples_f1() -> None:
    metrics = MultiLabel(num_classes=3).make_metrics()
    for m in metrics.values():
        m.update(ML_LOGITS, ML_TRUTH)
    got = {k: float(m.compute()) for k, m in metrics.items()}
    # per label: L0 tp2 fp0 fn0 -> 1; L1 tp1 fp0 fn1 -> 2/3; L2 tp0 fp2 fn1 -> 0
    assert got["f1_micro"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 2))  # tp 3, fp 2, fn 2
    assert got["f1_macro"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert got["f1_weighted"] == pytest.approx((2 * 1 + 2 * 2 / 3 + 1 * 0) / 5)  # supports 2, 2, 1
    assert got["f1_samples"] == pytest.approx((2 / 3 + 2 / 3 + 2 / 3 + 0) / 4)  # the empty sample scores 0


def test_multilabel_threshold_and_map() -> None:
    loose, strict = SamplesF1(threshold=0.5), SamplesF1(threshold=0.9)  # sigmoid(2) = 0.88 < 0.9
    assert _value(loose, ML_LOGITS, ML_TRUTH) > 0 and _value(strict, ML_LOGITS, ML_TRUTH) == 0.0
    ap = MultiLabel(num_classes=2).make_metrics()["map"]
    # label 0: scores .9(+) .8(-) .3(+) .1(-) -> AP = (1 + 2/3) / 2; label 1 ranked perfectly -> 1
    scores = torch.tensor([[0.9, 0.9], [0.8, 0.1], [0.3, 0.8], [0.1, 0.2]]).logit()
    ap.update(scores, torch.tensor([[1, 1], [0, 0], [1, 1], [0, 0]]))
    assert float(ap.compute()) == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)


def test_binary_auroc_and_accuracy_from_two_logits() -> None:
    objective = Binary(num_classes=2)
    metrics = objective.make_metrics()
    p1 = torch.tensor([0.1, 0.4, 0.35, 0.8])  # P(class 1); truth 0 0 1 1 -> 3 of 4 pairs ordered: AUROC 0.75
    logits = torch.stack([torch.zeros(4), (p1 / (1 - p1)).log()], dim=1)  # softmax(...)[:, 1] == p1
    from mmgpt.objectives.base import ObjectiveOutput

    objective.update(metrics, ObjectiveOutput(loss=torch.zeros(()), preds=logits, target=torch.tensor([0, 0, 1, 1])))
    assert float(metrics["auroc"].compute()) == pytest.approx(0.75)
    assert float(metrics["acc"].compute()) == pytest.approx(0.75)  # predicted 0 0 0 1: only 0.35 (< 0.5) wrong
    with pytest.raises(ValueError, match="exactly 2 classes"):
        Binary(num_classes=3)


def test_recall_at_k_counts_ties_against_the_query() -> None:
    scores = torch.tensor([[0.5, 0.5, 0.1],   # a tie with another candidate: rank 2
                           [0.2, 0.9, 0.3],   # rank 1
                           [0.7, 0.1, 0.6]])  # one above: rank 2
    assert float(recall_at_k(scores, 1)) == pytest.approx(1 / 3)
    assert float(recall_at_k(scores, 2)) == pytest.approx(1.0)
    assert float(recall_at_k(torch.ones(4, 4), 1)) == 0.0  # everything alike: no hit, not all hits
    assert float(recall_at_k(torch.ones(4, 4), 4)) == 1.0


def test_retrieval_recall_both_directions() -> None:
    a = torch.eye(3)
    b = torch.tensor([[1.0, 0, 0], [0, 0, 1], [0, 1, 0]])  # samples 1 and 2 swapped
    b[1] = torch.tensor([0.0, 0.8, 0.6])  # b1 still closest to a1 from a's side
    ab, ba = RetrievalRecall(k=1, direction="a_to_b"), RetrievalRecall(k=1, direction="b_to_a")
    for m in (ab, ba):
        m.update(a[:2], b[:2])
        m.update(a[2:], b[2:])
    # a->b: a0->b0 hit; a1 scores b1 .8, b2 1.0 -> miss; a2 scores b1 .6, b2 0 -> miss
    assert float(ab.compute()) == pytest.approx(1 / 3)
    # b->a: b0->a0 hit; b1 scores a1 .8 a2 .6 -> hit; b2 scores a1 1, a2 0 -> miss
    assert float(ba.compute()) == pytest.approx(2 / 3)


def _mmsa_metrics():  # noqa: ANN202
    """MMSA's MetricsTop, loaded from the installed ``mmsa`` package's file (its package init needs a GPU stack)."""
    pytest.importorskip("sklearn")
    spec = importlib.util.find_spec("MMSA")
    if spec is None or spec.submodule_search_locations is None:
        pytest.skip("mmsa is not installed (pip install mmsa scikit-learn to run this check)")
    path = Path(next(iter(spec.submodule_search_locations))) / "utils" / "metricsTop.py"
    module_spec = importlib.util.spec_from_file_location("mmsa_metrics_top", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.MetricsTop("regression").getMetics("MOSEI")


def test_regression_metrics_match_mmsa() -> None:
    reference = _mmsa_metrics()
    rng = np.random.default_rng(0)
    truth = torch.tensor(np.round(rng.uniform(-3.5, 3.5, 200) * 3) / 3, dtype=torch.float32)
    truth[:20] = 0.0
    pred = truth + torch.tensor(rng.normal(0, 1.0, 200), dtype=torch.float32)
    ref = reference(pred, truth)
    metrics = Regression(num_classes=1).make_metrics()
    for m in metrics.values():
        m.update(pred, truth)
    ours = {k: float(m.compute()) for k, m in metrics.items()}
    pairs = {"acc2": "Has0_acc_2", "f1": "Has0_F1_score", "acc2_nonzero": "Non0_acc_2", "f1_nonzero": "Non0_F1_score",
             "acc5": "Mult_acc_5", "acc7": "Mult_acc_7", "mae": "MAE", "corr": "Corr"}
    for ours_key, ref_key in pairs.items():
        assert ours[ours_key] == pytest.approx(ref[ref_key], abs=1e-4), ours_key  # MMSA rounds to 4 places


def test_corr_over_batches_is_torchmetrics_pearson_and_numpys() -> None:
    from torchmetrics import PearsonCorrCoef

    from mmgpt.objectives.metrics import PearsonCorr

    g = torch.Generator().manual_seed(0)
    target = torch.randn(300, generator=g)
    preds = 0.3 * target + torch.randn(300, generator=g)
    ours, theirs = PearsonCorr(), PearsonCorrCoef()
    for lo in range(0, 300, 64):  # several steps' batches
        ours.update(preds[lo:lo + 64], target[lo:lo + 64])
        theirs.update(preds[lo:lo + 64], target[lo:lo + 64])
    expected = np.corrcoef(preds.double().numpy(), target.double().numpy())[0, 1]
    assert float(ours.compute()) == pytest.approx(expected, abs=1e-6)
    assert float(ours.compute()) == pytest.approx(float(theirs.compute()), abs=1e-5)
    constant = PearsonCorr()
    constant.update(torch.zeros(5), target[:5])
    assert torch.isnan(constant.compute())
