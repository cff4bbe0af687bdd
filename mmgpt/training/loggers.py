"""Experiment-tracking helpers that Hydra configs point at."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

log = logging.getLogger(__name__)


def wandb_logger(project: str, save_dir: str, name: str | None = None, group: str | None = None,
                 tags: list[str] | None = None, id: str | None = None, **kwargs: Any):
    """A Lightning ``WandbLogger`` that runs offline unless the user has configured wandb.

    Offline mode is chosen when neither ``WANDB_MODE`` nor ``WANDB_API_KEY`` is set, so nothing tries to reach
    the network by surprise; ``wandb sync <save_dir>/wandb/offline-run-*`` uploads such runs later.
    Inside a Hydra multirun, ``group=None`` means the sweep's group (:func:`mmgpt.training.tracking.sweep_group`),
    so the runs of one sweep (e.g. one ``mmgpt-compare``) sit together.
    """
    from pytorch_lightning.loggers import WandbLogger

    from mmgpt.training.tracking import sweep_group

    group = group or sweep_group()

    offline = "WANDB_MODE" not in os.environ and "WANDB_API_KEY" not in os.environ
    if offline:
        log.info("wandb: offline mode (set WANDB_MODE=online or WANDB_API_KEY to upload live)")
    os.makedirs(save_dir, exist_ok=True)
    if id is not None:
        kwargs.setdefault("resume", "allow")  # a resumed training run continues its wandb run
    return WandbLogger(project=project, save_dir=save_dir, name=name, group=group, tags=list(tags or []), id=id,
                       offline=offline, log_model=False, **kwargs)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued instead of deleted."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])


class ResumableCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger`` for runs that resume: a resumed run appends to its ``metrics.csv``.

    The stock logger deletes an existing ``metrics.csv`` when it starts, so a run continued with
    ``resume=auto`` would lose the metric history of everything before the restart. New metric names are
    still handled (the file is rewritten with the wider header, keeping every row).
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def prepare_metrics_csv(path: str | Path, resume_step: int | None) -> None:
    """Ready a run directory's ``metrics.csv`` for a run that resumes at ``resume_step`` or (None) starts afresh.

    A resumed run continues the file (:func:`trim_metrics_csv`). A fresh run in a directory that already holds
    one (``hydra.run.dir`` reused) would otherwise append to another run's rows: the old file is renamed to
    ``metrics.<n>.csv`` (the first free n) and kept.
    """
    path = Path(path)
    if resume_step is not None:
        trim_metrics_csv(path, resume_step)
    elif path.is_file():
        n = 1
        while path.with_name(f"{path.stem}.{n}{path.suffix}").exists():
            n += 1
        kept = path.with_name(f"{path.stem}.{n}{path.suffix}")
        os.replace(path, kept)
        log.warning("%s held the metrics of an earlier run; kept as %s (use resume=auto to continue a run)",
                    path, kept.name)


def trim_metrics_csv(path: str | Path, last_step: int) -> int:
    """Drop the rows of a ``metrics.csv`` logged after step ``last_step``; returns how many were dropped.

    A run that resumes from a checkpoint taken at ``last_step`` repeats the steps after it; their rows from the
    interrupted attempt (those already flushed to disk) would otherwise appear twice.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = list(reader.fieldnames or []), list(reader)
    keep = [r for r in rows if not r.get("step") or float(r["step"]) <= last_step]
    if len(keep) < len(rows):
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(keep)
        os.replace(tmp, path)
    return len(rows) - len(keep)
