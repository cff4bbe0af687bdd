"""Pre-norm Transformer blocks built from the one :class:`Attention`. Legend: B batch, N tokens, M context, D dim."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmgpt.layers.attention import Attention, KVCache
from mmgpt.layers.dropout import Dropout


class MLP(nn.Module):
    """Position-wise feed-forward: Linear -> GELU (or ``activation``) -> Linear.

    Args:
        dim: width D.
        mlp_ratio: hidden width / D.
        dropout: dropout on the output.
        approximate: ``nn.GELU``'s approximation (``"tanh"`` is GPT-2's ``gelu_new``).
        activation: the hidden activation, a module without parameters (e.g. ``nn.Sequential(nn.ReLU(),
            Dropout(p))`` for fairseq's ReLU with ``relu_dropout``); None: GELU with ``approximate``.
    """

    def __init__(self, *, dim: int, mlp_ratio: float = 4.0, dropout: float = 0.0, approximate: str = "none",
                 activation: nn.Module | None = None) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        act = nn.GELU(approximate=approximate) if activation is None else activation
        self.net = nn.Sequential(nn.Linear(dim, hidden), act, nn.Linear(hidden, dim), Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Block(nn.Module):
    """Pre-norm block: attention (self, or cross when a context is given) then MLP, each residual.

    Args:
        dim: width D.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / D.
        dropout: dropout rate.
        approximate: the MLP's GELU approximation (``"tanh"`` for GPT-2 weights).
    """

    def __init__(
        self, *, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, approximate: str = "none"
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim=dim, num_heads=num_heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim=dim, mlp_ratio=mlp_ratio, dropout=dropout, approximate=approximate)

    def gates(self) -> tuple[Tensor | float, Tensor | float]:
        """The factors of the attention and MLP branches (1, 1: ungated)."""
        return 1.0, 1.0

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
        g_attn, g_mlp = self.gates()
        h = self.norm1(x)
        if context is None:
            x = x + g_attn * self.attn(h, key_mask=mask, causal=causal, prefix=prefix, cache=cache)
        else:
            x = x + g_attn * self.attn(h, context=context, key_mask=context_mask, cache=cache)
        return x + g_mlp * self.mlp(self.norm2(x))


class SharedNormBlock(nn.Module):
    """fairseq's pre-norm encoder layer as MulT's reference code (and MMSA's copy of it) has it: one LayerNorm for
    the queries and, in cross-attention, for the keys and the values too; a ReLU MLP.

    It differs from :class:`Block` in what the reference does differently: the context is normalised by the
    queries' LayerNorm (:class:`Block` takes it as it comes), the attention weights and the two residual branches
    have dropouts of their own (``attn_dropout``; ``res_dropout`` on the attention output and the MLP output;
    ``relu_dropout`` after the ReLU), and the keys and values may come from two inputs (``values``: fairseq drops
    them out with separate masks).

    Args:
        dim: width D.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / D (fairseq: 4).
        attn_dropout: dropout on the attention weights.
        relu_dropout: dropout after the MLP's ReLU.
        res_dropout: dropout on each branch before it is added to the residual stream.
    """

    def __init__(self, *, dim: int, num_heads: int, mlp_ratio: float = 4.0, attn_dropout: float = 0.0,
                 relu_dropout: float = 0.0, res_dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim=dim, num_heads=num_heads, dropout=attn_dropout, proj_dropout=res_dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim=dim, mlp_ratio=mlp_ratio, dropout=res_dropout,
                       activation=nn.Sequential(nn.ReLU(), Dropout(relu_dropout)))

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, context: Tensor | None = None,
                values: Tensor | None = None) -> Tensor:
        """x (B, N, D) -> (B, N, D).

        Args:
            x: queries (B, N, D).
            attn_mask: the attention mask from :func:`~mmgpt.layers.build_attention_mask` (padding and the future
                mask; a stack builds it once for all its layers); None: every key.
            context: keys (B, M, D) for cross-attention; None: self-attention.
            values: values (B, M, D) when they differ from ``context`` (separate dropout masks).
        """
        h = self.norm1(x)
        if context is None:
            x = x + self.attn(h, attn_mask=attn_mask)
        else:
            v = None if values is None else self.norm1(values)
            x = x + self.attn(h, context=self.norm1(context), values=v, attn_mask=attn_mask)
        return x + self.mlp(self.norm2(x))


class GatedCrossAttentionBlock(Block):
    """A cross-attention block whose two residual branches are scaled by ``tanh`` gates (Flamingo).

    ``attn_gate`` scales the cross-attention branch and ``ff_gate`` the MLP branch; both start at ``gate_init``,
    so with 0 the block starts as the identity and a pretrained path is undisturbed at first.

    Args:
        dim, num_heads, mlp_ratio, dropout, approximate: as :class:`Block`.
        gate_init: initial value of both gates (before ``tanh``).
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        approximate: str = "none",
        gate_init: float = 0.0,
    ) -> None:
        super().__init__(dim=dim, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout, approximate=approximate)
        self.attn_gate = nn.Parameter(torch.full((1,), float(gate_init)))
        self.ff_gate = nn.Parameter(torch.full((1,), float(gate_init)))

    def gates(self) -> tuple[Tensor, Tensor]:
        return torch.tanh(self.attn_gate), torch.tanh(self.ff_gate)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:  # type: ignore[override]
        # Checkpoints written before the gates had names stored them as one 2-vector `gates` (attention, MLP).
        old = state_dict.pop(prefix + "gates", None)
        if old is not None:
            state_dict[prefix + "attn_gate"], state_dict[prefix + "ff_gate"] = old[0:1].clone(), old[1:2].clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def cross_attention_block(
    *, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, gate_init: float | None = None,
    approximate: str = "none",
) -> Block:
    """A block that cross-attends: :class:`GatedCrossAttentionBlock` when ``gate_init`` is given, else ungated."""
    kwargs = {"dim": dim, "num_heads": num_heads, "mlp_ratio": mlp_ratio, "dropout": dropout,
              "approximate": approximate}
    return Block(**kwargs) if gate_init is None else GatedCrossAttentionBlock(gate_init=gate_init, **kwargs)


class Transformer(nn.Module):
    """A stack of self-attention :class:`Block` s followed by a final LayerNorm.

    Args:
        dim: width D.
        num_layers: number of blocks (0 gives the identity followed by LayerNorm).
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / D.
        dropout: dropout rate.
    """

    def __init__(
        self, *, dim: int, num_layers: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(dim=dim, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
        """x (B, N, D), mask (B, N) True = real token -> (B, N, D)."""
        for block in self.blocks:
            x = block(x, mask=mask, causal=causal)
        return self.norm(x)
