"""Building blocks shared by every encoder and fusion: one attention, one MLP, one block, one weight init.

Imports nothing else from mmgpt; everything else in the network code builds on it.
"""

from mmgpt.layers.attention import Attention, KVCache, build_attention_mask
from mmgpt.layers.block import (
    MLP,
    Block,
    GatedCrossAttentionBlock,
    SharedNormBlock,
    Transformer,
    cross_attention_block,
)
from mmgpt.layers.dropout import Dropout
from mmgpt.layers.init import init_weights, mark_pretrained
from mmgpt.layers.pooling import last_step, masked_mean
from mmgpt.layers.tokens import LearnedTokens, accept_unwrapped_names, unwrapped_names

__all__ = [
    "MLP", "Attention", "Block", "Dropout", "GatedCrossAttentionBlock", "KVCache", "LearnedTokens", "SharedNormBlock",
    "Transformer",
    "accept_unwrapped_names", "build_attention_mask", "cross_attention_block", "init_weights", "last_step",
    "mark_pretrained", "masked_mean", "unwrapped_names",
]
