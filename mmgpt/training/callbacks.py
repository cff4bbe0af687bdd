"""Callbacks: training throughput; what checkpoints carry besides weights (run config, RNG states); fault guards."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from mmgpt.training.rng import rng_states, set_rng_states


class Throughput(pl.Callback):
    """Training and validation throughput (samples/s, all processes together), each measured on its own.

    The training clock runs over the training steps only (loading their batches included): it stops for the
    validation passes that Lightning runs inside a training epoch and for each checkpoint save, and starts again at
    the next training batch. Logged per epoch as ``train/samples_per_sec``; the validation passes of a ``fit``
    are timed on their own and logged as ``val/samples_per_sec``. A run resumed mid-epoch (where Lightning
    calls no ``on_train_epoch_start``) is timed from its first training batch. On a GPU the device is
    synchronised when a clock stops (a few times per epoch, never per step), so queued work counts where it
    belongs.
    """

    def __init__(self) -> None:
        self.history: list[float] = []
        self.val_history: list[float] = []
        self._elapsed = 0.0
        self._since: float | None = None
        self._samples = 0
        self._val_t0: float | None = None
        self._val_samples = 0

    @staticmethod
    def _now(pl_module: pl.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def _pause(self, pl_module: pl.LightningModule) -> None:
        if self._since is not None:
            self._elapsed += self._now(pl_module) - self._since
            self._since = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._elapsed, self._samples = 0.0, 0
        self._since = time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._since is None:  # after a validation pass or a checkpoint; or resumed mid-epoch
            self._since = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._samples += batch.batch_size * trainer.world_size

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self._pause(pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self._pause(pl_module)
        self._val_t0, self._val_samples = time.perf_counter(), 0

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._val_t0 is not None:
            self._val_samples += batch.batch_size * trainer.world_size

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._val_t0 is None:
            return
        dt, self._val_t0 = self._now(pl_module) - self._val_t0, None
        if self._val_samples and dt > 0:
            self.val_history.append(self._val_samples / dt)
            pl_module.log("val/samples_per_sec", self.val_history[-1], sync_dist=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause(pl_module)
        if self._samples and self._elapsed > 0:
            rate = self._samples / self._elapsed
            self.history.append(rate)
            # every rank's estimate of the whole job's rate, averaged (all ranks take part in the reduction)
            pl_module.log("train/samples_per_sec", rate, sync_dist=True)

    @property
    def steady_rate(self) -> float | None:
        """Mean training samples/s over epochs after the first (which pays for warm-up), or the first if only one."""
        return _steady(self.history)

    @property
    def val_rate(self) -> float | None:
        """Mean validation samples/s over the validation passes of ``fit``, after the first when there are more."""
        return _steady(self.val_history)


def _steady(rates: list[float]) -> float | None:
    rates = rates[1:] or rates
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


def skips_on_device(optimizer: Any) -> bool:
    """Whether ``optimizer`` takes a ``found_inf`` flag and then leaves parameters, moments and step count alone.

    PyTorch's fused optimizers do (``AdamW(fused=True)``, ``Adam``, ``SGD``...): ``GradScaler`` relies on it.
    """
    groups = getattr(optimizer, "param_groups", None) or []
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and bool(groups) and all(
        g.get("fused") for g in groups)


class NonFiniteGuard(pl.Callback):
    """Drops the update of a step whose gradients are not finite, then stops (``"stop"``) or goes on (``"skip"``).

    A NaN or infinite loss makes the gradients non-finite, so one number tells both: the total gradient norm,
    which gradient clipping computes anyway (:func:`mmgpt.training.optim.grad_norm` computes it once per step
    for both). Nothing is read back to the host per step: on a fused optimizer (``AdamW(fused=True)``, the
    default in ``conf/model``) the step's non-finite flag is handed to the optimizer as ``found_inf``, and the
    fused kernel leaves the parameters, its moments and its step count exactly as they were, on the device. The
    learning-rate schedule and ``trainer.global_step`` still advance.

    The flags are read on the host (one read for all steps since the last) at the logging interval
    (``trainer.log_every_n_steps``, or ``check_every_n_steps``), before every checkpoint, at each epoch's end
    and when training ends. So ``"stop"`` stops up to ``check_every_n_steps - 1`` steps after the bad one (their
    non-finite updates are dropped too: the weights it stops with, and any checkpoint it writes, never hold a
    NaN). Both name the step and its sample ids. Under a sharded strategy (FSDP) the flag is reduced across
    processes on the device; under DDP the gradients, and so the flag, are the same on every process.

    An optimizer without ``found_inf`` (not fused) cannot drop an update on the device: then the flag is read
    every step (one host sync per step) and a bad update is dropped by clearing the gradients.

    Args:
        action: ``"stop"`` raises :class:`NonFiniteError` naming the first bad step and its batch's sample ids;
            ``"skip"`` logs a warning naming the skipped steps and counts them in ``train/skipped_steps``.
        check_every_n_steps: steps between host reads of the flags; None: ``trainer.log_every_n_steps`` (the
            interval at which Lightning reads the logged values anyway).
    """

    def __init__(self, action: str = "stop", check_every_n_steps: int | None = None) -> None:
        if action not in ("stop", "skip"):
            raise ValueError(f"action must be 'stop' or 'skip', got {action!r}")
        if check_every_n_steps is not None and check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.action = action
        self.check_every_n_steps = check_every_n_steps
        self.skipped = 0
        self._ids: list[Any] = []
        #: (step, epoch, sample ids, flag on the device) of the steps not read back yet
        self._pending: list[tuple[int, int, list[Any], torch.Tensor]] = []
        self._host_checked: set[int] = set()  # id() of optimizers already warned about (no found_inf)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._ids = list(getattr(batch, "ids", []) or [])

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        from mmgpt.training.optim import grad_norm

        bad = ~torch.isfinite(grad_norm(trainer, optimizer))  # 0-d bool on the device
        if trainer.world_size > 1 and not isinstance(trainer.strategy, pl.strategies.DDPStrategy):
            flag = bad.float()  # sharded gradients: any process's shard can hold the NaN
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            bad = flag > 0
        self._pending.append((trainer.global_step, trainer.current_epoch, self._ids, bad))
        if skips_on_device(optimizer):
            optimizer.found_inf = bad.float()  # the fused step drops the update on the device
            return
        if id(optimizer) not in self._host_checked:
            self._host_checked.add(id(optimizer))
            logging.getLogger(__name__).warning(
                "NonFiniteGuard: %s is not fused, so it cannot drop a non-finite update on the device; the "
                "gradient norm is read back every step (one host sync per step). Use a fused optimizer "
                "(e.g. AdamW(fused=True)) to avoid it", type(optimizer).__name__)
        if bool(bad):
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None  # the optimizer leaves parameters without gradients (and their moments) alone
            self._check(trainer, pl_module, log="step")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        for optimizer in trainer.optimizers:
            if hasattr(optimizer, "found_inf"):
                del optimizer.found_inf  # used by this step only
        every = self.check_every_n_steps or max(1, trainer.log_every_n_steps)
        if trainer.global_step % every == 0:  # the step at which Lightning reads the logged values too
            self._check(trainer, pl_module, log="step")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self._check(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer, pl_module, log="epoch")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer, pl_module)

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, log: str | None = None) -> None:
        """Read the pending flags back (one host read); stop, or count and report the skipped steps.

        ``log``: log ``train/skipped_steps`` from a per-step (``"step"``) or an epoch-end (``"epoch"``) hook.
        """
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        flags = torch.stack([bad for *_, bad in pending]).tolist()
        bad = [(step, epoch, ids) for (step, epoch, ids, _), f in zip(pending, flags) if f]
        if not bad:
            return
        step, epoch, ids = bad[0]
        where = f"step {step} (epoch {epoch}), batch sample ids {ids[:32]}"
        if self.action == "stop":
            raise NonFiniteError(
                f"non-finite loss or gradients at {where} (noticed at step {trainer.global_step}; the update of "
                "every non-finite step was dropped); set callbacks.nonfinite.action=skip to skip such steps instead")
        self.skipped += len(bad)
        logging.getLogger(__name__).warning(
            "skipped the update of %d step(s) with non-finite gradients: %s", len(bad),
            "; ".join(f"step {s} (epoch {e}), batch sample ids {i[:32]}" for s, e, i in bad))
        if log:
            pl_module.log("train/skipped_steps", float(self.skipped), on_step=log == "step", on_epoch=log == "epoch")


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
