"""Early fusion by a recurrent network: the modalities' features of each step concatenated, an LSTM over the steps
(MMSA's EF-LSTM). Needs word-aligned modalities (the same steps for every modality).

Legend: B batch, N steps, S the fixed step count, F_m modality m's feature size, F their sum, D dim.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from mmgpt.fusion.base import Fusion, FusionOutput


class EarlyLSTMFusion(Fusion):
    """``[x_1; x_2; ...]`` per step (modalities in sorted order) -> BatchNorm over the steps -> LSTM -> its last
    hidden state (B, D).

    As MMSA's EF-LSTM, the BatchNorm has one channel per step (``BatchNorm1d(steps)`` on (B, S, F)), so sequences
    are padded with zeros to ``steps``; the LSTM then runs over each sample's real steps only (packed by the mask),
    where MMSA's runs over the padding too. The encoders hand the features on as they are (``raw_features``).

    Args:
        modalities: modality names.
        input_dims: modality -> its feature size F_m.
        dim: LSTM width D (the output width).
        steps: S, the step count every sequence is padded to (MMSA: the data's sequence length).
        num_layers: stacked LSTM layers.
        dropout: between LSTM layers.
    """

    decoder_pairing = ("pooled_prefix", False)

    def __init__(self, *, modalities: Sequence[str], input_dims: Mapping[str, int], dim: int, steps: int,
                 num_layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__(modalities=modalities)
        if set(input_dims) != set(self.modalities):
            raise ValueError(f"early_lstm: input_dims {dict(input_dims)} must name exactly {list(self.modalities)}")
        self.steps = int(steps)
        self.norm = nn.BatchNorm1d(self.steps)
        self.rnn = nn.LSTM(sum(int(input_dims[m]) for m in self.modalities), dim, num_layers=num_layers,
                           dropout=dropout if num_layers > 1 else 0.0, batch_first=True)
        #: the width of the fusion's output (the head's input)
        self.out_dim = dim

    def forward(self, tokens: dict[str, Tensor], masks: dict[str, Tensor]) -> FusionOutput:
        self.check_inputs(tokens)
        lengths = {m: tokens[m].shape[1] for m in self.modalities}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"early_lstm needs aligned modalities (the same steps), got {lengths}: use the aligned "
                             "features file")
        N = next(iter(lengths.values()))
        if N > self.steps:
            raise ValueError(f"{N} steps, but the fusion was built for steps={self.steps}")
        x = torch.cat([tokens[m] for m in self.modalities], dim=-1)  # (B, N, F)
        x = self.norm(F.pad(x, (0, 0, 0, self.steps - N)))  # (B, S, F), one BatchNorm channel per step
        mask = torch.stack([masks[m] for m in self.modalities]).any(dim=0)  # (B, N)
        packed = pack_padded_sequence(x, mask.sum(dim=1).clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.rnn(packed)  # h (num_layers, B, D)
        return FusionOutput(pooled=h[-1])
