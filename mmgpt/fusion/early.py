"""Early fusion: one shared Transformer over the concatenation of all modality tokens.

Legend: B batch, N total tokens (1 CLS + sum of N_m), D dim.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mmgpt.fusion.base import Fusion, FusionOutput, ModalityEmbedding
from mmgpt.layers import LearnedTokens, Transformer


class EarlyFusion(Fusion):
    """Concatenates [CLS, audio, image, text] tokens (each with a modality-type embedding) into one sequence.

    Args:
        modalities: modality names.
        dim: width D.
        num_layers: shared Transformer blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / D.
        dropout: dropout rate.
    """

    decoder_pairing = ("fused_prefix", False)  # the fused token sequence as a bidirectional prefix

    def __init__(
        self,
        *,
        modalities: Sequence[str],
        dim: int,
        num_layers: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(modalities=modalities)
        self.type_emb = ModalityEmbedding(modalities=self.modalities, dim=dim)
        self.cls = LearnedTokens(1, 1, dim)
        self.transformer = Transformer(
            dim=dim, num_layers=num_layers, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout
        )

    def forward(self, tokens: dict[str, Tensor], masks: dict[str, Tensor]) -> FusionOutput:
        self.check_inputs(tokens)
        B = next(iter(tokens.values())).shape[0]
        cls = self.cls.weight.expand(B, -1, -1)  # (B, 1, D)
        x = torch.cat([cls, *(self.type_emb(m, tokens[m]) for m in self.modalities)], dim=1)  # (B, N, D)
        cls_mask = torch.ones(B, 1, dtype=torch.bool, device=cls.device)
        mask = torch.cat([cls_mask, *(masks[m] for m in self.modalities)], dim=1)  # (B, N)
        h = self.transformer(x, mask=mask)
        return FusionOutput(pooled=h[:, 0], tokens=h, mask=mask)
