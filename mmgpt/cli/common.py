"""Pieces shared by the entry points: building loggers and callbacks, run metadata, result files."""

from __future__ import annotations

import json
import logging
import resource
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def instantiate_group(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a dict-of-configs group (``logger``, ``callbacks``), in key order."""
    if not cfg:
        return []
    return [instantiate(node) for _, node in sorted(cfg.items()) if isinstance(node, DictConfig) and "_target_" in node]


def hydra_choice(group: str) -> str | None:
    """The option chosen for a config group in the running Hydra app (e.g. ``model/fusion`` -> ``late``)."""
    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get(group)


def peak_memory() -> dict[str, Any]:
    """Peak memory of this process: CUDA allocator peak when on GPU, else the process's maximum resident set."""
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return {"peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20, "peak_memory_kind": "cuda_allocated"}
    return {"peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak_memory_kind": "cpu_max_rss"}


def metrics_of(results: list[dict[str, float]] | None) -> dict[str, float]:
    """Flatten Lightning's ``validate``/``test`` return value into ``{"val/acc": 0.97, ...}``."""
    out: dict[str, float] = {}
    for d in results or []:
        out.update({k: float(v) for k, v in d.items()})
    return out


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` atomically (temp file + rename), so readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    tmp.replace(path)


def finish_wandb(loggers: list[Any]) -> None:
    """Close wandb runs so each Hydra job (and each multirun point) is its own run."""
    from pytorch_lightning.loggers import WandbLogger

    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb

        wandb.finish()


def rank_zero() -> bool:
    return pl.utilities.rank_zero_only.rank == 0
