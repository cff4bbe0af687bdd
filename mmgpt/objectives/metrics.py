"""Metrics of the task types beyond single-label classification, as torchmetrics objects (one value each).

Regression metrics follow the MMSA toolkit's sentiment conventions (``MMSA/utils/metricsTop.py``,
``__eval_mosei_regression``), computed over the whole split:

- ``acc2`` / ``f1`` (negative vs non-negative): truth ``>= 0`` against prediction ``>= 0``, every sample;
- ``acc2_nonzero`` / ``f1_nonzero`` (negative vs positive): samples whose truth is exactly 0 are left out, then
  truth ``> 0`` against prediction ``> 0``;
- F1 is the support-weighted mean of the two classes' F1 (scikit-learn's ``average="weighted"``);
- ``acc5`` / ``acc7``: truth and prediction clipped to [-2, 2] / [-3, 3], rounded half to even (``np.round``), equal;
- ``mae`` and ``corr`` (Pearson) on the unclipped values.

Retrieval: ``R@K`` counts a query as a hit when fewer than K *other* candidates score at least as high as its
own match (ties count against the query, so a model that scores everything alike gets R@1 = 0, not 1).
The functional forms (:func:`accuracy`, :func:`mean_absolute_error`, :func:`pearson_corr`,
:func:`sentiment_binary`, :func:`sentiment_classes`, :func:`micro_f1`, :func:`binary_auroc`) compute each metric
over *weighted* samples: ``weights`` (R, N) says how often each sample is drawn in each of R resamples, so one
call scores every bootstrap replicate of the significance test (:mod:`mmgpt.report.significance`); without
weights (each sample once) they give the metric of the split, the value the metric objects log (the sentiment
objects call them; the others are checked against the torchmetrics objects in the tests).
Legend: N samples of the split, C classes / labels, E embedding dim, R resamples.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


def _cat(x: list[Tensor] | Tensor) -> Tensor:
    """A list state's tensors concatenated (after a sync torchmetrics holds one tensor already)."""
    if isinstance(x, Tensor):
        return x
    return torch.cat(x) if x else torch.zeros(0)


class _Collected(Metric):
    """Keeps every (prediction, target) of the split (gathered across processes) and computes one value at the end."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor) -> None:
        self.preds.append(preds.detach().float())
        self.target.append(target.detach().float())

    def _all(self) -> tuple[Tensor, Tensor]:
        return _cat(self.preds), _cat(self.target)


def _weights(n: int, weights: Tensor | None) -> Tensor:
    """``weights`` as float64 (R, N); None: every sample once (R = 1)."""
    return torch.ones(1, n, dtype=torch.float64) if weights is None else weights.double()


def _mean(values: Tensor, w: Tensor) -> Tensor:
    """The weighted mean (R,) of per-sample ``values`` (N,); NaN for a resample without samples."""
    total = w.sum(dim=1)
    return torch.where(total > 0, (w @ values.double()) / total.clamp(min=1e-300), torch.nan)


def weighted_binary_f1(pred: Tensor, truth: Tensor, weights: Tensor | None = None) -> Tensor:
    """F1 of each class (False, True) weighted by its support in ``truth``: scikit-learn's ``average="weighted"``
    for two labels (a class never predicted nor present scores 0). (R,) with ``weights`` (R, N), else a scalar."""
    w = _weights(len(truth), weights)
    total = w.sum(dim=1).clamp(min=1)
    out = torch.zeros(w.shape[0], dtype=torch.float64)
    for cls in (False, True):
        p, t = (pred == cls).double(), (truth == cls).double()
        tp, predicted, support = w @ (p * t), w @ p, w @ t
        f1 = torch.where(predicted + support > 0, 2 * tp / (predicted + support).clamp(min=1e-300), 0.0)
        out = out + f1 * support / total
    return out if weights is not None else out[0].float()


def accuracy(scores: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
    """Top-1 accuracy (R,) of (N, C) class scores against (N,) class indices."""
    return _mean((scores.argmax(dim=1) == target).double(), _weights(len(target), weights))


def mean_absolute_error(preds: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
    """MAE (R,) of (N,) predictions: the mean of the per-sample absolute errors."""
    return _mean((preds.double() - target.double()).abs(), _weights(len(target), weights))


def pearson_corr(preds: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
    """Pearson correlation (R,) of (N,) predictions and targets (NaN when either is constant)."""
    w = _weights(len(target), weights)
    x, y = preds.double(), target.double()
    mx, my = _mean(x, w), _mean(y, w)  # (R,)
    dx, dy = x[None] - mx[:, None], y[None] - my[:, None]  # (R, N): centred per resample
    cov, vx, vy = (w * dx * dy).sum(dim=1), (w * dx * dx).sum(dim=1), (w * dy * dy).sum(dim=1)
    return cov / (vx * vy).sqrt()


def sentiment_binary(preds: Tensor, target: Tensor, *, score: str = "acc", exclude_zero: bool = False,
                     weights: Tensor | None = None) -> Tensor:
    """MMSA's two-class sentiment accuracy or weighted F1 (R,) (see the module doc and :class:`SentimentBinary`)."""
    w = _weights(len(target), weights)
    if exclude_zero:
        w = w * (target != 0).double()
        pred, truth = preds > 0, target > 0
    else:
        pred, truth = preds >= 0, target >= 0
    if score == "acc":
        return _mean((pred == truth).double(), w)
    return torch.where(w.sum(dim=1) > 0, weighted_binary_f1(pred, truth, w), torch.nan)


