"""Hydra's RUN mode as a plain function: one job from a list of overrides, in a given run directory, in this process.

:func:`run_hydra_job` does for one job what ``@hydra.main`` does, without reading or changing ``sys.argv``: compose
the config (Hydra's own node included), make ``HydraConfig`` hold it for the job's duration (``${hydra:...}``
interpolations, :func:`mmgpt.cli.common.hydra_choice` and Lightning's DDP launcher read it), write the records
Hydra's RUN mode writes (``.hydra/config.yaml``, ``hydra.yaml``, ``overrides.yaml``: other code reads them back),
log into ``<run dir>/<job name>.log`` as well as the console, then call the task on the config. Afterwards
``HydraConfig``, logging, the DDP environment variables and the process group are as before.

DDP: Lightning's launcher starts the other ranks by re-running this process's command line (``sys.argv``, whatever
it is: a notebook's, or a comparison's) with ``hydra.run.dir=<run dir> hydra.job.name=train_ddp_process_<k>
hydra.output_subdir=null`` appended. :func:`ddp_rank_job` recognises such a process; the job it belongs to is the
one recorded in ``<run dir>/.hydra/overrides.yaml`` (:func:`recorded_overrides`), which the entry point then runs
with ``records=False``, as Hydra would with ``hydra.output_subdir=null``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from mmgpt import stored_config
from mmgpt.cli.common import ddp_env_restored, logging_restored, take_override
from mmgpt.config import CONFIG_DIR
from mmgpt.errors import UserError

#: Where a job's records go, under its run directory (Hydra's ``hydra.output_subdir``).
RECORDS = ".hydra"
#: The job name Lightning's DDP launcher gives the rank processes it starts (``train_ddp_process_<k>``).
DDP_JOB_PREFIX = "train_ddp_process_"


def compose_job(config_name: str, overrides: Sequence[str], run_dir: Path, job_name: str,
                records: bool = True) -> DictConfig:
    """``conf/<config_name>.yaml`` with ``overrides``, Hydra's node set for a RUN-mode job in ``run_dir``."""
    from hydra import compose, initialize_config_dir
    from hydra.types import RunMode

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name=job_name):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.RUN
        cfg.hydra.run.dir = str(run_dir)
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.name = job_name
        cfg.hydra.overrides.hydra.extend(["hydra.mode=RUN", f"hydra.run.dir={run_dir}"])  # as on a command line
        if not records:
            cfg.hydra.output_subdir = None
    return cfg


def write_records(cfg: DictConfig, task_cfg: DictConfig) -> Path:
    """The files Hydra's RUN mode writes into ``<run dir>/.hydra``: the job's config (unresolved), Hydra's own
    config and the job's overrides."""
    from hydra.core.hydra_config import HydraConfig

    out = Path(cfg.hydra.runtime.output_dir) / str(cfg.hydra.output_subdir)
    out.mkdir(parents=True, exist_ok=True)
    for name, node in (("config.yaml", task_cfg), ("hydra.yaml", HydraConfig.instance().cfg),
                       ("overrides.yaml", cfg.hydra.overrides.task)):
        (out / name).write_text(OmegaConf.to_yaml(node), encoding="utf-8")
    return out


def run_hydra_job(config_name: str, overrides: Sequence[str], run_dir: str | Path, task: Callable[[DictConfig], Any],
                  *, job_name: str, command: Sequence[str] | None = None, records: bool = True) -> Any:
    """Run ``task`` on ``conf/<config_name>.yaml`` composed with ``overrides``, as a Hydra job in RUN mode whose
    directory is ``run_dir``; returns what ``task`` returns.

    Args:
        overrides: the job's overrides (``HydraConfig``'s ``overrides.task``); ``hydra.*`` ones set Hydra's node.
        run_dir: the job's directory (created; ``paths.output_dir`` points at it).
        task: the job, called with the config less Hydra's node (as ``@hydra.main`` calls its function).
        job_name: ``hydra.job.name``: names the log file.
        command: the command line the job's runs record in their stamp (:func:`mmgpt.stamp.command_line`).
        records: write ``.hydra/`` (False for a DDP rank process, whose rank 0 wrote them).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import configure_log, env_override

    from mmgpt.stamp import command_line

    run_dir = Path(run_dir).resolve()
    cfg = compose_job(config_name, overrides, run_dir, job_name, records)
    task_cfg = copy.deepcopy(cfg)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    holder = HydraConfig.instance()
    saved = holder.cfg
    holder.set_config(cfg)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with logging_restored(), command_line(command or [f"mmgpt-{config_name}", *overrides]), \
                env_override(cfg.hydra.job.env_set), ddp_env_restored():
            configure_log(cfg.hydra.job_logging, cfg.hydra.verbose)
            if records and cfg.hydra.output_subdir is not None:
                write_records(cfg, task_cfg)
            return task(task_cfg)
    finally:
        holder.cfg = saved


def ddp_rank_job(args: Sequence[str]) -> tuple[Path, str] | None:
    """``(run dir, job name)`` when this process is a rank that Lightning's DDP launcher started for a job run by
    :func:`run_hydra_job` (or a Hydra job) in its parent: ``LOCAL_RANK`` is not 0 and the command line ends with
    the launcher's ``hydra.run.dir=... hydra.job.name=train_ddp_process_<k>``; else None."""
    name, rest = take_override(args, "hydra.job.name")
    run_dir, _ = take_override(rest, "hydra.run.dir")
    if os.environ.get("LOCAL_RANK", "0") == "0" or run_dir is None or not (name or "").startswith(DDP_JOB_PREFIX):
        return None
    return Path(override_value("hydra.run.dir", run_dir)), str(name)


def override_value(key: str, value: str) -> str:
    """``value`` as Hydra reads it in ``key=value`` (quotes removed: the DDP launcher quotes the run directory)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if len(value) < 2 or value[0] != value[-1] or value[0] not in "'\"":
        return value
    return str(OverridesParser.create().parse_override(f"{key}={value}").value())


def recorded_overrides(run_dir: Path) -> list[str]:
    """The overrides of the job in ``run_dir``, as its ``.hydra/overrides.yaml`` records them.

    Read by a DDP rank process, whose parent wrote the file a moment before starting it (the same overrides were
    on the parent's command line or in its call): nothing in it is resolved, and anything but a list of strings
    is refused.
    """
    path = run_dir / RECORDS / "overrides.yaml"
    if not path.is_file():
        raise UserError(f"{path}: not found; a DDP rank process runs the job recorded in its run directory")
    saved = stored_config.load(path)  # nothing resolved
    if not isinstance(saved, list) or not all(isinstance(o, str) for o in saved):
        raise UserError(f"{path}: expected a list of overrides (strings)")
    return saved
