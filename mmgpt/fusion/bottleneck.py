"""Attention bottlenecks (MBT; Nagrani et al. 2021, "Attention Bottlenecks for Multimodal Fusion").

Legend: B batch, N_m tokens of modality m, K bottleneck tokens, D dim.

Each modality has its own Transformer layers. Up to ``fusion_layer`` the modalities do not interact. From
``fusion_layer`` on, K shared bottleneck tokens are appended to every modality's sequence; each modality's layer
updates its copy of them, and the next layer's bottleneck is the average of the copies (over the modalities a
sample has). Modalities thus exchange information only through the K bottleneck tokens. The output is the average
of the present modalities' pooled tokens, and the bottleneck tokens are returned as the fused sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mmgpt.fusion.base import Fusion, FusionOutput
from mmgpt.layers import Block, LearnedTokens, masked_mean


class BottleneckFusion(Fusion):
    """Per-modality layers that exchange information through a few shared bottleneck tokens.

    Args:
        modalities: modality names.
        dim: width D.
        num_layers: layers per modality.
        num_heads: attention heads.
        num_bottlenecks: K shared bottleneck tokens (the paper uses 4).
        fusion_layer: the first layer that sees the bottleneck (0: all of them).
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
        num_bottlenecks: int = 4,
        fusion_layer: int = 0,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(modalities=modalities)
        if not 0 <= fusion_layer < num_layers:
            raise ValueError(f"fusion_layer={fusion_layer} must be in [0, num_layers={num_layers})")
        self.fusion_layer = fusion_layer
        self.layers = nn.ModuleDict({
            m: nn.ModuleList(Block(dim=dim, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout)
                             for _ in range(num_layers))
            for m in self.modalities
        })
        self.queries = LearnedTokens(1, num_bottlenecks, dim)  # the initial bottleneck tokens
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: dict[str, Tensor], masks: dict[str, Tensor]) -> FusionOutput:
        self.check_inputs(tokens)
        B = next(iter(tokens.values())).shape[0]
        K = self.queries.weight.shape[1]
        present = {m: masks[m].any(dim=1) for m in self.modalities}  # (B,)
        weight = torch.stack([present[m] for m in self.modalities], dim=1).to(self.queries.weight.dtype)  # (B, M)
        weight = weight / weight.sum(dim=1, keepdim=True).clamp(min=1.0)
        h = dict(tokens)
        bottleneck = self.queries.weight.expand(B, -1, -1)  # (B, K, D)
        k_mask = torch.ones(B, K, dtype=torch.bool, device=bottleneck.device)
        for i in range(len(self.layers[self.modalities[0]])):
            if i < self.fusion_layer:
                h = {m: self.layers[m][i](h[m], mask=masks[m]) for m in self.modalities}
                continue
            copies = []
            for m in self.modalities:
                x = self.layers[m][i](torch.cat([h[m], bottleneck], dim=1), mask=torch.cat([masks[m], k_mask], dim=1))
                h[m], copy = x[:, : -K], x[:, -K:]  # (B, N_m, D), (B, K, D)
                copies.append(copy)
            # the shared bottleneck: the present modalities' copies averaged
            bottleneck = torch.einsum("bm,mbkd->bkd", weight, torch.stack(copies))
        pooled = torch.stack([masked_mean(self.norm(h[m]), masks[m]) for m in self.modalities], dim=1)  # (B, M, D)
        fused = self.norm(bottleneck)
        return FusionOutput(pooled=torch.einsum("bm,bmd->bd", weight, pooled), tokens=fused, mask=k_mask)
