"""The training epoch's metric state in checkpoints, so a run resumed mid-epoch logs the same epoch metrics.

An epoch metric (``train/acc``, ``train/f1``, ``train/loss_epoch``) accumulates over the epoch's batches: in the
metric objects (torchmetrics states: counts, sums) and in Lightning's result collection for values logged with
``on_epoch=True`` (a running sum and batch count). Neither is in a checkpoint, so after a mid-epoch resume the
epoch's value would cover only the batches after the resume. :class:`EpochMetricsInCheckpoint` saves both with
every checkpoint and puts them back before the first batch of the resumed run, so accumulation continues from the
same sums in the same order and the epoch's values are equal to the uninterrupted run's, bit for bit.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.connectors.logger_connector.result import _Metadata, _ResultMetric, _Sync
from torchmetrics import Metric

log = logging.getLogger(__name__)

#: what of a logged value's metadata is saved (all of ``_Metadata`` but the reduction and sync, saved by name)
META_FIELDS = ("fx", "name", "prog_bar", "logger", "on_step", "on_epoch", "enable_graph", "add_dataloader_idx",
               "dataloader_idx", "metric_attribute")


def _to(value: Any, device: torch.device | str) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to(device).clone()
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    return value


def logged_state(results: dict[str, _ResultMetric]) -> dict[str, dict[str, Any]]:
    """The epoch-accumulated values of Lightning's result collection (``self.log(..., on_epoch=True)``), as plain
    data (a checkpoint loads with ``weights_only=True``). Metric objects are saved by :func:`metric_states`."""
    out: dict[str, dict[str, Any]] = {}
    for key, result in results.items():
        meta = result.meta
        if not result.is_tensor or result.has_reset or not meta.on_epoch or meta.sync.group is not None:
            continue
        saved = {f: getattr(meta, f) for f in META_FIELDS}
        saved.update(reduce_fx=meta.reduce_fx.__name__, sync=meta.sync.should, rank_zero_only=meta.sync.rank_zero_only,
                     value=_to(result.value, "cpu"), update_count=int(result._update_count))
        if meta.is_mean_reduction:
            saved["count"] = _to(result.cumulated_batch_size, "cpu")
        out[key] = saved
    return out


def restore_logged(results: dict[str, _ResultMetric], saved: dict[str, dict[str, Any]], trainer: pl.Trainer,
                   device: torch.device) -> None:
    """Recreate the saved entries of the result collection, as ``LightningModule.log`` would have made them."""
    for key, s in saved.items():
        meta = _Metadata(**{f: s[f] for f in META_FIELDS}, reduce_fx=s["reduce_fx"])
        meta.sync = _Sync(_should=s["sync"], fn=trainer.strategy.reduce, rank_zero_only=s["rank_zero_only"])
        result = _ResultMetric(meta, is_tensor=True).to(device)
        result.value = _to(s["value"], device)
        if "count" in s:
            result.cumulated_batch_size = _to(s["count"], device)
        result._update_count = s["update_count"]
        result.has_reset = False
        results[key] = result


def metric_states(root: torch.nn.Module) -> dict[str, dict[str, Any]]:
    """The states of the torchmetrics objects under ``root`` that have seen data, by module name."""
    return {name: {"update_count": int(m._update_count), "states": {s: _to(getattr(m, s), "cpu") for s in m._defaults}}
            for name, m in root.named_modules() if isinstance(m, Metric) and m._update_count > 0}


def restore_metric_states(root: torch.nn.Module, saved: dict[str, dict[str, Any]], device: torch.device) -> None:
    modules = dict(root.named_modules())
    for name, s in saved.items():
        metric = modules[name]
        for state, value in s["states"].items():
            setattr(metric, state, _to(value, device))
        metric._update_count = s["update_count"]
        metric._computed = None


class EpochMetricsInCheckpoint(pl.Callback):
    """Saves the training epoch's metric state with every checkpoint and restores it when a run resumes mid-epoch.

    Both kinds of epoch accumulation are kept: the LightningModule's training metric objects (``metrics_attr``,
    ``train_metrics`` in :class:`~mmgpt.training.lit_module.MultimodalModule`) and the values logged with
    ``on_epoch=True``. Under DDP each rank's state is gathered into the checkpoint and each rank gets its own back
    (as :class:`~mmgpt.training.callbacks.RngStateInCheckpoint` does); resuming with another number of processes,
    or from a checkpoint that does not sit inside the epoch being resumed, restores nothing.

    Args:
        metrics_attr: the module attribute holding the training split's metric objects.
    """

    def __init__(self, metrics_attr: str = "train_metrics") -> None:
        self.metrics_attr = metrics_attr
        self._trainer: pl.Trainer | None = None
        self._loaded: dict[str, Any] | None = None
        self._to_restore: dict[str, Any] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        loop = trainer.fit_loop.epoch_loop
        metrics = getattr(trainer.lightning_module, self.metrics_attr, None)
        state = {"logged": logged_state(loop._results),
                 "metrics": metric_states(metrics) if isinstance(metrics, torch.nn.Module) else {}}
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            per_rank: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(per_rank, state)  # Lightning dumps checkpoints on every rank
        else:
            per_rank = [state]
        return {"epoch": trainer.current_epoch, "batches": loop.batch_progress.current.completed, "per_rank": per_rank}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = dict(state_dict) or None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loaded, self._loaded = self._loaded, None
        if loaded is None:
            return
        here = (trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.completed)
        if here != (loaded["epoch"], loaded["batches"]) or here[1] == 0:
            return  # the checkpoint is not inside the epoch being resumed: nothing of it to continue
        if len(loaded["per_rank"]) != trainer.world_size:
            log.warning("the checkpoint holds epoch metric states of %d processes, this run has %d: not restoring "
                        "them (this epoch's train metrics cover only the batches after the resume)",
                        len(loaded["per_rank"]), trainer.world_size)
            return
        self._to_restore = loaded["per_rank"][trainer.global_rank]

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        state, self._to_restore = self._to_restore, None
        if state is None:
            return
        restore_logged(trainer.fit_loop.epoch_loop._results, state["logged"], trainer, pl_module.device)
        # Private Lightning API (pytorch-lightning 2.x): on an epoch's first batch `LightningModule.log` clears the
        # values logged by each hook it has not seen yet (leftovers of the previous epoch); here they are this
        # epoch's, so the first batch is declared not to be one.
        trainer._logger_connector._first_loop_iter = False
        metrics = getattr(pl_module, self.metrics_attr, None)
        if isinstance(metrics, torch.nn.Module):
            restore_metric_states(metrics, state["metrics"], pl_module.device)
        log.info("resumed mid-epoch: the epoch's metric state of %d logged values and %d metric objects restored",
                 len(state["logged"]), len(state["metrics"]))
