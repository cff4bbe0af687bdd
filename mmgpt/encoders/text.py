"""Text encoder: tokens (bytes, or a trained BPE) -> Transformer tokens. Legend: B batch, T text tokens, D dim."""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from mmgpt.encoders.base import EncoderOutput
from mmgpt.layers import LearnedTokens, Transformer
from mmgpt.tokenizer import Tokenizer, load_tokenizer, tokenizer_vocab


class TextEncoder(nn.Module):
    """Token + learned position embeddings and a stack of Transformer blocks.

    Args:
        dim: width D.
        num_layers: Transformer blocks.
        num_heads: attention heads.
        max_length: longest sequence (position table size).
        vocab_size: token vocabulary; follows the tokenizer (the byte tokenizer's by default).
        tokenizer: a trained byte-level BPE (``tokenizer.json`` path, from ``mmgpt-data tokenizer``) instead of
            bytes; the modality's text processor tokenizes with it.
        causal: GPT-style causal attention (True) or bidirectional (False).
        mlp_ratio: MLP hidden width / D.
        dropout: dropout rate.
    """

    #: The modality kind this encoder reads (checked against the data's declaration).
    modality_kind = "text"

    def __init__(
        self,
        *,
        dim: int,
        num_layers: int,
        num_heads: int,
        max_length: int = 128,
        vocab_size: int | None = None,
        tokenizer: str | None = None,
        causal: bool = False,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.causal = causal
        self.max_length = max_length
        self.tokenizer_spec = tokenizer
        vocab_size = tokenizer_vocab(tokenizer, vocab_size, "model.net.encoders.text")
        self.tok_emb = nn.Embedding(vocab_size, dim)
        self.pos_emb = LearnedTokens(1, max_length, dim)
        self.drop = nn.Dropout(dropout)
        self.transformer = Transformer(
            dim=dim, num_layers=num_layers, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout
        )

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer of this encoder's input (what its processor tokenizes with)."""
        return load_tokenizer(self.tokenizer_spec, self.max_length)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> EncoderOutput:
        """x (B, T) token ids, mask (B, T) True = real token -> tokens (B, T, D)."""
        B, T = x.shape
        if T > self.max_length:
            raise ValueError(f"text has {T} tokens but the encoder's max_length is {self.max_length}")
        if mask is None:
            mask = torch.ones(B, T, dtype=torch.bool, device=x.device)
        h = self.drop(self.tok_emb(x) + self.pos_emb.weight[:, :T])  # (B, T, D)
        return EncoderOutput(self.transformer(h, mask=mask, causal=self.causal), mask)
