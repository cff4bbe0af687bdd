"""Callbacks: training throughput, and the run config stored in every checkpoint."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch


class Throughput(pl.Callback):
    """Logs ``train/samples_per_sec`` (all processes together) per epoch and keeps the per-epoch history."""

    def __init__(self) -> None:
        self.history: list[float] = []
        self._t0 = 0.0
        self._samples = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()
        self._samples = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._samples += batch.batch_size * trainer.world_size

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dt = time.perf_counter() - self._t0
        if self._samples and dt > 0:
            rate = self._samples / dt
            self.history.append(rate)
            pl_module.log("train/samples_per_sec", rate, rank_zero_only=True)

    @property
    def steady_rate(self) -> float | None:
        """Mean samples/s over epochs after the first (which pays for warm-up), or the first if only one."""
        rates = self.history[1:] or self.history
        return sum(rates) / len(rates) if rates else None


def git_commit(path: str | Path = ".") -> str | None:
    """The current git commit of ``path``'s repository, with ``-dirty`` if the tree has changes; None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], cwd=path, capture_output=True, text=True,
                               timeout=5)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


class RunConfigInCheckpoint(pl.Callback):
    """Stores the resolved run config and the git commit in every checkpoint (``checkpoint["mmgpt"]``)."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.config = config
        self.commit = git_commit(Path(__file__).parent)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint["mmgpt"] = {"config": self.config, "git_commit": self.commit, "torch": str(torch.__version__)}
