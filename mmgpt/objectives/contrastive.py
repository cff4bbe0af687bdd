"""CLIP-style contrastive alignment (InfoNCE) between pooled modality embeddings, gathered across DDP ranks.

Evaluated as retrieval (``task=retrieval``): Recall@K both ways for every pair over the whole validation / test
split (:class:`mmgpt.objectives.metrics.RetrievalRecall`), and optionally zero-shot classification of one
modality against text prompts made from the class names.
Legend: B local batch, G global batch (all ranks), D dim, E embedding dim, C classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from mmgpt.batch import MultimodalBatch
from mmgpt.layers import masked_mean
from mmgpt.model import MultimodalTransformer
from mmgpt.objectives.base import Objective, ObjectiveOutput, source_batch


def gather(x: Tensor) -> Tensor:
    """Concatenate ``x`` (B, ...) over DDP ranks with gradients flowing back to every rank's slice."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)  # (G, ...)


def info_nce(a: Tensor, b: Tensor, logit_scale: Tensor, valid: Tensor) -> Tensor:
    """Symmetric InfoNCE between L2-normalised ``a`` and ``b`` (G, E); rows with ``valid`` False are left out."""
    a, b = a[valid], b[valid]
    if a.shape[0] < 2:
        return a.sum() * 0.0  # nothing to contrast
    logits = logit_scale.exp() * a @ b.t()  # (G, G)
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


class Contrastive(Objective):
    """Mean-pooled encoder tokens of each modality, projected to a shared space, aligned pair by pair.

    Each pair's positives are the same sample's two modalities; every other sample of the *global* batch is a
    negative (embeddings are gathered across DDP ranks). The temperature is learned (CLIP: logit scale
    initialised at log(1/0.07), clamped at log(100)).

    Args:
        dim: encoder width D.
        pairs: modality pairs to align, e.g. ``[[image, text], [audio, text]]``.
        embed_dim: shared embedding width E.
        weight: weight in the total loss.
        source: ``"caption"`` uses the captions as the text modality (they describe the media); ``"text"`` the
            text input as is.
        max_length: token limit when encoding captions.
        init_temperature: initial temperature.
        recall_at: the K of the Recall@K metrics (``r<K>_<a>_to_<b>`` and ``r<K>_<b>_to_<a>`` per pair), computed
            on validation and test splits; empty: none.
        zero_shot: a modality to classify zero-shot (``zeroshot_acc``): each sample's embedding against the text
            embeddings of ``prompt`` filled with each class name; None: no zero-shot metric.
        prompt: the prompt template (``{}`` is replaced by the class name).
        class_names: the classes, in label order (filled in by the LightningModule).
        text_modality: the text modality whose encoder and projection embed the prompts.
    """

    def __init__(
        self,
        dim: int,
        pairs: Sequence[Sequence[str]] = (("image", "text"), ("audio", "text")),
        embed_dim: int = 64,
        weight: float = 1.0,
        source: str = "caption",
        max_length: int = 64,
        init_temperature: float = 0.07,
        recall_at: Sequence[int] = (),
        zero_shot: str | None = None,
        prompt: str = "{}",
        class_names: Sequence[str] | None = None,
        text_modality: str = "text",
    ) -> None:
        super().__init__(weight)
        self.pairs = [tuple(p) for p in pairs]
        self.recall_at = tuple(int(k) for k in recall_at)
        self.zero_shot, self.prompt, self.text_modality = zero_shot, prompt, text_modality
        self.class_names = list(class_names or [])
        if zero_shot is not None and not self.class_names:
            raise ValueError("contrastive.zero_shot needs the class names (class_names: null is filled in from "
                             "the data)")
        mods = sorted({m for p in self.pairs for m in p} | ({zero_shot, text_modality} if zero_shot else set()))
        self.proj = nn.ModuleDict({m: nn.Linear(dim, embed_dim, bias=False) for m in mods})
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.source = source
        self.max_length = max_length

    def embed(self, net: MultimodalTransformer, batch: MultimodalBatch) -> dict[str, Tensor]:
        """L2-normalised embeddings (B, E) per modality of the pairs."""
        encoded = net.encode(batch)
        return {m: F.normalize(self.proj[m](masked_mean(encoded[m].tokens, encoded[m].mask)), dim=-1)
                for m in self.proj}

    def forward(self, net: MultimodalTransformer, batch: MultimodalBatch) -> ObjectiveOutput:
        batch = source_batch(net, batch, self.source, self.max_length)
        local = self.embed(net, batch)  # (B, E)
        emb = {m: gather(e) for m, e in local.items()}  # (G, E)
        present = {m: gather(batch.presence(m)) for m in emb}  # (G,)
        scale = self.logit_scale.clamp(max=math.log(100.0))
        losses = [info_nce(emb[a], emb[b], scale, present[a] & present[b]) for a, b in self.pairs]
        extras = {} if self.training else {**{f"emb/{m}": e.detach() for m, e in local.items()},
                                           **{f"present/{m}": batch.presence(m) for m in local}}
        if not self.training and self.zero_shot is not None and batch.labels is not None:
            extras["zero_shot_scores"] = local[self.zero_shot].detach() @ self.prompt_embeddings(net).t()  # (B, C)
            extras["labels"] = batch.labels
        return ObjectiveOutput(loss=torch.stack(losses).mean(), values={"temperature": 1.0 / scale.exp().detach()},
                               extras=extras)

    @torch.no_grad()
    def prompt_embeddings(self, net: MultimodalTransformer) -> Tensor:
        """L2-normalised text embeddings (C, E) of the prompt filled with each class name."""
        from mmgpt.tokenizer import ByteTokenizer

        device = self.logit_scale.device
        ids, mask = ByteTokenizer(self.max_length).batch_encode([self.prompt.format(c) for c in self.class_names])
        ids, mask = ids.to(device), mask.to(device)
        enc = net.encoders[self.text_modality](ids, mask)
        return F.normalize(self.proj[self.text_modality](masked_mean(enc.tokens, enc.mask)), dim=-1)

    def make_metrics(self) -> nn.ModuleDict:
        from torchmetrics.classification import MulticlassAccuracy

        from mmgpt.objectives.metrics import RetrievalRecall

        metrics: dict[str, nn.Module] = {}
        for a, b in self.pairs:
            for k in self.recall_at:
                metrics[f"r{k}_{a}_to_{b}"] = RetrievalRecall(k=k, direction="a_to_b")
                metrics[f"r{k}_{b}_to_{a}"] = RetrievalRecall(k=k, direction="b_to_a")
        if self.zero_shot is not None:
            metrics["zeroshot_acc"] = MulticlassAccuracy(len(self.class_names), average="micro", validate_args=False)
        return nn.ModuleDict(metrics)

    def update(self, metrics: nn.ModuleDict, out: ObjectiveOutput) -> None:
        """Retrieval metrics take validation / test embeddings (rows where both modalities are present)."""
        if not out.extras:  # training steps: no retrieval metrics (they would hold every training embedding)
            return
        for a, b in self.pairs:
            both = out.extras[f"present/{a}"] & out.extras[f"present/{b}"]
            for k in self.recall_at:
                for key in (f"r{k}_{a}_to_{b}", f"r{k}_{b}_to_{a}"):
                    metrics[key].update(out.extras[f"emb/{a}"][both], out.extras[f"emb/{b}"][both])
        if "zero_shot_scores" in out.extras:
            metrics["zeroshot_acc"].update(out.extras["zero_shot_scores"], out.extras["labels"])
