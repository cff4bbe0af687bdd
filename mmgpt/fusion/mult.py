"""MulT: directional cross-modal Transformers for every ordered pair of modalities (Tsai et al. 2019,
"Multimodal Transformer for Unaligned Multimodal Language Sequences").

Legend: B batch, M modalities, N_t target tokens, N_s source tokens, D dim.

For each target modality t and each other (source) modality s, a cross-modal Transformer lets t's tokens attend to
s's tokens (queries from t, keys/values from s) over several layers. The M - 1 results for t are concatenated on
the feature axis, projected back to D and passed through a self-attention Transformer over t's tokens; its
masked-mean summary is t's vector. The targets' vectors are combined (concatenation + projection, a missing
target replaced by a learned vector), as the paper concatenates the last elements of each target stream.

The paper first applies 1D temporal convolutions to raw feature sequences; here the modality encoders play that
role. Each cross-modal context starts with a learned null token, so a missing source modality leaves the target
attending to the null token only (no all-masked attention rows).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mmgpt.fusion.base import Fusion, FusionOutput
from mmgpt.layers import Block, LearnedTokens, Transformer, masked_mean


class MulTFusion(Fusion):
    """Cross-modal Transformers for every ordered pair (s -> t), self-attention per target, targets combined.

    Args:
        modalities: modality names (at least two).
        dim: width D.
        num_layers: cross-modal layers per ordered pair.
        num_heads: attention heads.
        self_layers: self-attention layers per target after the cross-modal ones.
        mlp_ratio: MLP hidden width / D.
        dropout: dropout rate.
    """

    decoder_pairing = ("pooled_prefix", False)

    def __init__(
        self,
        *,
        modalities: Sequence[str],
        dim: int,
        num_layers: int,
        num_heads: int,
        self_layers: int = 1,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(modalities=modalities)
        if len(self.modalities) < 2:
            raise ValueError("MulT needs at least two modalities")
        sizes = {"dim": dim, "num_heads": num_heads, "mlp_ratio": mlp_ratio, "dropout": dropout}
        self.pairs = [(s, t) for t in self.modalities for s in self.modalities if s != t]  # (source, target)
        self.cross = nn.ModuleDict({
            f"{s}->{t}": nn.ModuleList(Block(**sizes) for _ in range(num_layers)) for s, t in self.pairs
        })
        self.null = LearnedTokens(1, 1, dim)
        k = len(self.modalities) - 1
        self.merge = nn.ModuleDict({t: nn.Linear(k * dim, dim) for t in self.modalities})
        self.self_attn = nn.ModuleDict({
            t: Transformer(dim=dim, num_layers=self_layers, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout)
            for t in self.modalities
        })
        self.missing = LearnedTokens(len(self.modalities), dim, std=0.0)
        width = len(self.modalities) * dim
        self.combine = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, dim))

    def forward(self, tokens: dict[str, Tensor], masks: dict[str, Tensor]) -> FusionOutput:
        self.check_inputs(tokens)
        B = next(iter(tokens.values())).shape[0]
        null = self.null.weight.expand(B, -1, -1)  # (B, 1, D)
        one = torch.ones(B, 1, dtype=torch.bool, device=null.device)
        summaries = []
        for i, t in enumerate(self.modalities):
            streams = []
            for s in self.modalities:
                if s == t:
                    continue
                ctx, ctx_mask = torch.cat([null, tokens[s]], dim=1), torch.cat([one, masks[s]], dim=1)  # (B, 1+N_s, .)
                h = tokens[t]  # (B, N_t, D)
                for block in self.cross[f"{s}->{t}"]:
                    h = block(h, context=ctx, context_mask=ctx_mask)
                streams.append(h)
            h = self.self_attn[t](self.merge[t](torch.cat(streams, dim=-1)), mask=masks[t])  # (B, N_t, D)
            present = masks[t].any(dim=1, keepdim=True)  # (B, 1)
            summaries.append(torch.where(present, masked_mean(h, masks[t]), self.missing.weight[i]))  # (B, D)
        return FusionOutput(pooled=self.combine(torch.cat(summaries, dim=-1)))
