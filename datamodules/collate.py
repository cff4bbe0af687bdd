"""Collation of per-sample dicts into a :class:`~mmgpt.batch.MultimodalBatch`, asking each modality's processor.

A sample is a dict with ``id``, ``label`` (int or None), optional ``caption``, and per modality name its
processor's ``transform`` output, or None (missing). See docs/data.md. A batch of a table's rows gathered at once
(:class:`Rows`, from a dataset with a ``rows`` method) takes a batched path that gives the same batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmgpt.batch import MultimodalBatch
from mmgpt.datamodules.processors import IMAGE_MEAN, IMAGE_STD, Processor, normalize_image

__all__ = ["IMAGE_MEAN", "IMAGE_STD", "Collate", "Rows", "check_dropout_probs", "normalize_image",
           "random_modality_dropout", "require_positive", "rows_labels"]


@dataclass
class Rows:
    """A batch's samples as a table holds them, gathered with one indexing per column instead of one sample dict
    each (see :meth:`mmgpt.datamodules.base.ProcessedDataset.rows`).

    Attributes:
        ids: the samples' ids.
        labels: their labels, (B,) or (B, C) multi-hot, as the table stores them.
        values: modality name -> (stored rows (B, T, F) or (B, F), true lengths (B,) or None for all steps).
    """

    ids: list[Any]
    labels: np.ndarray
    values: dict[str, tuple[np.ndarray, np.ndarray | None]]

    def __len__(self) -> int:
        return len(self.ids)


class Collate:
    """Builds a batch: each modality's processor pads/stacks its column; presence masks; modality dropout.

    Args:
        processors: modality name -> its processor; every name is in every batch's ``inputs``.
        modality_dropout: per-modality probability of marking a present modality absent in a sample (training
            only: give the evaluation loaders a Collate without it); see :func:`random_modality_dropout`.
    """

    def __init__(self, processors: Mapping[str, Processor],
                 modality_dropout: Mapping[str, float] | None = None) -> None:
        self.processors = dict(sorted(processors.items()))
        self.modality_dropout = check_dropout_probs(modality_dropout, self.processors)
        # Modalities whose processor yields cached backbone hidden states (datamodules/feature_cache/).
        self.precomputed = frozenset(n for n, p in self.processors.items() if getattr(p, "precomputed", False))

    def __call__(self, samples: Sequence[dict[str, Any]] | Rows) -> MultimodalBatch:
        inputs: dict[str, Tensor] = {}
        masks: dict[str, Tensor] = {}
        present: dict[str, Tensor] = {}
        rows = samples if isinstance(samples, Rows) else None
        for name, processor in self.processors.items():
            if rows is not None:
                inputs[name], mask, present[name] = processor.collate_rows(*rows.values[name])
            else:
                inputs[name], mask, present[name] = processor.collate([s.get(name) for s in samples])
            if mask is not None:
                masks[name] = mask
        if any(p > 0 for p in self.modality_dropout.values()):
            present = random_modality_dropout(present, self.modality_dropout)
        if rows is not None:
            labels: Tensor | None = rows_labels(rows.labels)
            ids, captions = list(rows.ids), [""] * len(rows)
        else:
            listed = [s.get("label") for s in samples]
            labels = None if any(y is None for y in listed) else batch_labels(listed)
            ids, captions = [s.get("id") for s in samples], [s.get("caption") or "" for s in samples]
        return MultimodalBatch(inputs=inputs, masks=masks, present=present, labels=labels, ids=ids,
                               captions=captions, precomputed=self.precomputed)


def batch_labels(labels: Sequence[Any]) -> Tensor:
    """Per-sample labels -> the batch's: class indices (B,) int64, float targets (B,) float32 (regression), or
    multi-hot lists (B, C) float32 (multi-label)."""
    first = labels[0]
    if isinstance(first, (list, tuple, Tensor)):
        return torch.as_tensor([list(y) for y in labels], dtype=torch.float32)  # (B, C)
    if isinstance(first, float):
        return torch.tensor(labels, dtype=torch.float32)  # (B,)
    return torch.tensor(labels, dtype=torch.long)  # (B,)


def rows_labels(labels: np.ndarray) -> Tensor:
    """A table's labels of a batch -> what :func:`batch_labels` makes of the same labels one by one: multi-hot
    (B, C) and float labels as float32, the rest (class indices, booleans) as int64."""
    if labels.ndim == 2 or labels.dtype.kind == "f":
        return torch.as_tensor(np.asarray(labels, dtype=np.float32))
    return torch.as_tensor(np.asarray(labels, dtype=np.int64))


def require_positive(**values: int | None) -> None:
    """Raise ``ValueError`` naming the ``data.`` key of any value below 1 (batch sizes, sample counts)."""
    for key, value in values.items():
        if value is not None and int(value) < 1:
            raise ValueError(f"data.{key}={value}: expected a positive integer")


def check_dropout_probs(probs: Mapping[str, float] | None,
                        modalities: Sequence[str] | Mapping[str, Any]) -> dict[str, float]:
    """Validate per-modality dropout probabilities: declared modality names, values in [0, 1).

    Raises:
        ValueError: naming the offending key.
    """
    names = sorted(modalities)
    out: dict[str, float] = {}
    for m, p in (probs or {}).items():
        if m not in names and not float(p):  # a 0 for a modality this data does not declare changes nothing
            continue
        if m not in names:
            raise ValueError(f"modality_dropout.{m}: unknown modality (expected one of {names})")
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
