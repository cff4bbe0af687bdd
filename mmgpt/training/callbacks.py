"""Callbacks: training throughput; what checkpoints carry besides weights (run config, RNG states); fault guards."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from mmgpt.training.distributed import local
from mmgpt.training.rng import rng_states, set_rng_states


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
            # every rank's estimate of the whole job's rate, averaged (all ranks take part in the reduction)
            pl_module.log("train/samples_per_sec", rate, sync_dist=True)

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
        from pytorch_lightning.loggers import WandbLogger

        wandb_id = next((lg.version for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
        checkpoint["mmgpt"] = {"config": self.config, "git_commit": self.commit, "torch": str(torch.__version__),
                               "wandb_id": wandb_id}


class RngStateInCheckpoint(pl.Callback):
    """Saves every process's random-number-generator states in checkpoints and restores them when a run resumes.

    Together with the loader's seeded data randomness (:mod:`mmgpt.datamodules.resumable`) this makes a resumed run
    draw the same dropout masks, masking and adversarial starts as the uninterrupted run. Under DDP each rank's
    states are gathered into the checkpoint (``checkpoint["callbacks"]``, list indexed by global rank) and each
    rank gets its own back; resuming with another number of processes restores none (with a warning), as the
    draws could not match anyway. The states are applied at train start, after Lightning's set-up and sanity
    check, just before the first batch is drawn.
    """

    def __init__(self) -> None:
        self._pending: list[dict[str, Any]] | None = None

    def state_dict(self) -> dict[str, Any]:
        states = rng_states()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, states)  # Lightning dumps checkpoints on every rank
            return {"per_rank": gathered}
        return {"per_rank": [states]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = list(state_dict["per_rank"])

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if len(pending) != trainer.world_size:
            logging.getLogger(__name__).warning(
                "the checkpoint holds RNG states of %d processes, this run has %d: not restoring them (the run "
                "continues, but its random draws differ from an uninterrupted run's)", len(pending), trainer.world_size)
            return
        set_rng_states(pending[trainer.global_rank])


class FlushLogsWithCheckpoint(pl.Callback):
    """Writes the loggers' buffered metrics whenever a checkpoint is saved.

    Lightning's CSV logger buffers rows (up to ``flush_logs_every_n_steps``); a run killed after a checkpoint
    would lose rows logged before it (an epoch's validation metrics, say), which the resumed run never logs
    again. Flushing with each checkpoint keeps ``metrics.csv`` at least as current as the newest checkpoint.
    """

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        for lg in trainer.loggers:
            lg.save()


class NonFiniteError(RuntimeError):
    """Training produced a NaN or infinite loss / gradient."""


class NonFiniteGuard(pl.Callback):
    """Stops (``action="stop"``) or skips the optimizer step (``action="skip"``) when gradients are not finite.

    A NaN or infinite loss makes every gradient non-finite, so checking the gradients after backward catches both.
    The decision is reduced across DDP processes so that all ranks stop or skip together. A skipped step sets
    every gradient to None, which makes the optimizer leave the parameters (and its moments) untouched; the
    learning-rate schedule still advances.

    Args:
        action: ``"stop"`` raises :class:`NonFiniteError` naming the step and the batch's sample ids;
            ``"skip"`` drops the update, logs a warning and counts it in ``train/skipped_steps``.
    """

    def __init__(self, action: str = "stop") -> None:
        if action not in ("stop", "skip"):
            raise ValueError(f"action must be 'stop' or 'skip', got {action!r}")
        self.action = action
        self.skipped = 0
        self._ids: list[Any] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._ids = list(getattr(batch, "ids", []) or [])

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        grads = [local(p.grad) for p in pl_module.parameters() if p.grad is not None]  # this rank's shards (FSDP)
        finite = all(bool(torch.isfinite(g).all()) for g in grads)
        finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return
        where = f"step {trainer.global_step} (epoch {trainer.current_epoch}), batch sample ids {self._ids[:32]}"
        if self.action == "stop":
            raise NonFiniteError(f"non-finite loss or gradients at {where}; set callbacks.nonfinite.action=skip "
                                 "to skip such steps instead")
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        self.skipped += 1
        logging.getLogger(__name__).warning("skipped the update at %s: non-finite gradients", where)
        pl_module.log("train/skipped_steps", float(self.skipped), on_step=True, on_epoch=False)


class RestoreLoaderPosition(pl.Callback):
    """Hands a resumed run's saved dataloader position to the training dataloader.

    Lightning restores the state of stateful dataloaders when it builds them after loading a checkpoint; but
    ``trainer.estimated_stepping_batches`` (which the learning-rate schedule needs) builds them earlier, before
    the checkpoint's loop state is loaded, and the saved position would be dropped. This loads it at train start,
    before the first batch is drawn. A no-op when not resuming or when the loaders keep no state.

    Loaders without a length (streaming, ``data=shards``) have already been asked for their first batch by then
    (Lightning prefetches one to detect the end of the epoch), so the fetcher's iterator is created again, now
    from the restored position.
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Private Lightning API (pytorch-lightning 2.x): the same calls Lightning makes in FitLoop.setup_data.
        loop = trainer.fit_loop
        if not (loop.restarting and loop._combined_loader_states_to_load):
            return
        loop._load_combined_loader_states()
        if loop._data_fetcher is not None:
            iter(loop._data_fetcher)
