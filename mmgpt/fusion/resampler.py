"""A query-based resampler: learned query tokens cross-attend to every modality's tokens (Jaegle et al. 2021,
Perceiver; Alayrac et al. 2022, Flamingo's Perceiver Resampler; Li et al. 2023, BLIP-2's Q-Former).

Legend: B batch, Q query tokens, N all modality tokens, D dim.

A fixed number Q of learned queries attend (cross-attention) to the concatenated tokens of all modalities, each
with its modality-type embedding, then to each other (self-attention), for several layers. The output is Q tokens
whatever the number of input tokens: their mean is the pooled vector, and the Q tokens themselves condition the
text decoder as a prefix. A learned null token is always in the context, so a sample with every modality missing
still has something to attend to.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mmgpt.fusion.base import Fusion, FusionOutput, ModalityEmbedding
from mmgpt.layers import Block, LearnedTokens


class ResamplerFusion(Fusion):
    """Q learned queries that cross-attend to all modality tokens, then self-attend; Q fused tokens out.

    Args:
        modalities: modality names.
        dim: width D.
        num_layers: cross-attention + self-attention layer pairs.
        num_heads: attention heads.
        num_queries: Q, the number of learned query tokens.
        mlp_ratio: MLP hidden width / D.
        dropout: dropout rate.
    """

    decoder_pairing = ("fused_prefix", False)

    def __init__(
        self,
        *,
        modalities: Sequence[str],
        dim: int,
        num_layers: int,
        num_heads: int,
        num_queries: int = 8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(modalities=modalities)
        sizes = {"dim": dim, "num_heads": num_heads, "mlp_ratio": mlp_ratio, "dropout": dropout}
        self.queries = LearnedTokens(1, num_queries, dim)
        self.null = LearnedTokens(1, 1, dim)
        self.type_emb = ModalityEmbedding(modalities=self.modalities, dim=dim)
        self.context_norm = nn.LayerNorm(dim)
        self.cross_blocks = nn.ModuleList(Block(**sizes) for _ in range(num_layers))
        self.self_blocks = nn.ModuleList(Block(**sizes) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: dict[str, Tensor], masks: dict[str, Tensor]) -> FusionOutput:
        self.check_inputs(tokens)
        B = next(iter(tokens.values())).shape[0]
        one = torch.ones(B, 1, dtype=torch.bool, device=self.queries.weight.device)
        ctx = self.context_norm(torch.cat(
            [self.null.weight.expand(B, -1, -1), *(self.type_emb(m, tokens[m]) for m in self.modalities)], dim=1
        ))  # (B, 1 + N, D)
        ctx_mask = torch.cat([one, *(masks[m] for m in self.modalities)], dim=1)  # (B, 1 + N)
        q = self.queries.weight.expand(B, -1, -1)  # (B, Q, D)
        for cross, self_block in zip(self.cross_blocks, self.self_blocks):
            q = self_block(cross(q, context=ctx, context_mask=ctx_mask))
        h = self.norm(q)
        q_mask = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)  # (B, Q)
        return FusionOutput(pooled=h.mean(dim=1), tokens=h, mask=q_mask)
