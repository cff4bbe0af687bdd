"""Classification: cross-entropy of the head's logits against the labels."""

from __future__ import annotations

from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from mmgpt.batch import MultimodalBatch
from mmgpt.model import MultimodalTransformer
from mmgpt.objectives.base import Objective, ObjectiveOutput


class Classification(Objective):
    """Cross-entropy on the labels; metrics ``acc`` (micro) and ``f1`` (macro).

    Args:
        num_classes: number of classes C (filled in by the LightningModule).
        weight: weight in the total loss.
        label_smoothing: cross-entropy label smoothing.
    """

    uses_head = True
    primary = ("acc", "max")

    def __init__(self, num_classes: int, weight: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__(weight)
        self.num_classes = num_classes
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def forward(self, net: MultimodalTransformer, batch: MultimodalBatch) -> ObjectiveOutput:
        if batch.labels is None:
            raise ValueError("the classify objective needs labelled batches")
        logits = net(batch).logits  # (B, C)
        return ObjectiveOutput(loss=self.criterion(logits.float(), batch.labels), preds=logits, target=batch.labels)

    def make_metrics(self) -> nn.ModuleDict:
        return nn.ModuleDict(
            {
                # validate_args=False: the inputs are ours; the checks read tensors back to the host every update
                "acc": MulticlassAccuracy(self.num_classes, average="micro", validate_args=False),
                "f1": MulticlassF1Score(self.num_classes, average="macro", validate_args=False),
            }
        )
