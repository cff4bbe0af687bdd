"""What every encoder returns."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class EncoderOutput:
    """Tokens of one modality.

    Attributes:
        tokens: (B, N, D) token embeddings.
        mask: (B, N) bool, True = real token (False = padding).
    """

    tokens: Tensor
    mask: Tensor
