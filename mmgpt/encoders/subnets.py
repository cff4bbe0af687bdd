"""Sub-networks that turn a feature sequence into one vector per sample: MMSA's pre-fusion networks (TFN, LMF, LF-DNN).

Legend: B batch, N feature steps, F feature size, H hidden width, D dim (the vector's width).

Both return a sequence of one token, ``EncoderOutput(tokens (B, 1, D), mask (B, 1))``, the mask True where the sample
has the modality at all, so the pooled fusions (``tensor``, ``low_rank``, ``concat``) read the vector as it is.
Their widths may differ per modality; the fusions take them as ``input_dims``.

* :class:`LSTMEncoder` is MMSA's ``TextSubNet``: an LSTM over the steps, its last hidden state, dropout, a Linear.
* :class:`MLPSubNet` is MMSA's ``SubNet``: the time-averaged features, BatchNorm, dropout and three ReLU layers.

:class:`RawFeatures` and :class:`TemporalConv` are the odd ones out: they hand a sequence on, (B, N, F) and
(B, N - k + 1, D), for a fusion that reads the steps themselves (MMSA's EF-LSTM: ``fusion: early_lstm``; MMSA's
MulT: ``mult_mmsa``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmgpt.encoders.base import EncoderOutput
from mmgpt.layers import Dropout, last_step, masked_mean


def _as_steps(x: Tensor, mask: Tensor | None, input_dim: int) -> tuple[Tensor, Tensor]:
    """``x`` as (B, N, F) and its mask (B, N) (all True when none is given); the feature size checked."""
    if x.dim() == 2:
        x = x[:, None]  # (B, 1, F): one vector per sample
    if x.shape[-1] != input_dim:
        raise ValueError(f"features of size {x.shape[-1]}, but the encoder was built for input_dim={input_dim}")
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return x, mask


def _stored_steps(name: str, steps: int | None) -> int | None:
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"{name}: stored_steps={steps!r} must be a positive integer or null")
    return steps


def _zero_padded(x: Tensor, mask: Tensor, steps: int) -> Tensor:
    """``x`` (B, N, F) with its padded steps zeroed, padded with zeros to ``steps`` (B, steps, F)."""
    if x.shape[1] > steps:
        raise ValueError(f"a sequence of {x.shape[1]} steps, but stored_steps={steps} (the steps the file stores): "
                         "set stored_steps to the file's")
    return F.pad(x * mask[..., None].to(x.dtype), (0, 0, 0, steps - x.shape[1]))


def _need_input_dim(name: str, input_dim: int | None) -> int:
    if input_dim is None or int(input_dim) < 1:
        raise ValueError(f"{name}: input_dim={input_dim} (the feature size F of the data's declaration, "
                         "data.modalities.<name>.dim)")
    return int(input_dim)


class LSTMEncoder(nn.Module):
    """An LSTM over the real steps of a feature sequence; its last hidden state -> Dropout -> Linear H -> D.

    MMSA's ``TextSubNet`` (TFN, LMF, LF-DNN), with one difference: the state read is the one after each sample's
    last real step (padding does not reach it); MMSA reads the state after the padding. Real steps must come first
    (padding at the end). The LSTM runs over the whole padded batch, as MMSA's does, and the state is picked per
    sample (:func:`~mmgpt.layers.last_step`): the same result as packing by lengths, faster on a CPU.

    Args:
        input_dim: feature size F; None takes it from the data's declaration (``data.modalities.<name>.dim``).
        hidden_dim: LSTM width H.
        dim: output width D.
        num_layers: stacked LSTM layers.
        dropout: dropout on the last hidden state, and between LSTM layers when there are several. (MMSA's
            ``TextSubNet`` sets its dropout to 0 when it has one layer, as all of MMSA's configs do.)
        stored_steps: None reads the state after each sample's last real step. A number S runs the LSTM over every
            sequence zero-padded to S steps and reads the state after the last: MMSA's ``TextSubNet``, which runs
            through the padding its file stores (S: the file's stored text steps).
    """

    #: The modality kind this encoder reads (checked against the data's declaration).
    modality_kind = "features"

    def __init__(self, *, input_dim: int | None, hidden_dim: int, dim: int, num_layers: int = 1,
                 dropout: float = 0.0, stored_steps: int | None = None) -> None:
        super().__init__()
        self.input_dim = _need_input_dim("lstm_encoder", input_dim)
        self.stored_steps = _stored_steps("lstm_encoder", stored_steps)
        self.rnn = nn.LSTM(self.input_dim, hidden_dim, num_layers=num_layers, batch_first=True,
                           dropout=dropout if num_layers > 1 else 0.0)
        self.drop = Dropout(dropout)
        self.proj = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> EncoderOutput:
        """x (B, N, F), mask (B, N) True = real step (a prefix) -> one token (B, 1, D)."""
        x, mask = _as_steps(x, mask, self.input_dim)
        if self.stored_steps is None:
            out, _ = self.rnn(x)  # (B, N, H): the last layer's state after each step
            y = last_step(out, mask)  # (B, H), the state after the last real step
        else:  # MMSA's: through the zero padding up to the stored steps, the state after the last
            out, _ = self.rnn(_zero_padded(x, mask, self.stored_steps))
            y = out[:, -1]
        y = self.proj(self.drop(y))  # (B, D)
        return EncoderOutput(y[:, None], mask.any(dim=1, keepdim=True))


class MLPSubNet(nn.Module):
    """The features averaged over the real steps -> BatchNorm -> Dropout -> ``num_layers`` x (Linear, ReLU).

    MMSA's ``SubNet`` (TFN, LMF, LF-DNN's audio and vision networks), which reads the time-averaged features its
    loader computes (``need_normalized``). The average here is over the real steps only; MMSA's loader averages
    over every stored step, the zero padding included.

    Args:
        input_dim: feature size F; None takes it from the data's declaration (``data.modalities.<name>.dim``).
        dim: width D of every layer and of the output.
        num_layers: Linear + ReLU layers (MMSA: 3).
        dropout: dropout on the normalised input.
        stored_steps: None averages the real steps. A number S divides their sum by S: the average over a sequence
            zero-padded to S steps, as MMSA's loader takes it over every step its file stores (S: the file's
            stored steps of this modality).
    """

    modality_kind = "features"

    def __init__(self, *, input_dim: int | None, dim: int, num_layers: int = 3, dropout: float = 0.0,
                 stored_steps: int | None = None) -> None:
        super().__init__()
        self.input_dim = _need_input_dim("mlp_subnet", input_dim)
        self.stored_steps = _stored_steps("mlp_subnet", stored_steps)
        self.norm = nn.BatchNorm1d(self.input_dim)
        self.drop = Dropout(dropout)
        widths = [self.input_dim] + [dim] * num_layers
        self.layers = nn.Sequential(*(m for a, b in zip(widths, widths[1:]) for m in (nn.Linear(a, b), nn.ReLU())))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> EncoderOutput:
        """x (B, N, F) or (B, F), mask (B, N) True = real step -> one token (B, 1, D)."""
        x, mask = _as_steps(x, mask, self.input_dim)
        if self.stored_steps is None:
            mean = masked_mean(x, mask)  # (B, F)
        else:  # MMSA's: the zero padding up to the stored steps counts
            mean = _zero_padded(x, mask, self.stored_steps).sum(dim=1) / self.stored_steps
        h = self.layers(self.drop(self.norm(mean)))  # (B, D)
        return EncoderOutput(h[:, None], mask.any(dim=1, keepdim=True))


class RawFeatures(nn.Module):
    """The feature sequence as it is: tokens (B, N, F) and their mask, no parameters (``dim`` = F).

    For fusions that read the features themselves, such as MMSA's EF-LSTM (:class:`~mmgpt.fusion.EarlyLSTMFusion`).

    Args:
        input_dim: feature size F; None takes it from the data's declaration (``data.modalities.<name>.dim``).
    """

    modality_kind = "features"

    def __init__(self, *, input_dim: int | None) -> None:
        super().__init__()
        self.input_dim = self.dim = _need_input_dim("raw_features", input_dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> EncoderOutput:
        """x (B, N, F), mask (B, N) -> the same, as tokens."""
        x, mask = _as_steps(x, mask, self.input_dim)
        return EncoderOutput(x, mask)


class TemporalConv(nn.Module):
    """Input dropout -> a 1-D convolution over the steps, ``kernel_size`` wide, no padding, no bias (F -> D):
    MMSA's MulT projections (``proj_l`` / ``proj_a`` / ``proj_v``; text dropped out at ``text_dropout`` first).

    Without padding the sequence shortens by ``kernel_size - 1``. An output step is real when its whole window is
    (a sequence of n real steps gives n - k + 1), so each sample's real outputs are what the convolution gives on
    that sample alone, unpadded, whatever its batch-mates' lengths. Padded input steps are zeroed first. A sequence
    shorter than the kernel (0 < n < k) gives one real step, its window holding the n real steps and zeros after
    them: what MMSA's convolution reads from its zero-padded arrays. A batch whose padded length is under the
    kernel is padded with zeros up to it. A sample without the modality (n = 0) has no real step.

    (MMSA skips the convolution of a modality whose feature size already equals its width; here it always runs.)

    Args:
        input_dim: feature size F; None takes it from the data's declaration (``data.modalities.<name>.dim``).
        dim: output width D (MMSA: ``dst_feature_dim_nheads[0]``).
        kernel_size: k (MMSA: ``conv1d_kernel_size_<l|a|v>``).
        dropout: dropout on the input features (MMSA: ``text_dropout`` for the text, none for audio and vision).
    """

    modality_kind = "features"

    def __init__(self, *, input_dim: int | None, dim: int, kernel_size: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.input_dim = _need_input_dim("temporal_conv", input_dim)
        if kernel_size < 1:
            raise ValueError(f"temporal_conv: kernel_size={kernel_size} must be at least 1")
        self.kernel_size = int(kernel_size)
        self.drop = Dropout(dropout)
        self.conv = nn.Conv1d(self.input_dim, dim, kernel_size=self.kernel_size, padding=0, bias=False)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> EncoderOutput:
        """x (B, N, F), mask (B, N) True = real step (a prefix) -> tokens (B, max(N, k) - k + 1, D) and their mask."""
        x, mask = _as_steps(x, mask, self.input_dim)
        k, N = self.kernel_size, x.shape[1]
        x = x.masked_fill(~mask[..., None], 0.0)  # padding reads as MMSA's zeros, whatever the collate put there
        if N < k:
            x, mask = F.pad(x, (0, 0, 0, k - N)), F.pad(mask, (0, k - N))  # (B, k, F)
        h = self.conv(self.drop(x).transpose(1, 2)).transpose(1, 2)  # (B, N', D), N' = max(N, k) - k + 1
        n = mask.sum(dim=1)  # (B,) real input steps
        real = torch.where(n > 0, (n - k + 1).clamp(min=1), 0)  # (B,) real output steps
        out_mask = torch.arange(h.shape[1], device=h.device)[None, :] < real[:, None]  # (B, N')
        return EncoderOutput(h, out_mask)
