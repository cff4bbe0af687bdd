"""Features encoder: pre-extracted feature sequences -> Transformer tokens.

Legend: B batch, N feature steps, F feature size, D dim.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmgpt.encoders.base import EncoderOutput
from mmgpt.layers import LearnedTokens, Transformer


class FeaturesEncoder(nn.Module):
    """A linear projection F -> D, learned positions and a stack of Transformer blocks; padded steps masked.

    An (F,) vector per sample arrives as a sequence of one step (the features processor makes it (1, F)).

    Args:
        input_dim: feature size F; None takes it from the data's declaration (``data.modalities.<name>.dim``),
            filled in before the network is built.
        dim: width D.
        num_layers: Transformer blocks (0: projection and positions only).
        num_heads: attention heads.
        max_steps: longest sequence (position table size).
        mlp_ratio: MLP hidden width / D.
        dropout: dropout rate.
    """

    #: The modality kind this encoder reads (checked against the data's declaration).
    modality_kind = "features"

    def __init__(
        self,
        *,
        input_dim: int | None,
        dim: int,
        num_layers: int,
        num_heads: int,
        max_steps: int = 512,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if input_dim is None or int(input_dim) < 1:
            raise ValueError(f"features_encoder: input_dim={input_dim} (the feature size F of the data's "
                             "declaration, data.modalities.<name>.dim)")
        self.input_dim, self.max_steps = int(input_dim), int(max_steps)
        self.norm_in = nn.LayerNorm(self.input_dim)  # features arrive on any scale
        self.proj = nn.Linear(self.input_dim, dim)
        self.pos_emb = LearnedTokens(1, self.max_steps, dim)
        self.drop = nn.Dropout(dropout)
        self.transformer = Transformer(
            dim=dim, num_layers=num_layers, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout
        )

    def forward(self, x: Tensor, mask: Tensor | None = None) -> EncoderOutput:
        """x (B, N, F) features, mask (B, N) True = real step -> tokens (B, N, D)."""
        if x.dim() == 2:
            x = x[:, None]  # (B, 1, F): one vector per sample
        B, N, F = x.shape
        if F != self.input_dim:
            raise ValueError(f"features of size {F}, but the encoder was built for input_dim={self.input_dim}")
        if N > self.max_steps:
            raise ValueError(f"{N} feature steps but the encoder's max_steps is {self.max_steps} "
                             "(raise max_steps, or crop with data.modalities.<name>.max_steps)")
        if mask is None:
            mask = torch.ones(B, N, dtype=torch.bool, device=x.device)
        h = self.drop(self.proj(self.norm_in(x)) + self.pos_emb.weight[:, :N])  # (B, N, D)
        return EncoderOutput(self.transformer(h, mask=mask), mask)
