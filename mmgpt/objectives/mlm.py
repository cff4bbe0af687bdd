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
from mmgpt.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer


def mask_tokens(
    ids: Tensor, mask: Tensor, rate: float, generator: torch.Generator | None = None,
    tokenizer: Tokenizer | None = None,
) -> tuple[Tensor, Tensor]:
    """Replace a ``rate`` fraction of the real text tokens by ``<mask>`` (at least one per text).

    Args:
        tokenizer: whose ``MASK`` id and special ids apply (default: the byte tokenizer).
    Returns:
        the masked ids (B, T) and the targets (B, T): the original id where masked, PAD elsewhere.
    """
    tokenizer = tokenizer or ByteTokenizer()
    special = torch.tensor(sorted(tokenizer.special_ids), device=ids.device)
    maskable = mask & ~torch.isin(ids, special)  # text tokens only: BOS/EOS/PAD stay
    r = torch.rand(ids.shape, generator=generator).to(ids.device)
    chosen = maskable & (r < rate)
    # Guarantee one masked token per text that has any byte: the most "chosen-like" position.
    first = (torch.where(maskable, r, torch.full_like(r, 2.0))).argmin(dim=1)  # (B,)
    chosen[torch.arange(ids.shape[0]), first] |= maskable.any(dim=1)
    masked = ids.masked_fill(chosen, _mask_id(tokenizer))
    target = ids.masked_fill(~chosen, tokenizer.PAD)
    return masked, target


def _mask_id(tokenizer: Tokenizer) -> int:
    mask_id = getattr(tokenizer, "MASK", None)
    if mask_id is None:
        raise ValueError(f"masked_lm: the text encoder's tokenizer ({type(tokenizer).__name__}) has no <mask> token")
    return int(mask_id)


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
        tokenizer: the text encoder's tokenizer (its ``tokenizer:``; None for bytes): sizes the prediction head.
    """

    def __init__(
        self, dim: int, weight: float = 1.0, rate: float = 0.15, source: str = "text", max_length: int = 64,
        tokenizer: str | None = None,
    ) -> None:
        super().__init__(weight)
        self.rate = rate
        self.source = source
        self.max_length = max_length
        tok = load_tokenizer(tokenizer, max_length)
        self.vocab_size, self._pad = tok.vocab_size, tok.PAD
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, self.vocab_size))

    def forward(self, net: MultimodalTransformer, batch: MultimodalBatch) -> ObjectiveOutput:
        batch = source_batch(net, batch, self.source, self.max_length)
        ids, mask = batch.inputs["text"], batch.masks["text"]
        tokenizer = net.encoder_tokenizer
        if tokenizer.vocab_size != self.vocab_size:
            raise ValueError(f"masked_lm predicts {self.vocab_size} tokens but the text encoder's tokenizer has "
                             f"{tokenizer.vocab_size}: give the objective the encoder's tokenizer")
        masked, target = mask_tokens(ids, mask & batch.presence("text")[:, None], self.rate, tokenizer=tokenizer)
        inputs = {**batch.inputs, "text": masked}
        from dataclasses import replace

        out = net(replace(batch, inputs=inputs))
        T = ids.shape[1]
        fused = out.fusion.tokens
        h = fused[:, -T:] if fused is not None and fused.shape[1] >= T else out.encoded["text"].tokens  # (B, T, D)
        logits = self.head(h)  # (B, T, V)
        loss = F.cross_entropy(logits.float().transpose(1, 2), target, ignore_index=tokenizer.PAD)
        return ObjectiveOutput(loss=loss, preds=logits.transpose(1, 2), target=target)

    def make_metrics(self) -> nn.ModuleDict:
        return nn.ModuleDict(
            {"mlm_acc": MulticlassAccuracy(self.vocab_size, average="micro", ignore_index=self._pad)}
        )
