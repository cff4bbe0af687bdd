"""The contract every pretrained backbone encoder keeps (Hugging Face, timm): backbone -> hidden states -> projection.

A :class:`BackboneEncoder` wraps a pretrained model (``self.backbone``, its parameters under ``backbone.``) and a
learned projection (``self.proj``) from the backbone's hidden size to ``model.dim``. Splitting ``forward`` into
:meth:`hidden` and :meth:`project` is what the frozen-feature cache relies on (it stores :meth:`hidden`'s output
and later runs only :meth:`project`), and :meth:`layers` is what fine-tuning (``unfreeze_last``), activation
checkpointing and FSDP wrapping act on. :attr:`identity` names the weights a checkpoint was trained on, so a
checkpoint of a frozen backbone stores only the trained weights and re-reads (and checks) the backbone.

Legend: B batch, N tokens, H backbone hidden size, D model dim.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from torch import Tensor, nn

from mmgpt.encoders.base import EncoderOutput


@dataclass(frozen=True)
class BackboneIdentity:
    """Which pretrained weights a backbone was loaded from.

    Attributes:
        name_or_path: the hub id or local directory / file the user gave.
        sha256: a content hash of the weight files (what a checkpoint is checked against when re-read).
    """

    name_or_path: str
    sha256: str


class BackboneEncoder(nn.Module, ABC):
    """A pretrained backbone and a learned projection to ``dim`` (see the module doc).

    Args:
        backbone: the pretrained model.
        hidden_size: H, the width of the hidden states :meth:`hidden` returns.
        dim: D, the width of the tokens :meth:`forward` returns.
        identity: where the weights came from, with their hash.
    """

    def __init__(self, *, backbone: nn.Module, hidden_size: int, dim: int, identity: BackboneIdentity) -> None:
        super().__init__()
        self.backbone = backbone
        self.proj = nn.Linear(hidden_size, dim)
        self.identity = identity

    @abstractmethod
    def hidden(self, x: Tensor, mask: Tensor | None = None) -> EncoderOutput:
        """Encoder inputs (as the modality's processor collates them) -> hidden states (B, N, H) and mask (B, N)."""

    @abstractmethod
    def layers(self) -> list[nn.Module]:
        """The backbone's repeated blocks, input side first (what ``unfreeze_last`` / wrapping act on)."""

    def project(self, hidden: EncoderOutput) -> EncoderOutput:
        """Hidden states (B, N, H) -> tokens (B, N, D), same mask."""
        return EncoderOutput(self.proj(hidden.tokens), hidden.mask)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> EncoderOutput:
        return self.project(self.hidden(x, mask))
