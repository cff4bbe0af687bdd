"""Comparison reports built from run directories alone: ``report.md``, ``report.csv``, ``runs.csv``, PNG plots.

``write_report(DIR)`` reads every run under ``DIR`` (:mod:`mmgpt.report.runs`), groups them by fusion and
summarises them over seeds (:mod:`mmgpt.report.summary`), and writes the report into ``DIR``
(:mod:`mmgpt.report.write`, :mod:`mmgpt.report.plots`). The same directory always gives the same report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from mmgpt.report.plots import write_plots
from mmgpt.report.runs import RunRecord, load_runs
from mmgpt.report.summary import GroupSummary, Stat, summarize
from mmgpt.report.write import write_tables

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote."""

    markdown: Path
    summary_csv: Path
    runs_csv: Path
    plots: list[Path]
    groups: list[GroupSummary]


def write_report(root: str | Path, metric: str = "acc", out_dir: str | Path | None = None,
                 mode: str | None = None) -> ReportFiles:
    """Read every finished run under ``root`` and write the comparison report into ``out_dir`` (default ``root``).

    Groups are ranked by ``metric`` in direction ``mode`` (``max``: higher is better, ``min``; None: ``min`` for
    losses and errors, else ``max``).

    Raises:
        FileNotFoundError: ``root`` does not exist or holds no finished run (no ``results.json``).
    """
    root = Path(root).resolve()
    out = Path(out_dir).resolve() if out_dir is not None else root
    runs = load_runs(root)
    if not runs:
        raise FileNotFoundError(f"{root}: no finished run (no results.json) to report on")
    groups = summarize(runs, metric, mode)
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(groups, out)
    md, summary_csv, runs_csv = write_tables(groups, root, out, plots)
    log.info("report of %d runs (%d configurations): %s", len(runs), len(groups), md)
    return ReportFiles(md, summary_csv, runs_csv, plots, groups)


__all__ = ["GroupSummary", "ReportFiles", "RunRecord", "Stat", "load_runs", "summarize", "write_report"]
