"""Early fusion by a recurrent network: the modalities' features of each step concatenated, an LSTM over the steps
(MMSA's EF-LSTM). Needs word-aligned modalities (the same steps for every modality).

Legend: B batch, N steps, S the fixed step count, F_m modality m's feature size, F their sum, D dim.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmgpt.fusion.base import Fusion, FusionOutput
from mmgpt.layers import last_step


class EarlyLSTMFusion(Fusion):
    """``[x_1; x_2; ...]`` per step (modalities in sorted order) -> BatchNorm over the steps -> LSTM -> its last
    hidden state (B, D).

    As MMSA's EF-LSTM, the BatchNorm has one channel per step (``BatchNorm1d(steps)`` on (B, S, F)), so sequences
    are padded with zeros to ``steps``; the state read is the one after each sample's last real step
    (:func:`~mmgpt.layers.last_step`), where MMSA reads the one after the padding. The encoders hand the features
    on as they are (``raw_features``).

    Args:
        modalities: modality names.
        dim: LSTM width D (the output width).
        steps: S, the step count every sequence is padded to (MMSA: the data's sequence length).
        input_dims: modality -> its encoder's width F_m (``raw_features``: the feature size); None: all ``dim``.
        num_layers: stacked LSTM layers.
        dropout: between LSTM layers.
    """

    decoder_pairing = ("pooled_prefix", False)

    def __init__(self, *, modalities: Sequence[str], dim: int, steps: int, input_dims: Mapping[str, int] | None = None,
                 num_layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__(modalities=modalities)
        widths = dict(input_dims) if input_dims is not None else {m: dim for m in self.modalities}
        if set(widths) != set(self.modalities):
            raise ValueError(f"early_lstm: input_dims {widths} must name exactly {list(self.modalities)}")
        self.steps = int(steps)
        self.norm = nn.BatchNorm1d(self.steps)
        self.rnn = nn.LSTM(sum(int(widths[m]) for m in self.modalities), dim, num_layers=num_layers,
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
        out, _ = self.rnn(x[:, :N])  # (B, N, D): the steps past the batch's longest sequence cannot matter
        return FusionOutput(pooled=last_step(out, mask))  # (B, D), the state after each sample's last real step
