"""Tensor fusion (TFN) and its low-rank factorisation (LMF): multiplicative interactions of pooled modality vectors.

Legend: B batch, M modalities, D dim, d per-modality width, R rank, H hidden width.

* Zadeh et al. 2017, "Tensor Fusion Network for Multimodal Sentiment Analysis": each modality's vector is
  extended with a constant 1, ``z_m = [h_m; 1]``, and the fused representation is the outer product
  ``z_1 (x) z_2 (x) ... (x) z_M`` (flattened), which holds every unimodal, bimodal and trimodal product term.
* Liu et al. 2018, "Efficient Low-rank Multimodal Fusion with Modality-Specific Factors": the same interaction
  through a rank-R decomposition of the weight tensor, ``h = sum_r prod_m (W_m^(r) z_m) + b``, without ever
  forming the outer product.

Both pool each modality's tokens (masked mean) and project them to a small width ``d`` first. A missing modality
contributes ``h_m = 0``, so ``z_m = [0; 1]`` and only the interactions of the present modalities remain.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mmgpt.fusion.base import Fusion, FusionOutput
from mmgpt.layers import MLP, masked_mean


class _Pooled(Fusion):
    """Masked mean pooling and a projection to a small width per modality (shared by TFN and LMF)."""

    decoder_pairing = ("pooled_prefix", False)

    def __init__(self, *, modalities: Sequence[str], dim: int, modality_dim: int) -> None:
        super().__init__(modalities=modalities)
        self.project = nn.ModuleDict(
            {m: nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, modality_dim)) for m in self.modalities}
        )

    def extended(self, tokens: dict[str, Tensor], masks: dict[str, Tensor]) -> list[Tensor]:
        """``[h_m; 1]`` (B, d + 1) per modality in sorted order; ``h_m = 0`` where the modality is absent."""
        self.check_inputs(tokens)
        out = []
        for m in self.modalities:
            present = masks[m].any(dim=1, keepdim=True)  # (B, 1)
            h = self.project[m](masked_mean(tokens[m], masks[m])) * present  # (B, d)
            out.append(torch.cat([h, torch.ones_like(h[:, :1])], dim=-1))  # (B, d + 1)
        return out


class TensorFusion(_Pooled):
    """TFN: the flattened outer product of the extended modality vectors, then an MLP back to ``dim``.

    The fused vector has ``(modality_dim + 1) ** M`` entries (729 for M = 3, d = 8), so keep ``modality_dim`` small.

    Args:
        modalities: modality names.
        dim: width D of the encoders' tokens and of the output.
        modality_dim: width d each pooled modality vector is projected to.
        mlp_ratio: hidden width of the output MLP / D.
        dropout: dropout rate.
    """

    def __init__(
        self, *, modalities: Sequence[str], dim: int, modality_dim: int = 8, mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(modalities=modalities, dim=dim, modality_dim=modality_dim)
        fused = (modality_dim + 1) ** len(self.modalities)
        self.out = nn.Sequential(nn.Linear(fused, dim), nn.GELU(), nn.Dropout(dropout),
                                 MLP(dim=dim, mlp_ratio=mlp_ratio, dropout=dropout))

    @staticmethod
    def outer(vectors: list[Tensor]) -> Tensor:
        """Flattened outer product of (B, n_i) vectors -> (B, prod n_i), first vector's index slowest."""
        z = vectors[0]
        for v in vectors[1:]:
            z = (z.unsqueeze(-1) * v.unsqueeze(1)).flatten(1)  # (B, n_1 ... n_k)
        return z

    def forward(self, tokens: dict[str, Tensor], masks: dict[str, Tensor]) -> FusionOutput:
        return FusionOutput(pooled=self.out(self.outer(self.extended(tokens, masks))))


class LowRankFusion(_Pooled):
    """LMF: ``h = sum_r w_r prod_m (W_m^(r) z_m) + b`` with rank-R modality-specific factors.

    Args:
        modalities: modality names.
        dim: width D of the encoders' tokens and of the output.
        modality_dim: width d each pooled modality vector is projected to.
        rank: R, the number of factors per modality.
        dropout: dropout rate on the output.
    """

    def __init__(
        self, *, modalities: Sequence[str], dim: int, modality_dim: int = 16, rank: int = 4, dropout: float = 0.0
    ) -> None:
        super().__init__(modalities=modalities, dim=dim, modality_dim=modality_dim)
        self.factors = nn.ParameterDict({
            m: nn.Parameter(nn.init.xavier_normal_(torch.empty(rank, modality_dim + 1, dim))) for m in self.modalities
        })
        self.rank_weights = nn.Parameter(nn.init.xavier_normal_(torch.empty(1, rank)))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, tokens: dict[str, Tensor], masks: dict[str, Tensor]) -> FusionOutput:
        product: Tensor | None = None
        for m, z in zip(self.modalities, self.extended(tokens, masks)):
            f = torch.einsum("bi,rio->rbo", z, self.factors[m])  # (R, B, D)
            product = f if product is None else product * f
        assert product is not None
        fused = torch.einsum("r,rbo->bo", self.rank_weights[0], product) + self.bias  # (B, D)
        return FusionOutput(pooled=self.drop(fused))
