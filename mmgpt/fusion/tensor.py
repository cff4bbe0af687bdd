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

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from mmgpt.fusion.base import Fusion, FusionOutput
from mmgpt.layers import MLP, Dropout, masked_mean


class _Pooled(Fusion):
    """Masked mean pooling and a projection to a small width per modality (shared by TFN and LMF).

    ``modality_dim: None`` uses each pooled vector as it is, at its encoder's width (``input_dims``): MMSA's
    TFN and LMF fuse their sub-networks' outputs directly (``conf/model/encoder/features/{lstm,subnet}.yaml``).
    """

    decoder_pairing = ("pooled_prefix", False)

    def __init__(self, *, modalities: Sequence[str], dim: int | None, modality_dim: int | None,
                 input_dims: Mapping[str, int] | None = None) -> None:
        super().__init__(modalities=modalities)
        widths = _input_widths(self.modalities, dim, input_dims)
        self.project = nn.ModuleDict({
            m: nn.Identity() if modality_dim is None else nn.Sequential(nn.LayerNorm(widths[m]),
                                                                       nn.Linear(widths[m], modality_dim))
            for m in self.modalities
        })
        #: the width d_m of each modality's vector before its constant 1 is appended
        self.widths = {m: widths[m] if modality_dim is None else modality_dim for m in self.modalities}

    def extended(self, tokens: dict[str, Tensor], masks: dict[str, Tensor]) -> list[Tensor]:
        """``[h_m; 1]`` (B, d_m + 1) per modality in sorted order; ``h_m = 0`` where the modality is absent."""
        self.check_inputs(tokens)
        out = []
        for m in self.modalities:
            present = masks[m].any(dim=1, keepdim=True)  # (B, 1)
            h = self.project[m](masked_mean(tokens[m], masks[m])) * present  # (B, d_m)
            out.append(torch.cat([h, torch.ones_like(h[:, :1])], dim=-1))  # (B, d_m + 1)
        return out


def _input_widths(modalities: Sequence[str], dim: int | None, input_dims: Mapping[str, int] | None) -> dict[str, int]:
    """Each modality's encoder width: ``input_dims[m]``, else ``dim``."""
    given = dict(input_dims or {})
    unknown = sorted(set(given) - set(modalities))
    if unknown:
        raise ValueError(f"input_dims names modalities {unknown} the fusion does not fuse ({list(modalities)})")
    missing = [m for m in modalities if m not in given and dim is None]
    if missing:
        raise ValueError(f"no width for modalities {missing}: give input_dims for them, or dim")
    return {m: int(given.get(m, dim)) for m in modalities}  # type: ignore[arg-type]


class TensorFusion(_Pooled):
    """TFN: the flattened outer product of the extended modality vectors, then an MLP back to ``dim``.

    The fused vector has ``prod_m (d_m + 1)`` entries (729 for M = 3, d = 8), so keep ``modality_dim`` small.
    With ``dim: None`` the flattened product itself is the output (:attr:`out_dim` wide) and the head holds the
    post-fusion layers, as in MMSA's TFN (``head: mlp_head``).

    Args:
        modalities: modality names.
        dim: width D of the encoders' tokens (unless ``input_dims`` gives them) and of the output MLP; None: no
            output MLP.
        modality_dim: width d each pooled modality vector is projected to; None: no projection.
        mlp_ratio: hidden width of the output MLP / D.
        dropout: dropout rate.
        input_dims: modality -> its encoder's width, where it is not ``dim``.
    """

    def __init__(
        self, *, modalities: Sequence[str], dim: int | None, modality_dim: int | None = 8, mlp_ratio: float = 4.0,
        dropout: float = 0.0, input_dims: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(modalities=modalities, dim=dim, modality_dim=modality_dim, input_dims=input_dims)
        fused = math.prod(d + 1 for d in self.widths.values())
        self.out = nn.Identity() if dim is None else nn.Sequential(
            nn.Linear(fused, dim), nn.GELU(), Dropout(dropout), MLP(dim=dim, mlp_ratio=mlp_ratio, dropout=dropout))
        #: the width of the fusion's output (the head's input)
        self.out_dim = fused if dim is None else dim

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
        dim: width D of the output (and of the encoders' tokens, unless ``input_dims`` gives them). MMSA's LMF
            fuses straight to its one output (``dim: 1``, ``head: identity_head``).
        modality_dim: width d each pooled modality vector is projected to; None: no projection.
        rank: R, the number of factors per modality.
        dropout: dropout rate on the output.
        input_dims: modality -> its encoder's width, where it is not ``dim``.
    """

    def __init__(
        self, *, modalities: Sequence[str], dim: int, modality_dim: int | None = 16, rank: int = 4,
        dropout: float = 0.0, input_dims: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(modalities=modalities, dim=dim, modality_dim=modality_dim, input_dims=input_dims)
        self.factors = nn.ParameterDict({
            m: nn.Parameter(nn.init.xavier_normal_(torch.empty(rank, d + 1, dim))) for m, d in self.widths.items()
        })
        self.rank_weights = nn.Parameter(nn.init.xavier_normal_(torch.empty(1, rank)))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.drop = Dropout(dropout)
        self.out_dim = dim

    def forward(self, tokens: dict[str, Tensor], masks: dict[str, Tensor]) -> FusionOutput:
        product: Tensor | None = None
        for m, z in zip(self.modalities, self.extended(tokens, masks)):
            f = torch.einsum("bi,rio->rbo", z, self.factors[m])  # (R, B, D)
            product = f if product is None else product * f
        assert product is not None
        fused = torch.einsum("r,rbo->bo", self.rank_weights[0], product) + self.bias  # (B, D)
        return FusionOutput(pooled=self.drop(fused))
