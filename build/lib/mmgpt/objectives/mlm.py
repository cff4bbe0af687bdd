"""Masked language modelling on the bidirectional path (BERT's loss, the article's MLM).

Legend: B batch, T text tokens, N fused tokens, D dim, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from mmgpt.batch import MultimodalBatch
from mmgpt.model import MultimodalTransformer
from mmgpt.objectives.base import Objective, ObjectiveOutput, source_batch
from mmgpt.tokenizer import ByteTokenizer


def mask_tokens(
    ids: Tensor, mask: Tensor, rate: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Replace a ``rate`` fraction of the real byte tokens by ``<mask>`` (at least one per text).

    Returns:
        the masked ids (B, T) and the targets (B, T): the original id where masked, PAD elsewhere.
    """
    maskable = mask & (ids < 256)  # bytes only: BOS/EOS/PAD stay
    r = torch.rand(ids.shape, generator=generator).to(ids.device)
    chosen = maskable & (r < rate)
    # Guarantee one masked token per text that has any byte: the most "chosen-like" position.
    first = (torch.where(maskable, r, torch.full_like(r, 2.0))).argmin(dim=1)  # (B,)
    chosen[torch.arange(ids.shape[0]), first] |= maskable.any(dim=1)
    masked = ids.masked_fill(chosen, ByteTokenizer.MASK)
    target = ids.masked_fill(~chosen, ByteTokenizer.PAD)
    return masked, target


class MaskedLM(Objective):
    """Predict masked text tokens from the fused (bidirectional) sequence.

    The prediction reads the fused tokens aligned with the text when the fusion returns a sequence ending with
    the text tokens (early fusion: [CLS, audio, image, text]; cross-attention fusion: [CLS, text]), otherwise the
    text encoder's tokens (late fusion pools before combining).

    Args:
        dim: width D.
        weight: weight in the total loss.
        rate: fraction of text tokens masked.
        source: ``"text"`` (the text input) or ``"caption"`` (captions as the text modality).
        max_length: token limit when encoding captions.
    """

    def __init__(
        self, dim: int, weight: float = 1.0, rate: float = 0.15, source: str = "text", max_length: int = 64
    ) -> None:
        super().__init__(weight)
        self.rate = rate
        self.source = source
        self.max_length = max_length
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, ByteTokenizer.vocab_size))

    def forward(self, net: MultimodalTransformer, batch: MultimodalBatch) -> ObjectiveOutput:
        batch = source_batch(batch, self.source, self.max_length)
        ids, mask = batch.inputs["text"], batch.masks["text"]
        masked, target = mask_tokens(ids, mask & batch.presence("text")[:, None], self.rate)
        inputs = {**batch.inputs, "text": masked}
        from dataclasses import replace

        out = net(replace(batch, inputs=inputs))
        T = ids.shape[1]
        fused = out.fusion.tokens
        h = fused[:, -T:] if fused is not None and fused.shape[1] >= T else out.encoded["text"].tokens  # (B, T, D)
        logits = self.head(h)  # (B, T, V)
        loss = F.cross_entropy(logits.float().transpose(1, 2), target, ignore_index=ByteTokenizer.PAD)
        return ObjectiveOutput(loss=loss, preds=logits.transpose(1, 2), target=target)

    def make_metrics(self) -> nn.ModuleDict:
        return nn.ModuleDict(
            {"mlm_acc": MulticlassAccuracy(ByteTokenizer.vocab_size, average="micro", ignore_index=ByteTokenizer.PAD)}
        )
