"""Collation of per-sample dicts into a :class:`~mmgpt.batch.MultimodalBatch`.

A sample is a dict with ``id``, ``label`` (int or None), optional ``caption``, and per modality either a tensor
or None (missing): ``text`` (str), ``image`` (3, H, W) float tensor, ``audio`` (S,) float tensor.
Legend: B batch, T text tokens, S audio samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from mmgpt.batch import MODALITIES, MultimodalBatch
from mmgpt.tokenizer import ByteTokenizer

#: The image normalisation every datamodule applies: pixels in [0, 1] -> (x - mean) / std.
IMAGE_MEAN, IMAGE_STD = 0.5, 0.25


def normalize_image(image: Tensor) -> Tensor:
    """(3, H, W) float pixels in [0, 1] -> the normalised image every mmgpt model is trained on."""
    return (image - IMAGE_MEAN) / IMAGE_STD


class Collate:
    """Pads text and audio, stacks images, builds padding and presence masks.

    Args:
        tokenizer: encodes the ``text`` strings.
        image_size: side of the (square) images; missing images become zeros of this size.
        max_audio_samples: waveforms longer than this are cropped (the datamodule decides where).
        modality_dropout: per-modality probability of marking a present modality absent in a sample (training
            only: give the evaluation loaders a Collate without it); see :func:`random_modality_dropout`.
    """

    def __init__(
        self,
        tokenizer: ByteTokenizer,
        image_size: int,
        max_audio_samples: int,
        modality_dropout: Mapping[str, float] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.max_audio_samples = max_audio_samples
        self.modality_dropout = check_dropout_probs(modality_dropout)

    def __call__(self, samples: Sequence[dict[str, Any]]) -> MultimodalBatch:
        B = len(samples)
        text_ids, text_mask = self.tokenizer.batch_encode([s.get("text") for s in samples])

        images = torch.zeros(B, 3, self.image_size, self.image_size)
        for i, s in enumerate(samples):
            if s.get("image") is not None:
                images[i] = s["image"]

        lengths = [min(len(s["audio"]), self.max_audio_samples) if s.get("audio") is not None else 0 for s in samples]
        S = max(1, max(lengths))
        audio = torch.zeros(B, S)
        audio_mask = torch.zeros(B, S, dtype=torch.bool)
        for i, (s, n) in enumerate(zip(samples, lengths)):
            if n:
                audio[i, :n] = s["audio"][:n]
                audio_mask[i, :n] = True

        present = {
            "text": torch.tensor([s.get("text") is not None for s in samples]),
            "image": torch.tensor([s.get("image") is not None for s in samples]),
            "audio": torch.tensor([n > 0 for n in lengths]),
        }
        if any(p > 0 for p in self.modality_dropout.values()):
            present = random_modality_dropout(present, self.modality_dropout)
        labels = [s.get("label") for s in samples]
        return MultimodalBatch(
            inputs={"text": text_ids, "image": images, "audio": audio},
            masks={"text": text_mask, "audio": audio_mask},
            present=present,
            labels=None if any(y is None for y in labels) else torch.tensor(labels, dtype=torch.long),
            ids=[s.get("id") for s in samples],
            captions=[s.get("caption") or "" for s in samples],
        )


def require_positive(**values: int) -> None:
    """Raise ``ValueError`` naming the ``data.`` key of any value below 1 (batch sizes, sample counts)."""
    for key, value in values.items():
        if value is not None and int(value) < 1:
            raise ValueError(f"data.{key}={value}: expected a positive integer")


def check_dropout_probs(probs: Mapping[str, float] | None) -> dict[str, float]:
    """Validate per-modality dropout probabilities: known modality names, values in [0, 1).

    Raises:
        ValueError: naming the offending key.
    """
    out: dict[str, float] = {}
    for m, p in (probs or {}).items():
        if m not in MODALITIES:
            raise ValueError(f"modality_dropout.{m}: unknown modality (expected one of {list(MODALITIES)})")
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"modality_dropout.{m}={p}: expected a probability in [0, 1)")
        out[m] = float(p)
    return out


def random_modality_dropout(
    present: dict[str, Tensor], probs: dict[str, float], generator: torch.Generator | None = None
) -> dict[str, Tensor]:
    """Drop each modality of each sample with its probability, never dropping a sample's last present modality."""
    names = sorted(present)
    keep = torch.stack([present[m] for m in names], dim=1)  # (B, M)
    p = torch.tensor([float(probs.get(m, 0.0)) for m in names])
    drop = torch.rand(keep.shape, generator=generator) < p
    new = keep & ~drop
    # Samples that would lose everything keep what they had.
    empty = ~new.any(dim=1)
    new[empty] = keep[empty]
    return {m: new[:, j] for j, m in enumerate(names)}
