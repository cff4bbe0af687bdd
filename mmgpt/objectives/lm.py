"""Causal language modelling / captioning: next-token cross-entropy of the decoder on target texts.

Legend: B batch, T text tokens, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.text import BLEUScore, Perplexity

from mmgpt.batch import MultimodalBatch
from mmgpt.generation import GenerationConfig, generate
from mmgpt.model import MultimodalTransformer
from mmgpt.objectives.base import Objective, ObjectiveOutput, captions
from mmgpt.tokenizer import ByteTokenizer


def target_texts(batch: MultimodalBatch, target: str) -> list[str]:
    """The texts to model: the batch's captions (``target="caption"``) or its text inputs decoded (``"text"``)."""
    texts = captions(batch, target)
    if texts is not None:
        return texts
    tok = ByteTokenizer()
    return [tok.decode(ids[m]) for ids, m in zip(batch.inputs["text"], batch.masks["text"], strict=True)]


class CausalLM(Objective):
    """Teacher-forced next-token loss on ``<bos> text <eos>``, conditioned on the media (text hidden).

    Metrics: ``token_acc`` and ``ppl`` every step; on a few validation/test batches also greedy generation
    scored by ``exact_match`` and ``bleu`` (BLEU-4 on words, smoothed).

    Args:
        weight: weight in the total loss.
        target: ``"caption"`` (the batch's captions) or ``"text"`` (the text modality is the target).
        max_length: token limit of the targets (the decoder's max_length).
        max_new_tokens: generation length limit when scoring generated texts.
    """

    def __init__(
        self, weight: float = 1.0, target: str = "caption", max_length: int = 64, max_new_tokens: int = 40
    ) -> None:
        super().__init__(weight)
        self.target = target
        self.tokenizer = ByteTokenizer(max_length)
        self.max_new_tokens = max_new_tokens

    def forward(self, net: MultimodalTransformer, batch: MultimodalBatch) -> ObjectiveOutput:
        ids, mask = self.tokenizer.batch_encode(target_texts(batch, self.target))
        ids, mask = ids.to(batch.device), mask.to(batch.device)  # (B, T)
        logits = net.decode(batch, ids[:, :-1], mask[:, :-1]).logits  # (B, T-1, V)
        target = ids[:, 1:].masked_fill(~mask[:, 1:], self.tokenizer.PAD)  # (B, T-1)
        loss = F.cross_entropy(logits.float().transpose(1, 2), target, ignore_index=self.tokenizer.PAD)
        return ObjectiveOutput(loss=loss, preds=logits, target=target)

    def make_metrics(self) -> nn.ModuleDict:
        V = ByteTokenizer.vocab_size
        return nn.ModuleDict(
            {
                "token_acc": MulticlassAccuracy(V, average="micro", ignore_index=ByteTokenizer.PAD),
                "ppl": Perplexity(ignore_index=ByteTokenizer.PAD),
                "exact_match": MeanMetric(),
                "bleu": BLEUScore(n_gram=4, smooth=True),
            }
        )

    def update(self, metrics: nn.ModuleDict, out: ObjectiveOutput) -> None:
        logits = out.preds.detach().float()  # (B, T, V)
        metrics["token_acc"].update(logits.transpose(1, 2), out.target)
        metrics["ppl"].update(logits, out.target)

    def evaluate(self, net: MultimodalTransformer, batch: MultimodalBatch, metrics: nn.ModuleDict) -> list[str]:
        refs = target_texts(batch, self.target)
        hyps = generate(net, batch, config=GenerationConfig(max_new_tokens=self.max_new_tokens)).texts
        metrics["exact_match"].update(torch.tensor([float(h == r) for h, r in zip(hyps, refs, strict=True)]))
        metrics["bleu"].update(hyps, [[r] for r in refs])
        return ["exact_match", "bleu"]

