"""Task types beyond single-label classification, each an objective on the head's outputs with its metrics.

- :class:`Regression`: one output per sample (the head sized to one "class", the target's name), L1 or MSE
  loss against float labels (B,); MAE, Pearson correlation and the sentiment conventions (Acc-2 both ways, F1
  both ways, Acc-5, Acc-7; :mod:`mmgpt.objectives.metrics`).
- :class:`MultiLabel`: one logit per label, BCE against multi-hot labels (B, C); micro / macro / weighted /
  samples F1 at a decision threshold, and mAP.
- :class:`Binary`: two classes, cross-entropy; AUROC of the positive class's probability, and accuracy.

Every objective says which of its metrics ranks runs and in which direction (:attr:`Objective.primary`).
Legend: B batch, C classes / labels.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanAbsoluteError
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    MultilabelAveragePrecision,
    MultilabelF1Score,
)

from mmgpt.batch import MultimodalBatch
from mmgpt.errors import UserError
from mmgpt.model import MultimodalTransformer
from mmgpt.objectives.base import Objective, ObjectiveOutput
from mmgpt.objectives.metrics import PearsonCorr, SamplesF1, SentimentBinary, SentimentClasses


def _labels(batch: MultimodalBatch, objective: str):  # noqa: ANN202 (Tensor)
    if batch.labels is None:
        raise ValueError(f"the {objective} objective needs labelled batches")
    return batch.labels


class Regression(Objective):
    """L1 or MSE between the head's single output and float targets.

    Args:
        num_classes: the head's outputs (filled in by the LightningModule; must be 1: declare one target).
        loss: ``l1`` (MMSA's choice for MOSI/MOSEI) or ``mse``.
        weight: weight in the total loss.
        sentiment: also log MMSA's sentiment metrics (Acc-2, F1, Acc-5, Acc-7), for targets in [-3, 3].
    """

    uses_head = True
    primary = ("mae", "min")

    def __init__(self, num_classes: int = 1, loss: str = "l1", weight: float = 1.0, sentiment: bool = True) -> None:
        super().__init__(weight)
        if num_classes != 1:
            raise UserError(f"task=regression predicts one value per sample, but the data has {num_classes} classes: "
                            "regression needs float labels (data.label_type=float)")
        if loss not in ("l1", "mse"):
            raise UserError(f"model.module.objectives.regress.loss={loss!r}: expected l1 or mse")
        self.loss, self.sentiment = loss, sentiment

    def forward(self, net: MultimodalTransformer, batch: MultimodalBatch) -> ObjectiveOutput:
        target = _labels(batch, "regression").float()
        pred = net(batch).logits.float()[:, 0]  # (B,)
        loss = F.l1_loss(pred, target) if self.loss == "l1" else F.mse_loss(pred, target)
        return ObjectiveOutput(loss=loss, preds=pred, target=target)

    def make_metrics(self) -> nn.ModuleDict:
        metrics: dict[str, nn.Module] = {"mae": MeanAbsoluteError(), "corr": PearsonCorr()}
        if self.sentiment:
            metrics.update({
                "acc2": SentimentBinary(score="acc"), "f1": SentimentBinary(score="f1"),
                "acc2_nonzero": SentimentBinary(score="acc", exclude_zero=True),
                "f1_nonzero": SentimentBinary(score="f1", exclude_zero=True),
                "acc5": SentimentClasses(num_classes=5), "acc7": SentimentClasses(num_classes=7),
            })
        return nn.ModuleDict(metrics)


class MultiLabel(Objective):
    """Binary cross-entropy of one logit per label against multi-hot targets.

    Args:
        num_classes: the number of labels C (filled in by the LightningModule).
        weight: weight in the total loss.
        threshold: a label is predicted when its probability is at least this (the F1 scores).
        pos_weight: optional weight of positive examples (one float for every label), for rare labels.
    """

    uses_head = True
    primary = ("f1_micro", "max")

    def __init__(self, num_classes: int, weight: float = 1.0, threshold: float = 0.5,
                 pos_weight: float | None = None) -> None:
        super().__init__(weight)
        if not 0.0 < threshold < 1.0:
            raise UserError(f"threshold={threshold}: expected a probability in (0, 1)")
        self.num_classes, self.threshold, self.pos_weight = num_classes, threshold, pos_weight

    def forward(self, net: MultimodalTransformer, batch: MultimodalBatch) -> ObjectiveOutput:
        target = _labels(batch, "multilabel").float()
        logits = net(batch).logits.float()  # (B, C)
        if target.shape != logits.shape:
            raise ValueError(f"multilabel targets of shape {tuple(target.shape)} for logits {tuple(logits.shape)} "
                             "(the data must give multi-hot labels: data.label_type=multilabel)")
        pos = None if self.pos_weight is None else logits.new_full((logits.shape[1],), float(self.pos_weight))
        loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos)
        return ObjectiveOutput(loss=loss, preds=logits, target=target.long())

    def make_metrics(self) -> nn.ModuleDict:
        C, t = self.num_classes, self.threshold
        # torchmetrics applies the sigmoid to logits itself (values outside [0, 1])
        f1 = {f"f1_{avg}": MultilabelF1Score(C, threshold=t, average=avg, validate_args=False)
              for avg in ("micro", "macro", "weighted")}
        return nn.ModuleDict({**f1, "f1_samples": SamplesF1(threshold=t),
                              "map": MultilabelAveragePrecision(C, average="macro", validate_args=False)})


class Binary(Objective):
    """Two classes: cross-entropy on the head's two logits; AUROC of P(class 1) and accuracy.

    Args:
        num_classes: must be 2 (filled in by the LightningModule).
        weight: weight in the total loss.
        label_smoothing: cross-entropy label smoothing.
    """

    uses_head = True
    primary = ("auroc", "max")

    def __init__(self, num_classes: int = 2, weight: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__(weight)
        if num_classes != 2:
            raise UserError(f"task=binary needs exactly 2 classes, the data has {num_classes}")
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def forward(self, net: MultimodalTransformer, batch: MultimodalBatch) -> ObjectiveOutput:
        target = _labels(batch, "binary")
        logits = net(batch).logits  # (B, 2)
        return ObjectiveOutput(loss=self.criterion(logits.float(), target), preds=logits, target=target)

    def update(self, metrics: nn.ModuleDict, out: ObjectiveOutput) -> None:
        assert out.preds is not None
        positive = out.preds.detach().float().softmax(dim=-1)[:, 1]  # (B,) P(class 1)
        for metric in metrics.values():
            metric.update(positive, out.target)

    def make_metrics(self) -> nn.ModuleDict:
        return nn.ModuleDict({"auroc": BinaryAUROC(validate_args=False), "acc": BinaryAccuracy(validate_args=False)})
