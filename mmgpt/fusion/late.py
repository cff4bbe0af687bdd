"""Late fusion: a Transformer stack per modality, pooled, then combined.

Legend: B batch, N_m tokens of modality m, K modalities, D dim.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mmgpt.fusion.base import Fusion, FusionOutput
from mmgpt.layers import MLP, LearnedTokens, Transformer, masked_mean


class Combiner(nn.Module, ABC):
    """Combines pooled per-modality vectors into the fusion output."""

    @abstractmethod
    def forward(self, pooled: dict[str, Tensor], present: dict[str, Tensor]) -> FusionOutput:
        """pooled[m] (B, D), present[m] (B,) bool, keys in sorted order -> FusionOutput."""


class ConcatMLP(Combiner):
    """Concatenate the K pooled vectors and project back to D with an MLP."""

    def __init__(self, *, modalities: Sequence[str], dim: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        k = len(modalities)
        self.net = nn.Sequential(
            nn.LayerNorm(k * dim), nn.Linear(k * dim, dim), MLP(dim=dim, mlp_ratio=mlp_ratio, dropout=dropout)
        )

    def forward(self, pooled: dict[str, Tensor], present: dict[str, Tensor]) -> FusionOutput:
        return FusionOutput(pooled=self.net(torch.cat(list(pooled.values()), dim=-1)))


class LogitAverage(Combiner):
    """Keep one vector per modality; the head's logits are averaged over the modalities a sample has."""

    def forward(self, pooled: dict[str, Tensor], present: dict[str, Tensor]) -> FusionOutput:
        return FusionOutput(
            pooled=torch.stack(list(pooled.values()), dim=1),  # (B, K, D)
            member_mask=torch.stack(list(present.values()), dim=1),  # (B, K)
        )


class LateFusion(Fusion):
    """Each modality through its own Transformer stack, mean-pooled, then combined by an injected :class:`Combiner`.

    A sample that lacks a modality gets a learned "missing" vector in that modality's place.

    Args:
        modalities: modality names.
        dim: width D.
        num_layers: blocks per modality stack.
        num_heads: attention heads.
        combiner: how pooled vectors are combined (:class:`ConcatMLP` or :class:`LogitAverage`).
        mlp_ratio: MLP hidden width / D.
        dropout: dropout rate.
    """

    decoder_pairing = ("pooled_prefix", False)  # the pooled per-modality vectors as a short prefix

    def __init__(
        self,
        *,
        modalities: Sequence[str],
        dim: int,
        num_layers: int,
        num_heads: int,
        combiner: Combiner,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(modalities=modalities)
        self.stacks = nn.ModuleDict(
            {
                m: Transformer(
                    dim=dim, num_layers=num_layers, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout
                )
                for m in self.modalities
            }
        )
        self.missing = nn.ModuleDict({m: LearnedTokens(dim, std=0.0) for m in self.modalities})
        self.combiner = combiner

    def forward(self, tokens: dict[str, Tensor], masks: dict[str, Tensor]) -> FusionOutput:
        self.check_inputs(tokens)
        pooled: dict[str, Tensor] = {}
        present: dict[str, Tensor] = {}
        for m in self.modalities:
            h = self.stacks[m](tokens[m], mask=masks[m])  # (B, N_m, D)
            present[m] = masks[m].any(dim=1)  # (B,)
            pooled[m] = torch.where(present[m][:, None], masked_mean(h, masks[m]), self.missing[m].weight)  # (B, D)
        return self.combiner(pooled, present)
