"""Cross-modal attention fusion (MulT / Flamingo style): a query stream attends to the other modalities.

Legend: B batch, T query tokens (1 CLS + the query modality's), M context tokens (1 null + the others'), D dim.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mmgpt.fusion.base import Fusion, FusionOutput, ModalityEmbedding
from mmgpt.layers import Block, LearnedTokens, cross_attention_block


class CrossAttentionFusion(Fusion):
    """Per layer: the query stream cross-attends to the context (optionally tanh-gated), then self-attends.

    The query stream starts with a learned CLS token (always present, so a sample without the query modality
    still gets a summary); the context starts with a learned null token (always present, so a sample with no
    other modality attends to something meaningful rather than to padding).

    Args:
        modalities: modality names.
        dim: width D.
        num_layers: (cross-attention block, self-attention block) pairs.
        num_heads: attention heads.
        query: the modality that forms the query stream.
        gate_init: None for ungated cross-attention; else the initial tanh-gate value (Flamingo uses 0).
        mlp_ratio: MLP hidden width / D.
        dropout: dropout rate.
    """

    decoder_pairing = ("media_context", True)  # the decoder cross-attends to the media tokens (Flamingo)

    def __init__(
        self,
        *,
        modalities: Sequence[str],
        dim: int,
        num_layers: int,
        num_heads: int,
        query: str = "text",
        gate_init: float | None = None,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(modalities=modalities)
        if query not in self.modalities:
            raise ValueError(f"query modality {query!r} is not one of {list(self.modalities)} (set model.fusion.query)")
        self.query = query
        self.context_modalities = tuple(m for m in self.modalities if m != query)
        self.type_emb = ModalityEmbedding(modalities=self.context_modalities, dim=dim)
        self.cls = LearnedTokens(1, 1, dim)
        self.null = LearnedTokens(1, 1, dim)
        self.cross_blocks = nn.ModuleList(
            cross_attention_block(
                dim=dim, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout, gate_init=gate_init
            )
            for _ in range(num_layers)
        )
        self.self_blocks = nn.ModuleList(
            Block(dim=dim, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: dict[str, Tensor], masks: dict[str, Tensor]) -> FusionOutput:
        self.check_inputs(tokens)
        B = tokens[self.query].shape[0]
        device = tokens[self.query].device
        one = torch.ones(B, 1, dtype=torch.bool, device=device)
        q = torch.cat([self.cls.weight.expand(B, -1, -1), tokens[self.query]], dim=1)  # (B, T, D)
        q_mask = torch.cat([one, masks[self.query]], dim=1)  # (B, T)
        ctx = torch.cat(
            [self.null.weight.expand(B, -1, -1), *(self.type_emb(m, tokens[m]) for m in self.context_modalities)], dim=1
        )  # (B, M, D)
        ctx_mask = torch.cat([one, *(masks[m] for m in self.context_modalities)], dim=1)  # (B, M)
        for cross, self_block in zip(self.cross_blocks, self.self_blocks, strict=True):
            q = cross(q, context=ctx, context_mask=ctx_mask)
            q = self_block(q, mask=q_mask)
        h = self.norm(q)
        return FusionOutput(pooled=h[:, 0], tokens=h, mask=q_mask)
