"""Loggers: the CSV history of a resumed run is continued, never deleted, and rows after the checkpoint dropped."""

from __future__ import annotations

import csv
from pathlib import Path

from pytorch_lightning.loggers import CSVLogger

from mmgpt.training.loggers import ResumableCSVLogger, prepare_metrics_csv, trim_metrics_csv


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _log(logger: CSVLogger, rows: list[tuple[int, dict[str, float]]]) -> None:
    for step, metrics in rows:
        logger.log_metrics(metrics, step=step)
    logger.save()


def test_a_second_session_appends_to_the_metrics_of_the_first(tmp_path: Path) -> None:
    _log(ResumableCSVLogger(tmp_path, name="", version=""), [(0, {"train/loss": 2.0}), (1, {"train/loss": 1.5})])
    # the resumed session logs a metric the first did not: the header widens, the old rows stay
    _log(ResumableCSVLogger(tmp_path, name="", version=""), [(2, {"train/loss": 1.0, "val/acc": 0.5})])
    rows = _rows(tmp_path / "metrics.csv")
    assert [(r["step"], r["train/loss"], r["val/acc"]) for r in rows] == [("0", "2.0", ""), ("1", "1.5", ""),
                                                                         ("2", "1.0", "0.5")]


def test_lightnings_stock_logger_would_have_lost_the_first_session(tmp_path: Path) -> None:
    """Guards the reason ResumableCSVLogger exists; if Lightning stops deleting the file, it can go."""
    _log(CSVLogger(tmp_path, name="", version=""), [(0, {"train/loss": 2.0})])
    _log(CSVLogger(tmp_path, name="", version=""), [(1, {"train/loss": 1.0})])
    assert [r["step"] for r in _rows(tmp_path / "metrics.csv")] == ["1"]


def test_trim_drops_only_rows_after_the_checkpoint_step(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss,val/acc\n0,4,1.0,\n0,7,,0.5\n1,8,0.9,\n1,9,0.8,\n")
    assert trim_metrics_csv(path, 8) == 1
    assert [r["step"] for r in _rows(path)] == ["4", "7", "8"]
    assert trim_metrics_csv(path, 8) == 0
    assert trim_metrics_csv(tmp_path / "absent.csv", 3) == 0


def test_a_fresh_run_in_a_used_directory_keeps_the_old_metrics_aside(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss\n0,9,1.0\n0,12,0.9\n")
    prepare_metrics_csv(path, resume_step=10)  # resuming at step 10: continue the file without the later row
    assert [r["step"] for r in _rows(path)] == ["9"]
    prepare_metrics_csv(path, resume_step=None)  # a new run: the old file is kept under another name
    assert not path.exists() and [r["step"] for r in _rows(tmp_path / "metrics.1.csv")] == ["9"]
    path.write_text("epoch,step\n0,1\n")
    prepare_metrics_csv(path, resume_step=None)
    assert (tmp_path / "metrics.2.csv").is_file() and not path.exists()
