"""The unimodal baseline: one modality's encoder and the head, nothing fused.

A comparison of fusions needs to show that fusing helps at all: ``model/fusion=unimodal_<modality>`` trains that
modality's encoder with the same head as every fusion, on the same data. The encoder's tokens are pooled (masked
mean) and normalised; no other encoder is built or run (:func:`mmgpt.registry.build_network` builds only the
encoders a fusion uses).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from mmgpt.fusion.base import Fusion, FusionOutput
from mmgpt.layers import masked_mean


class UnimodalBaseline(Fusion):
    """Masked mean of one modality's encoder tokens, then LayerNorm.

    Args:
        modalities: exactly one modality name.
        dim: width D.
    """

    decoder_pairing = ("pooled_prefix", False)

    def __init__(self, *, modalities: Sequence[str], dim: int) -> None:
        super().__init__(modalities=modalities)
        if len(self.modalities) != 1:
            raise ValueError(f"a unimodal baseline uses exactly one modality, got {list(self.modalities)}")
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: dict[str, Tensor], masks: dict[str, Tensor]) -> FusionOutput:
        self.check_inputs(tokens)
        (m,) = self.modalities
        return FusionOutput(pooled=self.norm(masked_mean(tokens[m], masks[m])))
