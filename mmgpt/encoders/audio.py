"""Audio encoder: log-mel front end, conv subsampling, Transformer.

Legend: B batch, S waveform samples, C mel bins, L spectrogram frames, F encoder frames, D dim.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmgpt.encoders.base import EncoderOutput
from mmgpt.encoders.log_mel import LogMel
from mmgpt.layers import LearnedTokens, Transformer


class AudioEncoder(nn.Module):
    """Log-mel front end, two stride-2 convolutions (4x fewer frames), position embeddings, Transformer blocks.

    Args:
        dim: width D.
        num_layers: Transformer blocks.
        num_heads: attention heads.
        sample_rate: sample rate of the incoming waveforms (the datamodule resamples to it).
        n_mels: mel bins C.
        n_fft: FFT size.
        hop_length: hop between spectrogram frames, in samples.
        max_frames: longest encoder sequence F (position table size).
        mlp_ratio: MLP hidden width / D.
        dropout: dropout rate.
    """

    #: The modality kind this encoder reads (checked against the data's declaration).
    modality_kind = "audio"

    def __init__(
        self,
        *,
        dim: int,
        num_layers: int,
        num_heads: int,
        sample_rate: int = 8000,
        n_mels: int = 32,
        n_fft: int = 256,
        hop_length: int = 80,
        max_frames: int = 256,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.max_frames = max_frames
        self.frontend = LogMel(sample_rate=sample_rate, n_mels=n_mels, n_fft=n_fft, hop_length=hop_length)
        # Per-frame LayerNorm over mel bins: no batch statistics, so a sample's tokens never depend on its batch.
        self.norm_in = nn.LayerNorm(n_mels)
        self.conv1 = nn.Conv1d(n_mels, dim, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=3, stride=2, padding=1)
        self.pos_emb = LearnedTokens(1, max_frames, dim)
        self.drop = nn.Dropout(dropout)
        self.transformer = Transformer(
            dim=dim, num_layers=num_layers, num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout
        )

    def forward(self, x: Tensor, mask: Tensor | None = None) -> EncoderOutput:
        """x (B, S) waveform, mask (B, S) True = real sample -> tokens (B, F, D), F = ceil(ceil(L/2)/2)."""
        if mask is None:
            mask = torch.ones_like(x, dtype=torch.bool)
        spec, frame_mask = self.frontend(x, mask)  # (B, C, L), (B, L)
        # Padded positions are zeroed before each convolution, exactly as the convolutions' own zero padding
        # would be, so a clip encodes the same whether or not padding follows it in the batch.
        spec = self.norm_in(spec.transpose(1, 2)).transpose(1, 2) * frame_mask[:, None]  # (B, C, L)
        h = nn.functional.gelu(self.conv1(spec))  # (B, D, ceil(L/2))
        mask1 = frame_mask[:, ::2]  # (B, ceil(L/2)): output j is real if its centre frame 2j is
        h = self.conv2(h * mask1[:, None]).transpose(1, 2)  # (B, F, D)
        tok_mask = mask1[:, ::2]  # (B, F)
        F_ = h.shape[1]
        if F_ > self.max_frames:
            raise ValueError(f"audio gives {F_} frames but the encoder's max_frames is {self.max_frames}")
        h = self.drop(h + self.pos_emb.weight[:, :F_])
        return EncoderOutput(self.transformer(h, mask=tok_mask), tok_mask)
