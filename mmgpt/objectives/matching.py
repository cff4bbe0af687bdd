"""Media-text matching with counterfactual negatives: tell consistent samples from ones with a swapped modality.

Legend: B batch, D dim.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import BinaryAccuracy

from mmgpt.batch import MultimodalBatch
from mmgpt.model import MultimodalTransformer
from mmgpt.objectives.base import Objective, ObjectiveOutput, source_batch


def counterfactual(
    batch: MultimodalBatch, modalities: Sequence[str], generator: torch.Generator | None = None
) -> tuple[MultimodalBatch, Tensor]:
    """Half of the samples get one of ``modalities`` swapped in from another sample (a counterfactual).

    Returns:
        the altered batch and (B,) float labels: 1 = consistent, 0 = altered.
    """
    B = batch.batch_size
    donor = (torch.arange(B) + 1 + torch.randint(0, max(B - 1, 1), (B,), generator=generator)) % B  # never itself
    alter = torch.rand(B, generator=generator) < 0.5
    which = torch.randint(0, len(modalities), (B,), generator=generator)
    inputs, masks, present = dict(batch.inputs), dict(batch.masks), dict(batch.present)
    for j, m in enumerate(modalities):
        rows = (alter & (which == j)).to(batch.device)
        d = donor.to(batch.device)
        sel = rows.view(-1, *([1] * (inputs[m].dim() - 1)))
        inputs[m] = torch.where(sel, inputs[m][d], inputs[m])
        if m in masks:
            masks[m] = torch.where(rows[:, None], masks[m][d], masks[m])
        present[m] = torch.where(rows, batch.presence(m)[d], batch.presence(m))
    labels = (~alter).float().to(batch.device)
    return replace(batch, inputs=inputs, masks=masks, present=present), labels


class Matching(Objective):
    """Binary "does the text fit the media?" from the fused pooled vector (ITM/ATM with counterfactual negatives).

    Args:
        dim: width D.
        modalities: the modalities that may be swapped for a counterfactual (image, audio).
        weight: weight in the total loss.
        source: the text the media must fit: ``"caption"`` (describes the media) or ``"text"``.
        max_length: token limit when encoding captions.
    """

    def __init__(
        self,
        dim: int,
        modalities: Sequence[str] = ("audio", "image"),
        weight: float = 1.0,
        source: str = "caption",
        max_length: int = 64,
    ) -> None:
        super().__init__(weight)
        self.modalities = tuple(sorted(modalities))
        self.source = source
        self.max_length = max_length
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 1))

    def score(self, net: MultimodalTransformer, batch: MultimodalBatch) -> Tensor:
        """(B,) logits of "consistent"."""
        fused = net.fuse(net.encode(batch))
        return self.head(fused.average_members(fused.pooled)).squeeze(-1)  # (B,)

    def forward(self, net: MultimodalTransformer, batch: MultimodalBatch) -> ObjectiveOutput:
        batch = source_batch(net, batch, self.source, self.max_length)
        altered, labels = counterfactual(batch, self.modalities)
        logits = self.score(net, altered)
        return ObjectiveOutput(loss=F.binary_cross_entropy_with_logits(logits.float(), labels), preds=logits.sigmoid(),
                               target=labels.long())

    def make_metrics(self) -> nn.ModuleDict:
        return nn.ModuleDict({"match_acc": BinaryAccuracy()})
