"""Pooling over token sequences with padding masks. Legend: B batch, N tokens, D dim."""

from __future__ import annotations

from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` (B, N, D) over the tokens where ``mask`` (B, N) is True; zeros for all-padding rows."""
    w = mask.to(x.dtype).unsqueeze(-1)  # (B, N, 1)
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)
