"""Per-sample predictions of the final evaluation, saved next to ``results.json`` for significance tests.

:class:`SavePredictions` records, during ``trainer.validate`` / ``trainer.test`` of the best checkpoint (not the
validation passes inside ``fit``), each sample's id, label and class scores (softmax of the logits the validation /
test step returns: the callback never runs the network itself, which FSDP2 would not allow), and
writes ``predictions_<split>.npz`` (``ids`` as strings, ``labels`` as the batch holds them: int64 class indices, a
regression's float targets (N,), multi-hot (N, C); ``scores`` float32, and the ``logits`` themselves as float32: a
regression's predicted values (N, 1), a multi-label task's per-label logits, whose softmax ``scores`` mean
nothing; no pickled objects) into the run directory. Under DDP each rank writes
``predictions_<split>.rank<r>.npz``; :func:`read_predictions` joins them (padding duplicates dropped by id).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn

from mmgpt.batch import MultimodalBatch
from mmgpt.training.distributed import local


class SavePredictions(pl.Callback):
    """Writes ``predictions_{val,test}.npz`` of the final evaluation into ``dirpath`` (see the module docstring)."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self._rows: list[tuple[list[str], np.ndarray, np.ndarray, np.ndarray]] = []

    def _recording(self, trainer: pl.Trainer) -> bool:
        return trainer.state.fn in (TrainerFn.VALIDATING, TrainerFn.TESTING) and not trainer.sanity_checking

    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._rows = []

    on_validation_epoch_start = _start
    on_test_epoch_start = _start

    def _batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: MultimodalBatch,
               batch_idx: int, dataloader_idx: int = 0) -> None:
        logits = outputs.get("logits") if isinstance(outputs, dict) else None
        if not self._recording(trainer) or batch.labels is None or logits is None:
            return
        logits = local(logits).float()
        ids = [str(i) for i in batch.ids] or [f"{batch_idx}:{k}" for k in range(batch.batch_size)]
        self._rows.append((ids, batch.labels.cpu().numpy(), logits.softmax(dim=-1).cpu().numpy(), logits.cpu().numpy()))

    on_validation_batch_end = _batch
    on_test_batch_end = _batch

    def _end(self, trainer: pl.Trainer, split: str) -> None:
        if not self._recording(trainer) or not self._rows:
            return
        name = f"predictions_{split}" + (f".rank{trainer.global_rank}" if trainer.world_size > 1 else "")
        self.dirpath.mkdir(parents=True, exist_ok=True)
        np.savez(self.dirpath / f"{name}.npz", ids=np.array([i for row in self._rows for i in row[0]]),
                 labels=np.concatenate([r[1] for r in self._rows]), scores=np.concatenate([r[2] for r in self._rows]),
                 logits=np.concatenate([r[3] for r in self._rows]))
        self._rows = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer, "test")


def read_predictions(run_dir: str | Path, split: str,
                     values: str = "scores") -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(ids, labels, ``values``) of a run's ``split``, from one file or the per-rank files; None when there are none
    (or they have no ``values`` array). ``values``: ``scores`` or ``logits``."""
    run_dir = Path(run_dir)
    files = sorted(run_dir.glob(f"predictions_{split}.npz")) or sorted(run_dir.glob(f"predictions_{split}.rank*.npz"))
    if not files:
        return None
    parts = [np.load(f, allow_pickle=False) for f in files]
    if any(values not in p.files for p in parts):
        return None
    ids = np.concatenate([p["ids"] for p in parts])
    labels = np.concatenate([p["labels"] for p in parts])
    scores = np.concatenate([p[values] for p in parts])
    _, first = np.unique(ids, return_index=True)  # DDP pads with repeated samples
    first.sort()
    return ids[first], labels[first], scores[first]
