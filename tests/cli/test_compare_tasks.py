"""A regression and a multi-label comparison end to end through ``mmgpt-compare``: the report ranks by the task's
primary metric in its direction (MAE: lower is better; micro F1: higher) and shows that metric's columns."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import mmgpt.cli.compare as compare
from tests.helpers.modalities import TEXT_FEATS, labelled_folder

SMALL = [
    "experiment=smoke", "data=manifest", "data.num_workers=0", "data.batch_size=8", TEXT_FEATS,
    "~model.net.encoders.image", "~model.net.encoders.audio",
    "+model/encoder/features@model.net.encoders.vision_feats=scratch",
    "compare.fusions='early,late'", "seed=0", "compare.baselines=true", "model.dim=16", "trainer.max_epochs=2",
    "logger=csv", "callbacks.progress=null",
]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _sweep(tmp_path: Path, task: str, label_type: str) -> Path:
    root = labelled_folder(tmp_path / "data", label_type)
    sweep_dir = tmp_path / "sweep"
    compare.main([*SMALL, f"task={task}", f"data.root={root}", f"data.label_type={label_type}",
                  f"data.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep_dir}"])
    return sweep_dir


@pytest.mark.slow
def test_regression_comparison_ranks_by_mae_lowest_first(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path, "regression", "float")
    report = _rows(sweep / "report.csv")
    # early, late and one baseline per modality (unimodal_vision_feats has no YAML of its own)
    assert sorted(r["fusion"] for r in report) == ["early", "late", "unimodal_text", "unimodal_vision_feats"]
    assert {"val_mae_mean", "test_mae_mean"} <= set(report[0])
    maes = [float(r["val_mae_mean"]) for r in sorted(report, key=lambda r: int(r["rank"]))]
    assert maes == sorted(maes)  # lower is better: the best run first
    runs = _rows(sweep / "runs.csv")
    for row in runs:
        res = json.loads((sweep / row["run_dir"] / "results.json").read_text())
        assert float(row["val_mae"]) == res["val"]["val/mae"]
        assert {"val/acc2", "val/acc2_nonzero", "val/f1", "val/acc7", "val/corr"} <= set(res["val"])
        ckpt = Path(res["best_ckpt"]).name
        assert ckpt.startswith("best-") and "mae" in ckpt
    md = (sweep / "report.md").read_text()
    assert "ranked by mean validation mae of each run's best checkpoint (lower is better, best first)" in md
    assert "test mae" in md


@pytest.mark.slow
def test_multilabel_comparison_ranks_by_micro_f1_highest_first(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path, "multilabel", "multilabel")
    report = _rows(sweep / "report.csv")
    assert {"val_f1_micro_mean", "test_f1_micro_mean"} <= set(report[0])
    f1s = [float(r["val_f1_micro_mean"]) for r in sorted(report, key=lambda r: int(r["rank"]))]
    assert f1s == sorted(f1s, reverse=True)
    res = json.loads(next(sweep.glob("*/results.json")).read_text())
    assert {"val/f1_micro", "val/f1_macro", "val/f1_weighted", "val/f1_samples", "val/map"} <= set(res["val"])
    md = (sweep / "report.md").read_text()
    assert "ranked by mean validation f1_micro of each run's best checkpoint (higher is better, best first)" in md
