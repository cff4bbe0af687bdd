"""The comparison's tables where people look at runs: a wandb run in the comparison's group holding them.

Every run of a comparison already logs itself (wandb: summary, tags, one group per comparison; TensorBoard: the
HParams dashboard, tuning trials and baselines included, since they are runs like the others). What no single run
has is the comparison: the summary table, the per-run table, the significance pairs, the tuning trials and the
cost. When the comparison logged to wandb, :func:`publish_to_wandb` adds one more run (``job_type=report``) to the
group with each CSV as a ``wandb.Table`` and the report folder (report.md, CSVs, plots, tuning/cost JSON) as an
artifact; offline like the others unless wandb is configured.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("mmgpt.compare")

#: The tables of the report folder, by name on the wandb run.
TABLES = {"summary": "report.csv", "runs": "runs.csv", "significance": "significance.csv", "trials": "trials.csv"}
_ARTIFACT_FILES = ("report.md", "tuning.json", "cost.json", "matching.json")
#: Where the report's wandb run lives in the comparison directory (next to the jobs' directories, so that the
#: printed ``wandb sync <dir>/*/wandb/offline-run-*`` uploads it with them).
DASHBOARD_DIR = "dashboard"


def wandb_group(sweep_dir: Path) -> str:
    """The wandb group of a comparison: the one :func:`mmgpt.training.tracking.sweep_group` gives its runs."""
    return f"compare-{sweep_dir.name}"


def _table(path: Path) -> Any:
    import wandb

    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    return wandb.Table(columns=rows[0], data=rows[1:]) if rows else None


def publish_to_wandb(sweep_dir: Path, cfg: DictConfig) -> Path | None:
    """Log the report's tables and files to a ``report`` run of the comparison's wandb group; the run's directory,
    or None when the comparison does not log to wandb (no ``logger.wandb`` in its config)."""
    project = OmegaConf.select(cfg, "logger.wandb.project")
    if project is None:
        return None
    import wandb

    (sweep_dir / DASHBOARD_DIR).mkdir(exist_ok=True)
    offline = "WANDB_MODE" not in os.environ and "WANDB_API_KEY" not in os.environ
    run = wandb.init(project=str(project), group=wandb_group(sweep_dir), job_type="report", name="report",
                     dir=str(sweep_dir / DASHBOARD_DIR), mode="offline" if offline else None, reinit="create_new",
                     config={"sweep_dir": str(sweep_dir)})
    try:
        tables = {name: _table(sweep_dir / f) for name, f in TABLES.items() if (sweep_dir / f).is_file()}
        run.log({name: t for name, t in tables.items() if t is not None})
        artifact = wandb.Artifact(f"compare-report-{sweep_dir.name}", type="report")
        for path in [*(sweep_dir / f for f in (*TABLES.values(), *_ARTIFACT_FILES)), *sweep_dir.glob("*.png")]:
            if path.is_file():
                artifact.add_file(str(path))
        run.log_artifact(artifact)
        out = Path(run.dir).parent
    finally:
        run.finish()
    log.info("wandb: the comparison's tables (%s) in run %s of group %s", ", ".join(sorted(tables)), out.name,
             wandb_group(sweep_dir))
    return out
