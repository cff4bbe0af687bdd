"""The objective interface: (network, batch) -> a loss plus what its metrics need."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from torch import Tensor, nn

from mmgpt.batch import MultimodalBatch
from mmgpt.model import MultimodalTransformer
from mmgpt.tokenizer import Tokenizer


@dataclass
class ObjectiveOutput:
    """Attributes:
    loss: scalar loss of this objective (unweighted).
    preds: what the objective's metrics are updated with (e.g. logits), or None.
    target: the matching targets, or None.
    values: extra scalars to log under ``<split>/<name>`` (e.g. a learned temperature).
    extras: tensors an objective's own :meth:`Objective.update` reads (e.g. embeddings for retrieval metrics).
    """

    loss: Tensor
    preds: Tensor | None = None
    target: Tensor | None = None
    values: dict[str, Tensor] = field(default_factory=dict)
    extras: dict[str, Tensor] = field(default_factory=dict)


class Objective(nn.Module, ABC):
    """One training objective. Objectives are composed with weights by the LightningModule.

    Args:
        weight: this objective's weight in the total loss.
    """

    #: Whether the loss goes through the network's classification head (when no objective does, the module
    #: freezes the head so DDP sees no parameter without a gradient).
    uses_head: bool = False
    #: The metric that ranks runs of this objective (checkpoints, early stopping, mmgpt-compare) and whether
    #: higher (``max``) or lower (``min``) is better; None: the validation loss.
    primary: tuple[str, str] | None = None

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = float(weight)

    @abstractmethod
    def forward(self, net: MultimodalTransformer, batch: MultimodalBatch) -> ObjectiveOutput:
        """Compute the loss on ``batch``."""

    def make_metrics(self) -> nn.ModuleDict:
        """Fresh metric objects for one split, keyed by the name they are logged under; updated by :meth:`update`."""
        return nn.ModuleDict()

    def update(self, metrics: nn.ModuleDict, out: ObjectiveOutput) -> None:
        """Update this split's metrics with a step's output (default: every metric with (preds, target))."""
        if out.preds is None:
            return
        for metric in metrics.values():
            metric.update(out.preds.detach(), out.target)

    def evaluate(self, net: MultimodalTransformer, batch: MultimodalBatch, metrics: nn.ModuleDict) -> list[str]:
        """Extra, costlier evaluation on a validation/test batch (e.g. generation). Returns the updated keys."""
        return []


def with_text(batch: MultimodalBatch, texts: list[str], max_length: int, tokenizer: Tokenizer) -> MultimodalBatch:
    """A copy of ``batch`` whose text modality is ``texts`` (e.g. the captions), tokenized with the text
    encoder's ``tokenizer`` (``net.encoder_tokenizer``) and present."""
    from dataclasses import replace

    ids, mask = tokenizer.batch_encode(texts, max_length=max_length)
    inputs = {**batch.inputs, "text": ids.to(batch.device)}
    masks = {**batch.masks, "text": mask.to(batch.device)}
    present = {**batch.present, "text": mask.any(dim=1).to(batch.device)}
    return replace(batch, inputs=inputs, masks=masks, present=present, precomputed=batch.precomputed - {"text"})


def captions(batch: MultimodalBatch, source: str) -> list[str] | None:
    """The captions when ``source`` is ``"caption"``, None when it is ``"text"`` (the batch's own text input).

    The one place that reads an objective's text source, for every objective that has one.
    """
    if source == "text":
        return None
    if source == "caption":
        if batch.captions is None:
            raise ValueError("the objective's text source is 'caption', but the batch has no captions")
        return list(batch.captions)
    raise ValueError(f"unknown text source {source!r} (expected 'text' or 'caption')")


def source_batch(net: MultimodalTransformer, batch: MultimodalBatch, source: str, max_length: int) -> MultimodalBatch:
    """``batch`` itself (``source="text"``) or with its captions as the text modality (``"caption"``), tokenized
    as the network's text encoder reads text."""
    texts = captions(batch, source)
    return batch if texts is None else with_text(batch, texts, max_length, net.encoder_tokenizer)
