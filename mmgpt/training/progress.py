"""Progress reporting: a rich bar on interactive terminals, plain log lines elsewhere (CI, files)."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar, RichProgressBar

log = logging.getLogger("mmgpt.training.progress")


def interactive() -> bool:
    return sys.stdout.isatty() and not os.environ.get("CI")


class LineProgressBar(ProgressBar):
    """Writes one line every ``every_n_steps`` training steps and one per validation, with the logged metrics."""

    def __init__(self, every_n_steps: int = 50) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps
        self._enabled = True
        self._t0 = time.perf_counter()

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _line(self, trainer: pl.Trainer, what: str) -> None:
        if not self._enabled or trainer.global_rank != 0:
            return
        metrics = {k: v for k, v in self.get_metrics(trainer, trainer.lightning_module).items() if k != "v_num"}
        shown = " ".join(f"{k}={float(v):.4g}" if _is_number(v) else f"{k}={v}" for k, v in sorted(metrics.items()))
        if trainer.state.fn != "fit":  # a validate/test pass after training: no epoch to count
            fn = getattr(trainer.state.fn, "value", trainer.state.fn)  # "validate", not TrainerFn.VALIDATING
            log.info("%s [%.0fs] %s", fn, time.perf_counter() - self._t0, shown)
            return
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        log.info("epoch %d/%s step %d %s [%.0fs] %s", trainer.current_epoch + 1, total, trainer.global_step, what,
                 time.perf_counter() - self._t0, shown)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if (batch_idx + 1) % self.every_n_steps == 0:
            self._line(trainer, "train")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._line(trainer, "val")


def _is_number(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


class IntervalRichProgressBar(RichProgressBar):
    """Lightning's rich bar, whose logged values are read (a host-device sync on a GPU) at the logging interval.

    Lightning's bar moves every step and reads the progress-bar values (``train/loss``) with it, which is a
    ``.item()`` per step; this one moves every step and reads them every ``trainer.log_every_n_steps`` steps, when
    Lightning reads the logged values anyway.
    """

    _skip_metrics = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._skip_metrics = trainer.global_step % max(1, trainer.log_every_n_steps) != 0
        try:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        finally:
            self._skip_metrics = False

    def _update_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._skip_metrics:
            super()._update_metrics(trainer, pl_module)


def progress_bar(every_n_steps: int = 50) -> ProgressBar:
    """Rich progress bar when attached to a terminal (and not ``CI``), else :class:`LineProgressBar`."""
    return IntervalRichProgressBar() if interactive() else LineProgressBar(every_n_steps)
