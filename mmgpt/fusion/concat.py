"""Concatenation fusion: the pooled modality vectors side by side (MMSA's LF-DNN fuses its sub-networks so).

Legend: B batch, N_m tokens of modality m, d_m its width.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mmgpt.fusion.base import Fusion, FusionOutput
from mmgpt.layers import masked_mean


class ConcatFusion(Fusion):
    """Each modality's tokens mean-pooled (masked), concatenated in sorted order: ``sum_m d_m`` features, no
    parameters. A modality a sample lacks contributes zeros. The layers after it are the head's (``mlp_head``).

    Args:
        modalities: modality names.
        dim: the encoders' width, for the modalities ``input_dims`` does not name.
        input_dims: modality -> its encoder's width.
    """

    decoder_pairing = ("pooled_prefix", False)

    def __init__(self, *, modalities: Sequence[str], dim: int | None = None,
                 input_dims: Mapping[str, int] | None = None) -> None:
        super().__init__(modalities=modalities)
        given = dict(input_dims or {})
        missing = [m for m in self.modalities if m not in given and dim is None]
        if missing or set(given) - set(self.modalities):
            raise ValueError(f"concat: input_dims {given} must give a width for every modality of "
                             f"{list(self.modalities)} that dim (= {dim}) does not")
        #: the width of the fusion's output (the head's input)
        self.out_dim = sum(int(given.get(m, dim)) for m in self.modalities)  # type: ignore[arg-type]

    def forward(self, tokens: dict[str, Tensor], masks: dict[str, Tensor]) -> FusionOutput:
        self.check_inputs(tokens)
        pooled = [masked_mean(tokens[m], masks[m]) for m in self.modalities]  # (B, d_m) each; zeros where absent
        return FusionOutput(pooled=torch.cat(pooled, dim=-1))  # (B, sum d_m)