def sentiment_classes(preds: Tensor, target: Tensor, *, num_classes: int = 7,
                      weights: Tensor | None = None) -> Tensor:
    """MMSA's Acc-5 / Acc-7 (R,): truth and prediction clipped to [-b, b], b = (num_classes - 1) / 2, rounded half
    to even, equal."""
    b = (num_classes - 1) / 2
    same = torch.round(preds.double().clamp(-b, b)) == torch.round(target.double().clamp(-b, b))
    return _mean(same.double(), _weights(len(target), weights))


def micro_f1(logits: Tensor, target: Tensor, *, threshold: float = 0.5, weights: Tensor | None = None) -> Tensor:
    """Multi-label micro F1 (R,) of (N, C) logits against multi-hot (N, C) targets: a label is predicted when
    sigmoid(logit) >= ``threshold``; 2 TP / (2 TP + FP + FN) over every (sample, label), 0 when all are 0."""
    w = _weights(len(target), weights)
    pred, truth = torch.sigmoid(logits.double()) >= threshold, target > 0.5  # (N, C)
    tp, fp, fn = (w @ (x.double().sum(dim=1)) for x in (pred & truth, pred & ~truth, ~pred & truth))
    denom = 2 * tp + fp + fn
    return torch.where(denom > 0, 2 * tp / denom.clamp(min=1e-300), 0.0)


