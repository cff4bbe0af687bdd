"""The log-mel front end of audio encoders: the one module of mmgpt that imports torchaudio.

torchaudio is in maintenance mode and its releases follow torch's; nothing else here needs it (audio files are
decoded by soundfile and resampled by soxr in :mod:`mmgpt.datamodules.decode`), so replacing the mel transform
later changes this file alone.

Legend: B batch, S waveform samples, C mel bins, L spectrogram frames.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import Tensor, nn


class LogMel(nn.Module):
    """Waveform (B, S) -> log-mel spectrogram (B, C, L) with torchaudio, plus per-frame validity."""

    def __init__(self, *, sample_rate: int, n_mels: int, n_fft: int, hop_length: int) -> None:
        super().__init__()
        self.hop_length = hop_length
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, center=True,
            # Zero (not reflect) padding at the edges: a clip's frames are then the same whether it is the
            # longest clip of its batch or is followed by padding, so encodings never depend on the batch.
            pad_mode="constant",
        )

    def forward(self, wave: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        # The mel transform runs in float32 even under autocast: its power spectrum under/overflows in half.
        with torch.autocast(device_type=wave.device.type, enabled=False):
            spec = self.mel(wave.float())  # (B, C, L)
        spec = torch.log(spec + 1e-6)
        lengths = mask.sum(dim=1)  # (B,)
        frame_lengths = lengths // self.hop_length + 1  # center=True frames
        L = spec.shape[-1]
        frame_mask = torch.arange(L, device=wave.device)[None] < frame_lengths[:, None]  # (B, L)
        frame_mask &= (lengths > 0)[:, None]
        return spec, frame_mask
