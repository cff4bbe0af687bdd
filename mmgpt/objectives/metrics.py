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
Legend: N samples of the split, C classes / labels, E embedding dim.
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


def weighted_binary_f1(pred: Tensor, truth: Tensor) -> Tensor:
    """F1 of each class (False, True) weighted by its support in ``truth``: scikit-learn's ``average="weighted"``
    for two labels (a class never predicted nor present scores 0)."""
    out = torch.zeros((), dtype=torch.float64)
    for cls in (False, True):
        p, t = pred == cls, truth == cls
        tp = (p & t).sum().double()
        denom = p.sum().double() + t.sum().double()
        f1 = 2 * tp / denom if denom > 0 else torch.zeros((), dtype=torch.float64)
        out = out + f1 * t.sum().double() / max(len(truth), 1)
    return out.float()


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
        if self.exclude_zero:
            keep = target != 0
            pred, truth = preds[keep] > 0, target[keep] > 0
        else:
            pred, truth = preds >= 0, target >= 0
        if len(truth) == 0:
            return torch.tensor(float("nan"))
        if self.score == "acc":
            return (pred == truth).float().mean()
        return weighted_binary_f1(pred, truth)


class SentimentClasses(_Collected):
    """MMSA's Acc-5 / Acc-7: clip truth and prediction to [-bound, bound], round half to even, compare.

    Args:
        num_classes: 5 (bound 2), 7 (bound 3), or any odd count (bound (num_classes - 1) / 2).
    """

    def __init__(self, *, num_classes: int = 7) -> None:
        super().__init__()
        if num_classes < 3 or num_classes % 2 == 0:
            raise ValueError(f"num_classes={num_classes}: expected an odd count >= 3")
        self.bound = (num_classes - 1) / 2

    def compute(self) -> Tensor:
        preds, target = self._all()
        b = self.bound
        return (torch.round(preds.clamp(-b, b)) == torch.round(target.clamp(-b, b))).float().mean()


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
