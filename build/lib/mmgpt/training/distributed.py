"""Helpers the distributed trainer configs point at."""

from __future__ import annotations

from torch import nn

from mmgpt.layers import Block


def fsdp_wrap_classes() -> set[type[nn.Module]]:
    """Module classes FSDP shards as units (``auto_wrap_policy``) and checkpoints activations of: the blocks."""
    return {Block}
