"""Evaluators: robustness evaluation you call on a trained module, not a flag you set on it (as MultiBench does).

:func:`evaluate_subsets` scores a module with each subset of its modalities present (the others marked absent in
every batch), by handing the trainer a loader that rewrites the batches; the module itself is left untouched.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pytorch_lightning as pl

from mmgpt.batch import MultimodalBatch


def modality_subsets(modalities: Sequence[str]) -> list[frozenset[str]]:
    """Every non-empty subset, largest first: (a, b, c), (a, b), (a, c), (b, c), (a), (b), (c)."""
    return [frozenset(c) for r in range(len(modalities), 0, -1) for c in itertools.combinations(modalities, r)]


class KeepModalities:
    """A loader that yields ``loader``'s batches with only ``keep`` present (the others marked absent)."""

    def __init__(self, loader: Iterable[MultimodalBatch], keep: frozenset[str]) -> None:
        self.loader, self.keep = loader, keep

    def __iter__(self) -> Iterator[MultimodalBatch]:
        return (batch.with_modalities(self.keep) for batch in self.loader)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]


def evaluate_subsets(
    trainer: pl.Trainer, module: pl.LightningModule, datamodule: pl.LightningDataModule, split: str,
    modalities: Sequence[str],
) -> dict[str, dict[str, float]]:
    """Metrics of ``split`` for every non-empty subset of ``modalities``: ``{"audio+image": {"acc": ...}}``."""
    run = trainer.validate if split == "val" else trainer.test
    datamodule.setup("validate" if split == "val" else "test")
    out: dict[str, dict[str, float]] = {}
    for keep in modality_subsets(modalities):
        loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
        metrics: dict[str, Any] = {}
        for d in run(module, dataloaders=KeepModalities(loader, keep), verbose=False) or []:
            metrics.update({k: float(v) for k, v in d.items()})
        out["+".join(sorted(keep))] = {k.split("/", 1)[1]: v for k, v in metrics.items()}
    return out
