"""Reading finished runs back from their directories: ``results.json``, ``metrics.csv``, ``eval_results.json``.

A run directory is any directory holding a ``results.json`` written by :func:`mmgpt.cli.train.train`. Nothing
here computes a metric: every number comes from those files.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmgpt.stored_config import hydra_overrides
from mmgpt.sweep_folder import SweepFolderError, read_eval_results, read_results

log = logging.getLogger(__name__)

RESULTS = "results.json"
EVAL_RESULTS = "eval_results.json"
METRICS = "metrics.csv"
#: Where ``mmgpt-compare tune=N`` keeps its trials (under the comparison directory; not runs of the report),
#: and the file with every configuration's tuning outcome.
TUNE_DIR = "tune"
TUNING = "tuning.json"
#: The cost of every configuration, measured after the runs (:mod:`mmgpt.cli.compare_cost`).
COST = "cost.json"
#: The sizes ``compare.match=params|flops`` gave every fusion.
MATCHING = "matching.json"


def finished_results(run_dir: Path) -> dict[str, Any] | None:
    """The ``results.json`` of a finished run in ``run_dir`` (checked as data); None when the run never finished."""
    path = run_dir / RESULTS
    return read_results(path) if path.is_file() else None


@dataclass(frozen=True)
class RunRecord:
    """One finished run, as its files describe it.

    Attributes:
        run_dir: the run directory.
        results: the parsed ``results.json``.
        overrides: the Hydra task overrides of the run (``.hydra/overrides.yaml``), empty outside Hydra.
        curves: per-epoch validation values from ``metrics.csv``: ``{"val/acc": [(epoch, value), ...]}``
            (epochs counted from 1; the re-validation of the best checkpoint after training is left out).
        subsets: per-modality-subset metrics of the missing-modality evaluation (``eval_results.json``),
            ``{"audio+image": {"acc": ..., "f1": ..., "loss": ...}}``; None when the run has none.
        subsets_split: the split that evaluation used (``val`` or ``test``).
    """

    run_dir: Path
    results: dict[str, Any]
    overrides: list[str] = field(default_factory=list)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    subsets: dict[str, dict[str, float]] | None = None
    subsets_split: str | None = None

    @property
    def fusion(self) -> str:
        return str(self.results["fusion"])

    @property
    def seed(self) -> int:
        return int(self.results["seed"])

    @property
    def train_samples_per_sec(self) -> float | None:
        """Training throughput (training steps only); runs written before it had its own key give their
        ``samples_per_sec`` (which also counted the validation passes inside each epoch)."""
        value = self.results.get("train_samples_per_sec", self.results.get("samples_per_sec"))
        return None if value is None else float(value)

    def metric(self, key: str) -> float | None:
        """A val/test metric (``val/acc``) from ``results.json``, None when absent."""
        split = key.split("/", 1)[0]
        value = (self.results.get(split) or {}).get(key)
        return None if value is None else float(value)


def read_curves(path: Path, epochs: int) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch ``val/*`` values of a Lightning ``metrics.csv``, for the ``epochs`` epochs of training.

    Rows logged at epoch >= ``epochs`` come from validating the best checkpoint after ``fit`` and are skipped;
    when one epoch has several validation rows, the last one counts.
    """
    if not path.is_file():
        return {}
    per_key: dict[str, dict[int, float]] = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            if not row.get("epoch"):
                continue
            try:
                epoch = int(float(row["epoch"]))
                if epoch >= epochs:
                    continue
                for key, value in row.items():
                    if key and key.startswith("val/") and value not in (None, ""):
                        per_key.setdefault(key, {})[epoch + 1] = float(value)
            except (TypeError, ValueError) as e:
                raise SweepFolderError(f"{path}: line {reader.line_num}: not a number ({e})") from None
    return {k: sorted(v.items()) for k, v in sorted(per_key.items())}


def read_run(run_dir: Path) -> RunRecord:
    """The :class:`RunRecord` of one run directory (which must hold ``results.json``)."""
    results = read_results(run_dir / RESULTS)  # a run's files are data: checked, a malformed one named
    overrides = hydra_overrides(run_dir)  # text: never resolved
    subsets = split = None
    eval_file = run_dir / EVAL_RESULTS
    if eval_file.is_file():
        evaluated = read_eval_results(eval_file)
        subsets, split = evaluated.get("subsets"), evaluated.get("split")
    return RunRecord(
        run_dir=run_dir,
        results=results,
        overrides=overrides,
        curves=read_curves(run_dir / METRICS, int(results.get("epochs") or 0)),
        subsets=subsets,
        subsets_split=split,
    )


def find_run_dirs(root: Path) -> list[Path]:
    """Every directory under ``root`` (``root`` included) holding a ``results.json``, sorted by path; tuning
    trials (``root/tune/...``) are not runs of the comparison."""
    return sorted(p.parent for p in root.rglob(RESULTS)
                  if ".hydra" not in p.parts and p.relative_to(root).parts[0] != TUNE_DIR)


def load_runs(root: str | Path) -> list[RunRecord]:
    """Every finished run under ``root``, in a stable order (fusion, seed, directory)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory")
    runs = [read_run(d) for d in find_run_dirs(root)]
    return sorted(runs, key=lambda r: (r.fusion, r.seed, str(r.run_dir)))
