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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mmgpt.encoders.base import EncoderOutput
from mmgpt.encoders.tuning import Tuning, apply, parse_tuning, set_mode


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
        tuning: how the backbone is fine-tuned (a :class:`Tuning` or its fields as a mapping; default frozen).
            Subclasses take it as their ``tuning`` argument and pass it on; the network builder calls
            :meth:`apply_tuning` once the encoder is complete.
    """

    def __init__(self, *, backbone: nn.Module, hidden_size: int, dim: int, identity: BackboneIdentity,
                 tuning: Tuning | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.proj = nn.Linear(hidden_size, dim)
        self.identity = identity
        self.tuning = tuning if isinstance(tuning, Tuning) else parse_tuning(tuning or {})

    def apply_tuning(self) -> None:
        """Freeze / unfreeze / add adapters / switch on gradient checkpointing as :attr:`tuning` says
        (:mod:`mmgpt.encoders.tuning`; called once by the network builder)."""
        apply(self)

    @property
    def frozen(self) -> bool:
        """Whether nothing in the backbone trains: it then runs in eval mode under ``torch.no_grad``."""
        return self.tuning.freeze and not self.tuning.unfreeze_last and not self.tuning.lora

    def train(self, mode: bool = True) -> BackboneEncoder:
        """``nn.Module.train``, except that the frozen part of the backbone stays in eval mode (no dropout, fixed
        batch-norm statistics), whatever Lightning's ``model.train()`` asks."""
        super().train(mode)
        if getattr(self, "_tuning_applied", False):
            set_mode(self, mode)
        return self

    @abstractmethod
    def hidden(self, x: Tensor, mask: Tensor | None = None) -> EncoderOutput:
        """Encoder inputs (as the modality's processor collates them) -> hidden states (B, N, H) and mask (B, N)."""

    @abstractmethod
    def layers(self) -> list[nn.Module]:
        """The backbone's repeated blocks, input side first (what ``unfreeze_last`` / wrapping act on)."""

    def feature_fingerprint(self) -> str:
        """Everything :meth:`hidden` depends on besides its input, as a stable string: the class, the weights' hash
        and the hidden layer chosen (``self.layer`` where a subclass has one). Part of the frozen-feature cache's key;
        a subclass whose :meth:`hidden` depends on more settings adds them."""
        return f"{type(self).__name__}:{self.identity.sha256}:layer={getattr(self, 'layer', None)}"

    def project(self, hidden: EncoderOutput) -> EncoderOutput:
        """Hidden states (B, N, H) -> tokens (B, N, D), same mask."""
        return EncoderOutput(self.proj(hidden.tokens), hidden.mask)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> EncoderOutput:
        if self.frozen:  # no graph, no saved activations for a backbone nothing in which trains
            with torch.no_grad():
                hidden = self.hidden(x, mask)
            return self.project(hidden)
        return self.project(self.hidden(x, mask))
