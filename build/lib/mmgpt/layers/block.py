"""Pre-norm Transformer blocks built from the one :class:`Attention`. Legend: B batch, N tokens, M context, D dim."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmgpt.layers.attention import Attention, KVCache


class MLP(nn.Module):
    """Position-wise feed-forward: Linear -> GELU -> Linear.

    Args:
        dim: width D.
        mlp_ratio: hidden width / D.
        dropout: dropout on the output.
        approximate: ``nn.GELU``'s approximation (``"tanh"`` is GPT-2's ``gelu_new``).
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0, dropout: float = 0.0, approximate: str = "none") -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(approximate=approximate), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Block(nn.Module):
    """Pre-norm block: attention (self, or cross when a context is given) then MLP, each residual.

    A cross-attention block (Flamingo style) may be *gated*: each residual branch is scaled by ``tanh(alpha)``
    with alpha initialised at ``gate_init`` (0 means the block starts as the identity).

    Args:
        dim: width D.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / D.
        dropout: dropout rate.
        gate_init: None for an ungated block, else the initial value of the tanh gates.
        approximate: the MLP's GELU approximation (``"tanh"`` for GPT-2 weights).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        gate_init: float | None = None,
        approximate: str = "none",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio, dropout, approximate)
        self.gates = None if gate_init is None else nn.Parameter(torch.full((2,), float(gate_init)))

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        causal: bool = False,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        prefix: int = 0,
        cache: KVCache | None = None,
    ) -> Tensor:
        """x (B, N, D) -> (B, N, D). ``mask`` pads x's keys in self-attention; ``context_mask`` pads the context.

        ``prefix`` (prefix-LM masking) and ``cache`` (KV cache) are passed to :class:`Attention`.
        """
        g_attn, g_mlp = (1.0, 1.0) if self.gates is None else torch.tanh(self.gates).unbind(0)
        h = self.norm1(x)
        if context is None:
            x = x + g_attn * self.attn(h, key_mask=mask, causal=causal, prefix=prefix, cache=cache)
        else:
            x = x + g_attn * self.attn(h, context=context, key_mask=context_mask, cache=cache)
        return x + g_mlp * self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A stack of self-attention :class:`Block` s followed by a final LayerNorm.

    Args:
        dim: width D.
        num_layers: number of blocks (0 gives the identity followed by LayerNorm).
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / D.
        dropout: dropout rate.
    """

    def __init__(self, dim: int, num_layers: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
        """x (B, N, D), mask (B, N) True = real token -> (B, N, D)."""
        for block in self.blocks:
            x = block(x, mask=mask, causal=causal)
        return self.norm(x)
