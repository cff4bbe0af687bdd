"""The batch every datamodule yields and every model takes.

Legend: B batch, T text tokens, S audio samples, H/W image height/width.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

#: The modalities of the embedded synthetic set and of data that declares none (``data.modalities``). Data may
#: declare any names (of kind text, image, audio or features); models iterate them in sorted order.
MODALITIES: tuple[str, ...] = ("audio", "image", "text")


@dataclass
class MultimodalBatch:
    """A collated batch of multimodal samples, one entry per declared modality name.

    Attributes:
        inputs: model inputs per modality, by its kind: text (B, T) int64 token ids, image (B, 3, H, W) float,
            audio (B, S) float waveform, features (B, N, F) float. Every modality a model has an encoder for is
            present as a tensor, zero-filled for samples that lack it, so every encoder runs on every batch (no DDP
            unused parameters).
        masks: per-modality input padding masks, True = real element: text (B, T), audio (B, S), features (B, N).
            Modalities without padding (images) may be absent.
        present: per-sample presence of each modality, (B,) bool.
        labels: (B,) int64 class indices, (B,) float32 regression targets, (B, C) float32 multi-hot labels, or
            None for unlabelled data.
        ids: sample identifiers, for error reports and per-sample outputs.
        captions: optional target caption per sample (used by the generative objective).
        precomputed: modalities whose ``inputs`` are already a backbone's hidden states (B, N, H) with their
            ``masks`` (B, N), read from the frozen-feature cache: the model runs only the encoder's projection.
    """

    inputs: dict[str, Tensor]
    masks: dict[str, Tensor] = field(default_factory=dict)
    present: dict[str, Tensor] = field(default_factory=dict)
    labels: Tensor | None = None
    ids: list[Any] = field(default_factory=list)
    captions: list[str] | None = None
    precomputed: frozenset[str] = frozenset()

    @property
    def batch_size(self) -> int:
        return next(iter(self.inputs.values())).shape[0]

    @property
    def device(self) -> torch.device:
        return next(iter(self.inputs.values())).device

    def presence(self, modality: str) -> Tensor:
        """(B,) bool presence of ``modality``; all True when the datamodule gave no presence mask."""
        if modality in self.present:
            return self.present[modality]
        return torch.ones(self.batch_size, dtype=torch.bool, device=self.device)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MultimodalBatch:
        """Move every tensor to ``device`` (Lightning calls this for batch transfer)."""

        def move(d: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.to(device, non_blocking=non_blocking) for k, v in d.items()}

        labels = self.labels.to(device, non_blocking=non_blocking) if self.labels is not None else None
        return replace(self, inputs=move(self.inputs), masks=move(self.masks), present=move(self.present),
                       labels=labels)

    def pin_memory(self) -> MultimodalBatch:
        """Pin every tensor (the DataLoader calls this when ``pin_memory=True``)."""

        def pin(d: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.pin_memory() for k, v in d.items()}

        labels = self.labels.pin_memory() if self.labels is not None else None
        return replace(self, inputs=pin(self.inputs), masks=pin(self.masks), present=pin(self.present), labels=labels)

    def with_modalities(self, keep: set[str] | frozenset[str]) -> MultimodalBatch:
        """A copy in which every modality outside ``keep`` is marked absent for every sample.

        Used for missing-modality evaluation and for the per-modality ceilings.
        """
        present = {m: (self.presence(m) if m in keep else torch.zeros_like(self.presence(m))) for m in self.inputs}
        return replace(self, present=present)
