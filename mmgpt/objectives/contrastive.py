"""CLIP-style contrastive alignment (InfoNCE) between pooled modality embeddings, gathered across DDP ranks.

Legend: B local batch, G global batch (all ranks), D dim, E embedding dim.
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
    ) -> None:
        super().__init__(weight)
        self.pairs = [tuple(p) for p in pairs]
        mods = sorted({m for p in self.pairs for m in p})
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
        emb = {m: gather(e) for m, e in self.embed(net, batch).items()}  # (G, E)
        present = {m: gather(batch.presence(m)) for m in emb}  # (G,)
        scale = self.logit_scale.clamp(max=math.log(100.0))
        losses = [info_nce(emb[a], emb[b], scale, present[a] & present[b]) for a, b in self.pairs]
        return ObjectiveOutput(loss=torch.stack(losses).mean(), values={"temperature": 1.0 / scale.exp().detach()})
