"""The one attention implementation of mmgpt (self, causal and cross), on ``F.scaled_dot_product_attention``.

One exception to the kernel, not to the arithmetic: on a CPU with dropout on the attention weights (training),
SDPA falls back to its math path, which draws one Bernoulli sample per weight; that costs more than the products
around it at MulT's sizes. There :func:`attend` computes the same softmax(q k^T / sqrt(Dh)) v explicitly and drops the
weights with :func:`mmgpt.layers.dropout.dropout`'s mask (random bits, about twice as fast).

Legend: B batch, N query tokens, M key/value tokens, D dim, H heads, Dh head dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmgpt.layers.dropout import dropout as fast_dropout


@dataclass
class KVCache:
    """Keys and values one attention layer has already computed, so each generated token costs one step.

    Self-attention appends the new keys/values on every call; cross-attention computes its context's keys and
    values on the first call and reuses them afterwards.

    Attributes:
        k: (B, H, M, Dh) cached keys, None before the first call.
        v: (B, H, M, Dh) cached values.
    """

    k: Tensor | None = None
    v: Tensor | None = None

    @property
    def length(self) -> int:
        """Number of cached key positions M."""
        return 0 if self.k is None else self.k.shape[2]


def build_attention_mask(
    key_mask: Tensor | None,
    num_queries: int,
    num_keys: int,
    causal: bool,
    device: torch.device,
    prefix: int = 0,
    causal_offset: Tensor | None = None,
) -> Tensor | None:
    """Boolean mask (True = may attend) broadcastable to (B, H, N, M), or None when nothing is masked.

    Rows whose keys are all masked (a sample that lacks a modality entirely) are opened up to every key, so
    softmax never sees an empty row and never yields NaN; callers ignore those rows through the padding mask.

    Args:
        key_mask: (B, M) bool, True = real key.
        num_queries: N.
        num_keys: M.
        causal: query i sees keys j <= i + (M - N) (the diagonal is aligned to the end for KV caches).
        device: where to build the mask.
        prefix: with ``causal``, the first ``prefix`` keys are visible to every query (prefix-LM masking: a
            bidirectional prefix, e.g. media tokens, followed by causal text).
        causal_offset: with ``causal``, (B,) one diagonal per sample instead of M - N: query i of sample b sees
            keys j <= i + causal_offset[b] (MMSA's MulT offsets its future mask by |M - N| of each sample's lengths).
    """
    mask: Tensor | None = None
    if causal and causal_offset is not None:
        i = torch.arange(num_queries, device=device)[None, :, None]  # (1, N, 1)
        j = torch.arange(num_keys, device=device)[None, None, :]  # (1, 1, M)
        mask = (j <= i + causal_offset.to(device)[:, None, None])[:, None]  # (B, 1, N, M)
        if prefix:
            mask[..., :prefix] = True
    elif causal:
        # Query i may see keys j <= i + (M - N): aligns the causal diagonal to the end when M > N (KV caches).
        offset = num_keys - num_queries
        mask = torch.ones(num_queries, num_keys, dtype=torch.bool, device=device).tril(diagonal=offset)
        if prefix:
            mask[:, :prefix] = True
        mask = mask[None, None]  # (1, 1, N, M)
    if key_mask is not None:
        km = key_mask[:, None, None, :].bool()  # (B, 1, 1, M)
        mask = km if mask is None else (mask & km)
    if mask is None:
        return None
    empty = ~mask.any(dim=-1, keepdim=True)  # (B|1, 1, N, 1)
    return mask | empty


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float) -> Tensor:
    """softmax(q k^T / sqrt(Dh) + mask) v with dropout ``dropout_p`` on the weights: (B, H, N, Dh) from q (B, H, N, Dh),
    k and v (B, H, M, Dh) and a boolean ``mask`` broadcastable to (B, H, N, M) (True = may attend; no empty row).

    ``F.scaled_dot_product_attention``, except on a CPU with ``dropout_p`` > 0: there the weights are computed
    explicitly and dropped with :func:`~mmgpt.layers.dropout.dropout` (the module's docstring says why).
    """
    if dropout_p == 0.0 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, H, N, M)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return fast_dropout(scores.softmax(dim=-1), dropout_p) @ v  # (B, H, N, Dh)


class Attention(nn.Module):
    """Multi-head attention: self-attention when ``context`` is None, cross-attention otherwise.

    Args:
        dim: model width D.
        num_heads: number of heads H; ``dim`` must be divisible by it.
        dropout: dropout on attention weights and on the output projection (training only).
        context_dim: width of the context for cross-attention (defaults to ``dim``).
        proj_dropout: dropout on the output projection when it differs from the weights' (fairseq's layers drop
            the weights at ``attn_dropout`` and the output at ``res_dropout``); None: ``dropout``.
    """

    def __init__(self, *, dim: int, num_heads: int, dropout: float = 0.0, context_dim: int | None = None,
                 proj_dropout: float | None = None) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout if proj_dropout is None else proj_dropout)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        key_mask: Tensor | None = None,
        causal: bool = False,
        prefix: int = 0,
        cache: KVCache | None = None,
        values: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """Attend from ``x`` (B, N, D) to ``context`` (B, M, Dc), or to ``x`` itself.

        Args:
            x: queries (B, N, D).
            context: keys/values (B, M, Dc); None for self-attention.
            key_mask: (B, M) bool, True = real key; padded keys are never attended to. With a self-attention
                cache, M counts the cached keys too.
            causal: forbid query i from seeing keys after position i.
            prefix: with ``causal``, the number of leading keys every query may see (prefix-LM masking).
            cache: keys/values of earlier calls. Self-attention appends this call's keys/values to it; cross-
                attention fills it on the first call and then ignores ``context``.
            values: (B, M, Dc) a separate input of the values, the keys coming from ``context`` (fairseq's layers
                take key and value inputs with dropout masks of their own); None: both from ``context``.
            attn_mask: a mask :func:`build_attention_mask` has built for these shapes, in place of ``key_mask``,
                ``causal`` and ``prefix`` (a stack whose layers share their mask builds it once).
        Returns:
            (B, N, D).
        """
        B, N, D = x.shape
        H = self.num_heads
        q = self.q(x).view(B, N, H, D // H).transpose(1, 2)  # (B, H, N, Dh)
        if context is not None and cache is not None and cache.k is not None:
            k, v = cache.k, cache.v  # cross-attention: the context's keys/values do not change
        else:
            ctx = x if context is None else context
            if values is None:
                k, v = self.kv(ctx).view(B, ctx.shape[1], 2, H, D // H).permute(2, 0, 3, 1, 4)  # 2 x (B, H, M, Dh)
            elif type(self.kv) is nn.Linear:  # keys from the context, values from ``values``: the packed
                # projection's two halves, each on its own input (fairseq's in_proj_k / in_proj_v)
                w, b = self.kv.weight, self.kv.bias
                k = F.linear(ctx, w[:D], b[:D]).view(B, ctx.shape[1], H, D // H).transpose(1, 2)  # (B, H, M, Dh)
                v = F.linear(values, w[D:], b[D:]).view(B, values.shape[1], H, D // H).transpose(1, 2)  # (B, H, M, Dh)
            else:  # a wrapped projection (a LoRA adapter): through the module, so that it adapts both halves
                k = self.kv(ctx)[..., :D].reshape(B, ctx.shape[1], H, D // H).transpose(1, 2)  # (B, H, M, Dh)
                v = self.kv(values)[..., D:].reshape(B, values.shape[1], H, D // H).transpose(1, 2)  # (B, H, M, Dh)
            if cache is not None:
                if context is None and cache.k is not None:
                    k, v = torch.cat([cache.k, k], dim=2), torch.cat([cache.v, v], dim=2)  # (B, H, M, Dh)
                cache.k, cache.v = k, v
        M = k.shape[2]
        mask = attn_mask if attn_mask is not None else build_attention_mask(key_mask, N, M, causal, x.device, prefix)
        y = attend(q, k, v, mask, self.dropout if self.training else 0.0)  # (B, H, N, Dh)
        y = y.transpose(1, 2).reshape(B, N, D)
        return self.proj_drop(self.proj(y))
