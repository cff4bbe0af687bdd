"""The GPT of mmgpt: a causal text decoder conditioned on the fused media, with a KV cache for generation.

How the decoder sees the media is injected as a :class:`Conditioner`, one per fusion strategy:

* :class:`FusedPrefix` (early fusion): the fused tokens are a bidirectional prefix of the one causal decoder
  (prefix-LM masking: text attends to the whole prefix and causally to earlier text);
* :class:`MediaContext` (cross-attention fusion): the decoder's blocks cross-attend, through tanh gates, to the
  media tokens and the fusion's summary token;
* :class:`PooledPrefix` (late fusion): the pooled per-modality (or combined) embeddings are a short prefix.

Legend: B batch, T text tokens, P prefix tokens, M context tokens, K pooled members, D dim, V vocabulary.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mmgpt.encoders import EncoderOutput
from mmgpt.fusion import FusionOutput, ModalityEmbedding
from mmgpt.layers import Block, KVCache, cross_attention_block
from mmgpt.tokenizer import Tokenizer, load_tokenizer, tokenizer_vocab


@dataclass
class Conditioning:
    """What the decoder is conditioned on.

    Attributes:
        prefix: (B, P, D) tokens placed before the text (bidirectional among themselves), or None.
        prefix_mask: (B, P) bool, True = real prefix token.
        context: (B, M, D) tokens the decoder cross-attends to, or None.
        context_mask: (B, M) bool, True = real context token.
    """

    prefix: Tensor | None = None
    prefix_mask: Tensor | None = None
    context: Tensor | None = None
    context_mask: Tensor | None = None


class Conditioner(nn.Module, ABC):
    """Turns the fusion output (computed without the text) and the encoder outputs into a :class:`Conditioning`."""

    @abstractmethod
    def forward(self, fused: FusionOutput, encoded: dict[str, EncoderOutput]) -> Conditioning:
        """fused: the fusion output; encoded[m]: tokens (B, N_m, D) and masks (B, N_m) per modality."""


class FusedPrefix(Conditioner):
    """The fused token sequence, projected, as the decoder's prefix (early fusion: prefix-LM).

    Args:
        dim: width D.
    """

    def __init__(self, *, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, fused: FusionOutput, encoded: dict[str, EncoderOutput]) -> Conditioning:
        if fused.tokens is None or fused.mask is None:
            raise ValueError("FusedPrefix needs a fusion that returns its fused tokens (early or cross-attention)")
        return Conditioning(prefix=self.proj(fused.tokens), prefix_mask=fused.mask)


class PooledPrefix(Conditioner):
    """The pooled fusion vector(s) as a prefix of 1 (combined) or K (one per modality) tokens (late fusion).

    Args:
        dim: width D.
    """

    def __init__(self, *, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, fused: FusionOutput, encoded: dict[str, EncoderOutput]) -> Conditioning:
        pooled = fused.pooled if fused.pooled.dim() == 3 else fused.pooled[:, None]  # (B, K, D)
        mask = fused.member_mask
        if mask is None:
            mask = torch.ones(pooled.shape[:2], dtype=torch.bool, device=pooled.device)  # (B, K)
        return Conditioning(prefix=self.proj(pooled), prefix_mask=mask)


class MediaContext(Conditioner):
    """Cross-attention context: the fusion's pooled summary token followed by every media modality's tokens.

    Args:
        dim: width D.
        modalities: the media modalities whose encoder tokens are attended to (sorted; e.g. audio, image).
    """

    def __init__(self, *, dim: int, modalities: Sequence[str] = ("audio", "image")) -> None:
        super().__init__()
        self.modalities = tuple(sorted(modalities))
        self.type_emb = ModalityEmbedding(modalities=self.modalities, dim=dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, fused: FusionOutput, encoded: dict[str, EncoderOutput]) -> Conditioning:
        pooled = fused.pooled if fused.pooled.dim() == 3 else fused.pooled[:, None]  # (B, K, D)
        summary_mask = (
            torch.ones(pooled.shape[:2], dtype=torch.bool, device=pooled.device)
            if fused.member_mask is None
            else fused.member_mask
        )
        ctx = torch.cat([self.proj(pooled), *(self.type_emb(m, encoded[m].tokens) for m in self.modalities)], dim=1)
        mask = torch.cat([summary_mask, *(encoded[m].mask for m in self.modalities)], dim=1)  # (B, M)
        return Conditioning(context=ctx, context_mask=mask)


@dataclass
class DecoderCache:
    """Per-layer KV caches plus the key padding mask of everything already seen (prefix and text).

    Attributes:
        self_attn: one :class:`KVCache` per self-attention block.
        cross_attn: one :class:`KVCache` per cross-attention block (empty list when there are none).
        key_mask: (B, M) bool over cached key positions; None before the first call.
    """

    self_attn: list[KVCache] = field(default_factory=list)
    cross_attn: list[KVCache] = field(default_factory=list)
    key_mask: Tensor | None = None

    @property
    def empty(self) -> bool:
        return self.key_mask is None


@dataclass
class DecoderOutput:
    """Attributes:
    logits: (B, T, V) next-token scores for each text position.
    hidden: (B, T, D) final hidden states of the text positions.
    """

    logits: Tensor
    hidden: Tensor


class TextDecoder(nn.Module):
    """GPT-2 style decoder (token + position embeddings, pre-norm causal blocks, final norm, tied LM head).

    Args:
        conditioner: how the media condition the text (prefix or cross-attention context).
        dim: width D.
        num_layers: causal self-attention blocks.
        num_heads: attention heads.
        vocab_size: vocabulary V; follows the tokenizer (the byte tokenizer's by default).
        max_length: longest text (position table size).
        tokenizer: a trained BPE (``tokenizer.json`` path, ``mmgpt-data tokenizer``) instead of bytes.
        cross_attention: interleave a tanh-gated cross-attention block before every self-attention block
            (Flamingo); needs a conditioner that returns a context.
        gate_init: initial tanh-gate value of the cross-attention blocks (0: the decoder starts as a plain LM).
        mlp_ratio: MLP hidden width / D.
        dropout: dropout rate.
        approximate: GELU approximation (``"tanh"`` matches GPT-2).
    """

    def __init__(
        self,
        *,
        conditioner: Conditioner,
        dim: int,
        num_layers: int,
        num_heads: int,
        vocab_size: int | None = None,
        max_length: int = 128,
        tokenizer: str | None = None,
        cross_attention: bool = False,
        gate_init: float | None = 0.0,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        approximate: str = "none",
    ) -> None:
        super().__init__()
        self.conditioner = conditioner
        self.max_length = max_length
        self.tokenizer_spec = tokenizer
        vocab_size = tokenizer_vocab(tokenizer, vocab_size, "model.net.decoder")
        self.tok_emb = nn.Embedding(vocab_size, dim)
        self.pos_emb = nn.Embedding(max_length, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(dim=dim, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout, approximate=approximate)
            for _ in range(num_layers)
        )
        self.cross_blocks = (
            nn.ModuleList(
                cross_attention_block(dim=dim, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout,
                                      gate_init=gate_init, approximate=approximate)
                for _ in range(num_layers)
            )
            if cross_attention
            else None
        )
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied, as in GPT-2

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer of the texts this decoder reads and writes (captions, prompts, generated text)."""
        return load_tokenizer(self.tokenizer_spec, self.max_length)

    def new_cache(self) -> DecoderCache:
        """An empty cache for :meth:`forward` (one entry per layer)."""
        return DecoderCache(
            self_attn=[KVCache() for _ in self.blocks],
            cross_attn=[KVCache() for _ in self.cross_blocks] if self.cross_blocks is not None else [],
        )

    def forward(
        self,
        ids: Tensor,
        cond: Conditioning,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        cache: DecoderCache | None = None,
    ) -> DecoderOutput:
        """Next-token logits for ``ids``.

        Args:
            ids: (B, T) token ids (the new tokens only when ``cache`` already holds earlier ones).
            cond: the conditioning; its prefix is used on the first call only (later calls find it in the cache).
            mask: (B, T) bool, True = real token (right or left padding); default all True.
            positions: (B, T) position indices; default 0..T-1 (offset by the cached text length).
            cache: a :meth:`new_cache`, filled in place, or None for a full forward pass.
        Returns:
            :class:`DecoderOutput` for the T given positions.
        """
        B, T = ids.shape
        if mask is None:
            mask = torch.ones(B, T, dtype=torch.bool, device=ids.device)
        first = cache is None or cache.empty
        if positions is None:
            start = 0 if first else int(cache.key_mask.shape[1] - _prefix_len(cond))  # type: ignore[union-attr]
            positions = torch.arange(start, start + T, device=ids.device).expand(B, T)
        if int(positions.max()) >= self.max_length:
            raise ValueError(f"text position {int(positions.max())} is beyond the decoder's "
                             f"max_length={self.max_length}")
        x = self.drop(self.tok_emb(ids) + self.pos_emb(positions))  # (B, T, D)
        prefix = 0
        if first and cond.prefix is not None:
            prefix = cond.prefix.shape[1]
            x = torch.cat([cond.prefix, x], dim=1)  # (B, P + T, D)
            mask = torch.cat([cond.prefix_mask, mask], dim=1)  # (B, P + T)
        key_mask = mask if first else torch.cat([cache.key_mask, mask], dim=1)  # type: ignore[union-attr]
        if cache is not None:
            cache.key_mask = key_mask
        for i, block in enumerate(self.blocks):
            if self.cross_blocks is not None:
                if cond.context is None:
                    raise ValueError("this decoder cross-attends: its conditioner must return a context")
                x = self.cross_blocks[i](
                    x, context=cond.context, context_mask=cond.context_mask,
                    cache=cache.cross_attn[i] if cache is not None else None,
                )
            x = block(x, mask=key_mask, causal=True, prefix=prefix,
                      cache=cache.self_attn[i] if cache is not None else None)
        h = self.norm(x[:, prefix:])  # (B, T, D)
        return DecoderOutput(logits=self.lm_head(h), hidden=h)


def _prefix_len(cond: Conditioning) -> int:
    return 0 if cond.prefix is None else cond.prefix.shape[1]


class NoConditioning(Conditioner):
    """No media at all: the decoder is a plain language model (GPT-2 parity, text-only pre-training)."""

    def forward(self, fused: FusionOutput, encoded: dict[str, EncoderOutput]) -> Conditioning:
        return Conditioning()
