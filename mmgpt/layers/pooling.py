"""Pooling over token sequences with padding masks. Legend: B batch, N tokens, D dim."""

from __future__ import annotations

import torch
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` (B, N, D) over the tokens where ``mask`` (B, N) is True; zeros for all-padding rows."""
    w = mask.to(x.dtype).unsqueeze(-1)  # (B, N, 1)
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)


def last_step(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` (B, N, D) at each row's last True step of ``mask`` (B, N), a prefix of real steps -> (B, D); a row
    without any takes step 0.

    A unidirectional recurrent network's output there is its state after the last real step: what packing the
    sequences by their lengths would return, without packing (which is slower on a CPU).
    """
    last = (mask.sum(dim=1) - 1).clamp(min=0)  # (B,)
    return x[torch.arange(x.shape[0], device=x.device), last]  # (B, D)