def binary_auroc(positive: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
    """AUROC (R,) of (N,) scores of the positive class against (N,) 0/1 targets: the probability that a positive
    outscores a negative, ties counting one half (the area under the ROC curve); 0 without both classes."""
    w = _weights(len(target), weights)
    levels, group = torch.unique(positive.double(), return_inverse=True)  # ascending scores, tied ones together
    pos = torch.zeros(w.shape[0], len(levels), dtype=torch.float64)
    neg = torch.zeros_like(pos)
    y = (target > 0).double()
    pos.index_add_(1, group, w * y)  # (R, L): positives drawn at each score level
    neg.index_add_(1, group, w * (1 - y))
    below = neg.cumsum(dim=1) - neg  # negatives scored strictly lower
    pairs = pos.sum(dim=1) * neg.sum(dim=1)
    return torch.where(pairs > 0, (pos * (below + 0.5 * neg)).sum(dim=1) / pairs.clamp(min=1e-300), 0.0)


class PearsonCorr(_Collected):
    """Pearson correlation of (N,) predictions and targets over the whole split, in float64 (NaN when either is
    constant), as MMSA's ``np.corrcoef``. An update only keeps the batch (torchmetrics' ``PearsonCorrCoef`` merges
    running moments at every step, a few times the cost of a small model's other metric updates together)."""

    def compute(self) -> Tensor:
        preds, target = self._all()
        return pearson_corr(preds, target)[0].float()


class SentimentBinary(_Collected):
    """MMSA's two-class sentiment accuracy or weighted F1 of regression outputs (see the module doc).

    Args:
        score: ``acc`` or ``f1``.
        exclude_zero: False: negative vs non-negative (``Has0``); True: negative vs positive, truth 0 left out
            (``Non0``).
    """

    def __init__(self, *, score: str = "acc", exclude_zero: bool = False) -> None:
        super().__init__()
        if score not in ("acc", "f1"):
            raise ValueError(f"score={score!r}: expected acc or f1")
        self.score, self.exclude_zero = score, exclude_zero

    def compute(self) -> Tensor:
        preds, target = self._all()
        return sentiment_binary(preds, target, score=self.score, exclude_zero=self.exclude_zero)[0].float()


class SentimentClasses(_Collected):
    """MMSA's Acc-5 / Acc-7: clip truth and prediction to [-bound, bound], round half to even, compare.

    Args:
        num_classes: 5 (bound 2), 7 (bound 3), or any odd count (bound (num_classes - 1) / 2).
    """

    def __init__(self, *, num_classes: int = 7) -> None:
        super().__init__()
        if num_classes < 3 or num_classes % 2 == 0:
            raise ValueError(f"num_classes={num_classes}: expected an odd count >= 3")
        self.num_classes = num_classes

    def compute(self) -> Tensor:
        preds, target = self._all()
        return sentiment_classes(preds, target, num_classes=self.num_classes)[0].float()


class SamplesF1(_Collected):
    """Multi-label F1 per sample, averaged over samples (scikit-learn's ``average="samples"``; a sample with no
    true and no predicted label scores 0, as scikit-learn's default ``zero_division``).

    Args:
        threshold: a label is predicted when its probability (sigmoid of the logit) is at least this.
    """

    def __init__(self, *, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = threshold

    def compute(self) -> Tensor:
        logits, target = self._all()
        pred, truth = torch.sigmoid(logits) >= self.threshold, target > 0.5  # (N, C)
        tp = (pred & truth).sum(dim=1).float()
        denom = pred.sum(dim=1).float() + truth.sum(dim=1).float()
        return torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp)).mean()


def recall_at_k(scores: Tensor, k: int) -> Tensor:
    """R@K of a square score matrix (N queries x N candidates) whose diagonal holds each query's match.

    A hit: fewer than ``k`` other candidates score >= the match (ties count against the query).
    """
    own = scores.diagonal()[:, None]  # (N, 1)
    others = (scores >= own).sum(dim=1) - 1  # candidates other than the match scoring at least as high
    return (others < k).float().mean()


class RetrievalRecall(Metric):
    """Recall@K between two modalities' embeddings over the whole split, one direction.

    ``update(a, b)`` takes L2-normalised embeddings (B, E) of the same samples (rows with a missing modality
    already left out); ``compute`` ranks every b for every a (``a_to_b``) or the reverse.

    Args:
        k: K.
        direction: ``a_to_b`` or ``b_to_a``.
    """

    full_state_update = False

    def __init__(self, *, k: int, direction: str = "a_to_b") -> None:
        super().__init__()
        if direction not in ("a_to_b", "b_to_a"):
            raise ValueError(f"direction={direction!r}: expected a_to_b or b_to_a")
        self.k, self.direction = k, direction
        self.add_state("a", default=[], dist_reduce_fx="cat")
        self.add_state("b", default=[], dist_reduce_fx="cat")

    def update(self, a: Tensor, b: Tensor) -> None:
        self.a.append(a.detach().float())
        self.b.append(b.detach().float())

    def compute(self) -> Tensor:
        a, b = _cat(self.a), _cat(self.b)
        if len(a) == 0:
            return torch.tensor(float("nan"))
        scores = a @ b.t() if self.direction == "a_to_b" else b @ a.t()  # (N, N)
        return recall_at_k(scores, self.k)
