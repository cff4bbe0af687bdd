"""The fusion interface. Legend: B batch, N tokens, K ensemble members, D dim."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from mmgpt.layers import LearnedTokens


@dataclass
class FusionOutput:
    """What a fusion strategy hands to the head.

    Attributes:
        pooled: (B, D) one vector per sample, or (B, K, D) one per ensemble member (late logit averaging).
        member_mask: (B, K) bool when ``pooled`` is per member: the head's logits are averaged over True members.
        tokens: (B, N, D) the fused token sequence, when the strategy has one.
        mask: (B, N) bool padding mask of ``tokens``.
    """

    pooled: Tensor
    member_mask: Tensor | None = None
    tokens: Tensor | None = None
    mask: Tensor | None = None

    def average_members(self, values: Tensor) -> Tensor:
        """Per-member ``values`` (B, K, ...) averaged over each sample's present members -> (B, ...).

        Values that are already per sample (no ``member_mask``, or ``values`` of one dimension less) pass through.
        """
        if self.member_mask is None or values.dim() < 3:
            return values
        w = self.member_mask.to(values.dtype).unsqueeze(-1)  # (B, K, 1)
        return (values * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)


class Fusion(nn.Module, ABC):
    """Fuses per-modality tokens into pooled features.

    Subclasses receive the modality names at construction (to size per-modality parameters) and must iterate
    modalities in sorted order, so results never depend on the order of the input dicts.
    """

    #: How a text decoder is conditioned on this fusion: (a registered conditioner, whether the decoder
    #: cross-attends). ``fused_prefix`` needs ``FusionOutput.tokens``; ``media_context`` cross-attends to the media
    #: encoders' tokens. The one place fusions are paired with decoders (:func:`mmgpt.registry.decoder_pairing`).
    decoder_pairing: ClassVar[tuple[str, bool] | None] = None

    def __init__(self, *, modalities: Sequence[str]) -> None:
        super().__init__()
        self.modalities: tuple[str, ...] = tuple(sorted(modalities))

    @abstractmethod
    def forward(self, tokens: dict[str, Tensor], masks: dict[str, Tensor]) -> FusionOutput:
        """tokens[m] (B, N_m, D), masks[m] (B, N_m) bool (all False where a sample lacks m) -> FusionOutput."""

    def check_inputs(self, tokens: dict[str, Tensor]) -> None:
        if set(tokens) != set(self.modalities):
            raise KeyError(f"{type(self).__name__} was built for {list(self.modalities)}, got {sorted(tokens)}")


class ModalityEmbedding(nn.Module):
    """A learned type vector per modality, added to that modality's tokens."""

    def __init__(self, *, modalities: Sequence[str], dim: int) -> None:
        super().__init__()
        self.table = nn.ModuleDict({m: LearnedTokens(dim) for m in sorted(modalities)})

    def forward(self, modality: str, x: Tensor) -> Tensor:
        return x + self.table[modality].weight
