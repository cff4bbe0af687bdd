"""Causal language modelling / captioning: next-token cross-entropy of the decoder on target texts.

Legend: B batch, T text tokens, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.text import BLEUScore, Perplexity

from mmgpt.batch import MultimodalBatch
from mmgpt.generation import GenerationConfig, generate
from mmgpt.model import MultimodalTransformer
from mmgpt.objectives.base import Objective, ObjectiveOutput, captions

#: Target id of positions without a target (padding); never a token id.
IGNORE = -100


def target_texts(net: MultimodalTransformer, batch: MultimodalBatch, target: str) -> list[str]:
    """The texts to model: the batch's captions (``target="caption"``) or its text inputs decoded (``"text"``,
    with the text encoder's tokenizer)."""
    texts = captions(batch, target)
    if texts is not None:
        return texts
    tok = net.encoder_tokenizer
    text = net.text_modality
    return [tok.decode(ids[m]) for ids, m in zip(batch.inputs[text], batch.masks[text], strict=True)]


class CausalLM(Objective):
    """Teacher-forced next-token loss on ``<bos> text <eos>``, conditioned on the media (text hidden).

    Texts are tokenized with the decoder's own tokenizer (``net.decoder_tokenizer``: bytes, a trained BPE, or
    a pretrained LM's). Metrics: ``token_acc`` and ``ppl`` every step; on a few validation/test batches also
    greedy generation scored by ``exact_match`` and ``bleu`` (BLEU-4 on words, smoothed).

    Args:
        weight: weight in the total loss.
        target: ``"caption"`` (the batch's captions) or ``"text"`` (the text modality is the target).
        max_length: token limit of the targets (at most the decoder's max_length).
        max_new_tokens: generation length limit when scoring generated texts.
    """

    def __init__(
        self, weight: float = 1.0, target: str = "caption", max_length: int = 64, max_new_tokens: int = 40
    ) -> None:
        super().__init__(weight)
        self.target = target
        self.max_length = max_length
        self.max_new_tokens = max_new_tokens

    def forward(self, net: MultimodalTransformer, batch: MultimodalBatch) -> ObjectiveOutput:
        texts = target_texts(net, batch, self.target)
        ids, mask = net.decoder_tokenizer.batch_encode(texts, max_length=self.max_length)
        ids, mask = ids.to(batch.device), mask.to(batch.device)  # (B, T)
        logits = net.decode(batch, ids[:, :-1], mask[:, :-1]).logits  # (B, T-1, V)
        # Padding is masked by position, not by id: a pretrained tokenizer may pad with its EOS id.
        target = ids[:, 1:].masked_fill(~mask[:, 1:], IGNORE)  # (B, T-1)
        loss = F.cross_entropy(logits.float().transpose(1, 2), target, ignore_index=IGNORE)
        return ObjectiveOutput(loss=loss, preds=logits, target=target)

    def make_metrics(self) -> nn.ModuleDict:
        return nn.ModuleDict(
            {
                "token_acc": MeanMetric(),  # micro accuracy over target tokens: batch accuracies weighted by count
                "ppl": Perplexity(ignore_index=IGNORE),
                "exact_match": MeanMetric(),
                "bleu": BLEUScore(n_gram=4, smooth=True),
            }
        )

    def update(self, metrics: nn.ModuleDict, out: ObjectiveOutput) -> None:
        logits = out.preds.detach().float()  # (B, T, V)
        real = out.target != IGNORE  # (B, T)
        n = int(real.sum())
        if n:
            correct = (logits.argmax(dim=-1) == out.target) & real
            metrics["token_acc"].update(correct.sum() / n, weight=n)
        metrics["ppl"].update(logits, out.target)

    def evaluate(self, net: MultimodalTransformer, batch: MultimodalBatch, metrics: nn.ModuleDict) -> list[str]:
        refs = target_texts(net, batch, self.target)
        hyps = generate(net, batch, config=GenerationConfig(max_new_tokens=self.max_new_tokens)).texts
        metrics["exact_match"].update(torch.tensor([float(h == r) for h, r in zip(hyps, refs, strict=True)]))
        metrics["bleu"].update(hyps, [[r] for r in refs])
        return ["exact_match", "bleu"]

