"""Experiment tracking around one training run: wandb grouping, tags and summary; TensorBoard's HParams table.

:func:`mmgpt.cli.train.train` calls :func:`label_run` once its loggers exist and :func:`log_final` once
``results.json`` is written, so every run, alone or inside a ``mmgpt-compare`` sweep, carries:

* wandb: the fusion and seed as tags and config, the parameter counts, throughput, peak memory and final
  metrics in the run summary, and (inside a Hydra multirun) a ``group`` shared by every job of the sweep;
* TensorBoard: a few hyperparameters and the final metrics on the HParams dashboard, so that
  ``tensorboard --logdir <sweep dir>`` shows the fusions side by side in one table.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from mmgpt.secrets import config_secrets, is_secret_key, scrub

log = logging.getLogger(__name__)

#: Config keys shown as hyperparameters on TensorBoard's HParams dashboard (when present), besides the fusion,
#: the seed and whatever the command line overrode.
DASHBOARD_KEYS: tuple[str, ...] = (
    "model.dim",
    "model.num_heads",
    "model.encoder_layers",
    "model.mlp_ratio",
    "model.dropout",
    "model.fusion.num_layers",
    "model.module.optimizer.lr",
    "model.module.optimizer.weight_decay",
    "data.batch_size",
    "trainer.max_epochs",
    "trainer.precision",
)

Scalar = int | float | str | bool


def reset_peak_memory() -> None:
    """Restart peak-memory accounting, so a run's ``peak_memory_mb`` is its own.

    Jobs of a Hydra multirun share one process: without a reset, the CUDA allocator peak and the process's
    maximum resident set (``ru_maxrss``) would carry over from the jobs before. On Linux, writing ``5`` to
    ``/proc/self/clear_refs`` resets the resident-set high-water mark that ``ru_maxrss`` reports.
    """
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux, or not permitted: the peak then covers the whole process
        log.debug("cannot reset the resident-set high-water mark; peak memory covers the whole process")


def sweep_group() -> str | None:
    """A wandb group for the running Hydra multirun (``<job name>-<sweep dir name>``), else None.

    Derived from the sweep directory, so a resumed sweep (same directory) keeps its group.
    """
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    return f"{hc.job.name}-{Path(str(hc.sweep.dir)).name}"


def _wandb_loggers(loggers: Iterable[Any]) -> list[Any]:
    from pytorch_lightning.loggers import WandbLogger

    return [lg for lg in loggers if isinstance(lg, WandbLogger)]


def _tensorboard_loggers(loggers: Iterable[Any]) -> list[Any]:
    from pytorch_lightning.loggers import TensorBoardLogger

    return [lg for lg in loggers if isinstance(lg, TensorBoardLogger)]


def run_tags(fusion: str, seed: int) -> list[str]:
    """The tags that identify a run of a comparison: ``fusion:<name>`` and ``seed:<n>``."""
    return [f"fusion:{fusion}", f"seed:{seed}"]


def label_run(loggers: Sequence[Any], fusion: str, seed: int) -> None:
    """Tag the wandb run with its fusion and seed, and put both in its config (no-op without wandb)."""
    if rank_zero_only.rank != 0:  # other ranks hold a dummy experiment
        return
    for lg in _wandb_loggers(loggers):
        run = lg.experiment
        run.tags = tuple(dict.fromkeys([*(run.tags or ()), *run_tags(fusion, seed)]))
        run.config.update({"fusion": fusion, "seed": seed}, allow_val_change=True)


def final_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of ``results.json`` worth a summary: val/test metrics, parameter counts, cost of the run."""
    out: dict[str, float] = {}
    for split in ("val", "test"):
        out.update({k: float(v) for k, v in (results.get(split) or {}).items()})
    out.update({f"params/{part}": float(n) for part, n in (results.get("params") or {}).items()})
    for key in ("train_samples_per_sec", "val_samples_per_sec", "peak_memory_mb", "wall_time_s"):
        if results.get(key) is not None:
            out[key] = float(results[key])
    return out


def dashboard_hparams(cfg: DictConfig, fusion: str) -> dict[str, Scalar]:
    """Hyperparameters for TensorBoard's HParams table: fusion, seed, :data:`DASHBOARD_KEYS`, CLI overrides."""
    hp: dict[str, Scalar] = {"fusion": fusion, "seed": int(cfg.seed)}
    for key in DASHBOARD_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, (int, float, str, bool)):
            hp[key] = value
    if HydraConfig.initialized():
        for override in HydraConfig.get().overrides.task:
            key, sep, value = str(override).lstrip("+~").partition("=")
            if sep and key not in ("seed", "model/fusion") and not is_secret_key(key):  # credentials stay out
                hp.setdefault(key, scrub(value, config_secrets(cfg)))
    return hp


def log_final(loggers: Sequence[Any], results: Mapping[str, Any], hparams: Mapping[str, Scalar]) -> None:
    """Send the final numbers of a run to its trackers.

    wandb: :func:`final_metrics` into the run summary. TensorBoard: ``hparams`` with the final metrics
    (as ``final/<name>`` scalars) on the HParams dashboard.
    """
    metrics = final_metrics(results)
    for lg in _wandb_loggers(loggers):
        lg.experiment.summary.update({**metrics, "fusion": results.get("fusion"), "seed": results.get("seed")})
    for lg in _tensorboard_loggers(loggers):
        lg.log_hyperparams(dict(hparams), metrics={f"final/{k}": v for k, v in metrics.items()})
        lg.finalize("success")  # flush and close the event file (Lightning closed the first one already)


def offline_wandb_runs(root: str | Path) -> list[Path]:
    """Every offline wandb run directory under ``root`` (``.../wandb/offline-run-*``), sorted."""
    return sorted(p for p in Path(root).rglob("offline-run-*") if p.is_dir() and p.parent.name == "wandb")


def wandb_sync_command(root: str | Path) -> str | None:
    """The ``wandb sync`` command that uploads the offline runs under ``root``; None when there are none."""
    root = Path(root)
    runs = offline_wandb_runs(root)
    if not runs:
        return None
    if all(p.parent.parent.parent == root for p in runs):  # the layout of a sweep: <root>/<job>/wandb/<run>
        return f"wandb sync {root}/*/wandb/offline-run-*"
    return "wandb sync " + " ".join(str(p) for p in runs)
