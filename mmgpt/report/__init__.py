"""Comparison reports built from run directories alone: ``report.md``, ``report.csv``, ``runs.csv``, PNG plots.

``write_report(DIR)`` reads every run under ``DIR`` (:mod:`mmgpt.report.runs`), groups them by fusion and
summarises them over seeds (:mod:`mmgpt.report.summary`), and writes the report into ``DIR``
(:mod:`mmgpt.report.write`, :mod:`mmgpt.report.plots`). The same directory always gives the same report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmgpt.report.plots import write_plots
from mmgpt.report.runs import COST, MATCHING, RunRecord, load_runs
from mmgpt.report.summary import GroupSummary, Stat, summarize
from mmgpt.report.tuning import Tuning, read_tuning
from mmgpt.report.write import write_tables
from mmgpt.sweep_folder import read_json_object, read_matching

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote."""

    markdown: Path
    summary_csv: Path
    runs_csv: Path
    plots: list[Path]
    groups: list[GroupSummary]


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file of the comparison directory (``cost.json``, ``matching.json``); None when absent."""
    return read_json_object(path) if path.is_file() else None  # data: a malformed file is one line naming it


def read_cost(root: Path) -> dict[str, Any] | None:
    """The measured cost of a comparison's configurations (``cost.json``); None when it was not measured."""
    return read_json(root / COST)


def varied_by_design(tuning: Tuning | None, matching: dict[str, Any] | None) -> set[str]:
    """Override keys that differ between configurations on purpose (tuned values, matched sizes): they do not
    make separate groups."""
    keys = set(tuning.space) if tuning else set()
    for conf in (matching or {}).get("configurations", {}).values():
        keys |= set(conf["overrides"])
    return keys


def write_report(root: str | Path, metric: str = "acc", mode: str = "max",
                 out_dir: str | Path | None = None) -> ReportFiles:
    """Read every finished run under ``root`` and write the comparison report into ``out_dir`` (default ``root``),
    ranked by ``metric`` in its direction ``mode``: ``max`` (higher is better) or ``min`` (``primary_metric.mode``).

    Raises:
        FileNotFoundError: ``root`` does not exist or holds no finished run (no ``results.json``).
    """
    root = Path(root).resolve()
    out = Path(out_dir).resolve() if out_dir is not None else root
    runs = load_runs(root)
    if not runs:
        raise FileNotFoundError(f"{root}: no finished run (no results.json) to report on")
    tuning, matching = read_tuning(root), read_matching(root / MATCHING)
    groups = summarize(runs, metric, mode, ignore=varied_by_design(tuning, matching))
    out.mkdir(parents=True, exist_ok=True)
    cost = read_cost(root)
    plots = write_plots(groups, out, cost["configurations"] if cost else None)
    md, summary_csv, runs_csv = write_tables(groups, root, out, plots, tuning, cost, matching)
    log.info("report of %d runs (%d configurations): %s", len(runs), len(groups), md)
    return ReportFiles(md, summary_csv, runs_csv, plots, groups)


__all__ = ["GroupSummary", "ReportFiles", "RunRecord", "Stat", "Tuning", "load_runs", "read_tuning", "summarize",
           "write_report"]
