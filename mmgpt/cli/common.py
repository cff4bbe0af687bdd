"""Pieces shared by the entry points: building loggers and callbacks, run metadata, result files."""

from __future__ import annotations

import functools
import json
import logging
import os
import resource
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict, read_write

from mmgpt.errors import UserError

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Report a :class:`~mmgpt.errors.UserError` (or a missing file) as one line and exit 1, not a traceback.

    ``MMGPT_TRACEBACK=1`` re-raises, for debugging.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (UserError, FileNotFoundError) as e:
            if os.environ.get("MMGPT_TRACEBACK"):
                raise
            raise SystemExit(f"error: {e}") from None

    return wrapper


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
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_memory_mb": rss_mb, "peak_memory_kind": "cpu_max_rss"}


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


_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextmanager
def ddp_env_restored() -> Iterator[None]:
    """Afterwards, the DDP environment variables are as before and no process group is left, so that the next
    training job of this process launches its own ranks (Lightning's launcher reads both to decide)."""
    saved_env = {k: os.environ.get(k) for k in _DDP_ENV}
    try:
        yield
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@contextmanager
def relaunchable_job(run_dir: Path) -> Iterator[None]:
    """Let Lightning's DDP launcher start the other ranks of *this* job of a multirun (``trainer=ddp_sim``).

    The launcher re-runs ``sys.argv`` plus ``hydra.run.dir=<HydraConfig run.dir>`` in each new process. Inside a
    multirun that would be the whole sweep, so for the duration of the job the command line becomes this job's
    overrides in run mode, and ``run.dir`` its directory. Afterwards the DDP environment variables and the process
    group are cleared (:func:`ddp_env_restored`), so that the next job launches its own processes. Outside a
    multirun this does nothing.
    """
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        yield
        return
    hc = HydraConfig.get()
    saved_argv, saved_run_dir = sys.argv, hc.run.dir
    sys.argv = [sys.argv[0], *(str(o) for o in hc.overrides.task), "hydra.mode=RUN"]
    with read_write(hc), open_dict(hc):
        hc.run.dir = str(run_dir)
    try:
        with ddp_env_restored():
            yield
    finally:
        sys.argv = saved_argv
        with read_write(hc), open_dict(hc):
            hc.run.dir = saved_run_dir
