"""Building blocks shared by every encoder and fusion: one attention, one MLP, one block."""

from mmgpt.layers.attention import Attention, KVCache, build_attention_mask
from mmgpt.layers.block import Block, MLP, Transformer
from mmgpt.layers.pooling import masked_mean

__all__ = ["Attention", "Block", "KVCache", "MLP", "Transformer", "build_attention_mask", "masked_mean"]
