"""The comparison report, from hand-made run directories with known numbers (no training)."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from mmgpt.errors import UserError
from mmgpt.report import Stat, load_runs, summarize, write_report
from mmgpt.report.runs import read_curves

SUBSETS = ("audio+image+text", "audio+image", "audio+text", "image+text", "audio", "image", "text")


def make_run(root: Path, name: str, fusion: str, seed: int, val: float, test: float, *, params: int = 1000,
             samples_per_sec: float = 100.0, memory: float = 500.0, wall: float = 10.0,
             curve: tuple[float, ...] = (0.3, 0.5), overrides: tuple[str, ...] = (),
             subsets: dict[str, float] | None = None, metric: str = "acc") -> Path:
    """A run directory as ``mmgpt.cli.train.train`` (+ the robustness evaluation) leaves it; ``val`` and ``test``
    are the values of ``metric``."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(
        "".join(f"- {o}\n" for o in (f"model/fusion={fusion}", f"seed={seed}", *overrides))
    )
    results: dict[str, Any] = {
        "fusion": fusion, "seed": seed, "val": {f"val/{metric}": val, "val/loss": 1.0},
        "test": {f"test/{metric}": test},
        "params": {"fusion": params // 4, "total": params}, "train_samples_per_sec": samples_per_sec,
        "peak_memory_mb": memory, "peak_memory_kind": "cpu_max_rss", "wall_time_s": wall,
        "epochs": len(curve), "global_step": 10 * len(curve), "best_ckpt": None, "run_dir": str(run),
    }
    (run / "results.json").write_text(json.dumps(results))
    lines = [f"epoch,step,train/loss,val/{metric}"]
    for e, v in enumerate(curve):
        lines += [f"{e},{10 * e + 5},2.0,", f"{e},{10 * e + 9},,{v}"]
    lines.append(f"{len(curve)},{10 * len(curve)},,{max(curve)}")  # re-validation of the best checkpoint
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    if subsets is not None:
        evaluated = {"split": "test", "metrics": {}, "subsets": {s: {"acc": v, "f1": v, "loss": 1.0}
                                                                 for s, v in subsets.items()}}
        (run / "eval_results.json").write_text(json.dumps(evaluated, sort_keys=True))
    return run


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Two fusions x three seeds (plus a lone third fusion), every number distinct."""
    root = tmp_path / "sweep"
    job = 0
    for fusion, base in (("early", 0.80), ("late", 0.90)):
        for seed in range(3):
            make_run(root, f"{job}_{fusion}_seed{seed}", fusion, seed, val=base + 0.01 * seed,
                     test=base - 0.02 + 0.013 * seed, params=1000 if fusion == "early" else 2000,
                     samples_per_sec=100.0 + 7 * job, memory=400.0 + job, wall=10.0 + job,
                     curve=(0.3 + seed / 100, base + 0.01 * seed),
                     subsets={s: base - 0.05 * i - 0.001 * seed for i, s in enumerate(SUBSETS)})
            job += 1
    make_run(root, f"{job}_cross_attention_seed0", "cross_attention", 0, val=0.5, test=0.45, subsets=None)
    return root


def test_report_numbers_equal_the_run_files(sweep: Path) -> None:
    files = write_report(sweep)
    results = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/results.json")}
    # runs.csv: every run, its own numbers, unchanged
    run_rows = rows(files.runs_csv)
    assert len(run_rows) == len(results) == 7
    for row in run_rows:
        res = results[row["run_dir"]]
        assert (row["fusion"], int(row["seed"])) == (res["fusion"], res["seed"])
        assert float(row["val_acc"]) == res["val"]["val/acc"]
        assert float(row["test_acc"]) == res["test"]["test/acc"]
        assert float(row["train_samples_per_sec"]) == res["train_samples_per_sec"]
        assert float(row["peak_memory_mb"]) == res["peak_memory_mb"]
        assert float(row["wall_time_s"]) == res["wall_time_s"]
        assert int(row["params_total"]) == res["params"]["total"]
    # report.csv: mean and sample std over seeds of exactly those numbers
    summary = {row["fusion"]: row for row in rows(files.summary_csv)}
    for fusion in ("early", "late"):
        runs = [r for r in results.values() if r["fusion"] == fusion]
        for column, values in {
            "val_acc": [r["val"]["val/acc"] for r in runs],
            "test_acc": [r["test"]["test/acc"] for r in runs],
            "train_samples_per_sec": [r["train_samples_per_sec"] for r in runs],
            "peak_memory_mb": [r["peak_memory_mb"] for r in runs],
            "wall_time_s": [r["wall_time_s"] for r in runs],
        }.items():
            assert float(summary[fusion][f"{column}_mean"]) == pytest.approx(statistics.mean(values), rel=1e-12)
            assert float(summary[fusion][f"{column}_std"]) == pytest.approx(statistics.stdev(values), rel=1e-12)
        assert summary[fusion]["seeds"] == "0 1 2"
        audio = [json.loads((sweep / d / "eval_results.json").read_text())["subsets"]["audio"]["acc"]
                 for d, r in results.items() if r["fusion"] == fusion]
        assert float(summary[fusion]["test_acc[audio]_mean"]) == pytest.approx(statistics.mean(audio), rel=1e-12)
    # a single run: no std, and no robustness numbers where the run has no evaluation
    assert summary["cross_attention"]["val_acc_std"] == ""
    assert summary["cross_attention"]["test_acc[audio]_mean"] == ""
    # the markdown shows the same means
    md = files.markdown.read_text()
    late = [r for r in results.values() if r["fusion"] == "late"]
    assert f"{statistics.mean(r['test']['test/acc'] for r in late):.4f}" in md


def test_ranking_follows_mean_validation_metric(sweep: Path) -> None:
    files = write_report(sweep)
    ranked = [(row["rank"], row["fusion"]) for row in rows(files.summary_csv)]
    assert ranked == [("1", "late"), ("2", "early"), ("3", "cross_attention")]
    assert [g.fusion for g in files.groups] == ["late", "early", "cross_attention"]


def test_rebuilding_gives_the_same_report(sweep: Path, tmp_path: Path) -> None:
    first = write_report(sweep)
    before = {p.name: p.read_bytes() for p in (first.markdown, first.summary_csv, first.runs_csv, *first.plots)}
    for name in before:
        (sweep / name).unlink()
    second = write_report(sweep)
    after = {p.name: p.read_bytes() for p in (second.markdown, second.summary_csv, second.runs_csv, *second.plots)}
    assert after == before
    assert {"val_curves.png", "metric_vs_params.png", "metric_vs_throughput.png"} <= set(after)
    assert all(data.startswith(b"\x89PNG") for name, data in after.items() if name.endswith(".png"))


def test_curves_leave_out_the_revalidation_of_the_best_checkpoint(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r", "early", 0, 0.9, 0.8, curve=(0.2, 0.7, 0.6))
    assert read_curves(run / "metrics.csv", epochs=3) == {"val/acc": [(1, 0.2), (2, 0.7), (3, 0.6)]}


def test_curve_band_is_over_seeds(sweep: Path) -> None:
    late = next(g for g in summarize(load_runs(sweep)) if g.fusion == "late")
    epoch1 = dict(late.curve)[1]
    assert epoch1.n == 3
    assert epoch1.mean == pytest.approx(statistics.mean([0.30, 0.31, 0.32]))
    assert epoch1.std == pytest.approx(statistics.stdev([0.30, 0.31, 0.32]))


def test_runs_that_differ_in_another_override_are_not_averaged(tmp_path: Path) -> None:
    for seed in (0, 1):
        for dim in (16, 32):
            make_run(tmp_path, f"d{dim}_s{seed}", "early", seed, 0.5 + dim / 100, 0.5, overrides=(f"model.dim={dim}",))
    groups = summarize(load_runs(tmp_path))
    assert sorted(g.name for g in groups) == ["early model.dim=16", "early model.dim=32"]
    assert all(g.seeds == [0, 1] for g in groups)


def test_no_finished_run_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "unfinished" / ".hydra").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no finished run"):
        write_report(tmp_path)


def test_stat_formatting() -> None:
    assert Stat.of([0.5]).fmt(2) == "0.50"
    assert Stat.of([]).fmt() == "n/a"
    assert Stat.of([1.0, 3.0]).fmt(1) == "2.0 ± 1.4"
    assert Stat.of([1.0, None, 3.0]).n == 2


def test_old_run_directories_report_their_samples_per_sec_as_the_training_figure(tmp_path: Path) -> None:
    """results.json written before ``train_samples_per_sec`` existed has ``samples_per_sec``: still reported."""
    root = tmp_path / "sweep"
    run = make_run(root, "0_early_seed0", "early", 0, val=0.8, test=0.7, samples_per_sec=123.0)
    results = json.loads((run / "results.json").read_text())
    results["samples_per_sec"] = results.pop("train_samples_per_sec")
    (run / "results.json").write_text(json.dumps(results))
    report = write_report(root)
    assert float(rows(report.runs_csv)[0]["train_samples_per_sec"]) == 123.0
    assert float(rows(report.summary_csv)[0]["train_samples_per_sec_mean"]) == 123.0


def _predictions(run: Path, rate: float, seed: int, n: int = 400) -> None:
    import numpy as np

    labels = np.random.default_rng(99).integers(0, 5, n)
    rng = np.random.default_rng(seed)
    scores = rng.random((n, 5)).astype(np.float32)
    right = rng.random(n) < rate
    scores[np.arange(n), labels] = np.where(right, 2.0, -1.0)
    np.savez(run / "predictions_test.npz", ids=np.array([f"s{i}" for i in range(n)]), labels=labels, scores=scores)


def test_report_tests_every_pair_and_marks_ties(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    job = 0
    for fusion, val, rate in (("early", 0.91, 0.90), ("late", 0.90, 0.895), ("cross_attention", 0.80, 0.60)):
        for seed in range(3):
            _predictions(make_run(root, f"{job}_{fusion}", fusion, seed, val=val + 0.001 * seed, test=rate), rate,
                         seed=100 * job)
            job += 1
    text = (root / write_report(root).markdown.name).read_text()
    assert "## Are the differences real?" in text and "## Methods: the significance test" in text
    table = text.split("## Are the differences real?")[1]
    assert "| early − late |" in table and "**no**" in table.split("| early − late |")[1].splitlines()[0]
    assert "| cross_attention − early |" in table
    assert "yes" in table.split("| cross_attention − early |")[1].splitlines()[0]
    assert "Not distinguishable: early and late" in table
    assert "| 2 (tie) | late |" in text  # ranked second, but not distinguishable from the first


def test_report_without_predictions_says_so(sweep: Path) -> None:
    text = (sweep / write_report(sweep).markdown.name).read_text()
    assert "no significance test" in text


def test_report_shows_each_fusions_gain_over_the_best_unimodal_baseline(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    for job, (fusion, test) in enumerate((("early", 0.9), ("unimodal_image", 0.6), ("unimodal_text", 0.7))):
        make_run(root, f"{job}_{fusion}", fusion, 0, val=test, test=test)
    text = (root / write_report(root).markdown.name).read_text()
    assert "gain over best unimodal" in text
    assert next(ln for ln in text.splitlines() if "| early |" in ln).rstrip(" |").endswith("+0.2000")
    assert next(ln for ln in text.splitlines() if "| unimodal_text |" in ln).rstrip(" |").endswith("baseline")


def test_a_min_metric_ranks_the_lowest_first(tmp_path: Path) -> None:
    """A regression compared on MAE (``primary_metric: {name: mae, mode: min}``): the lowest validation MAE ranks
    first, the best baseline is the one with the lowest MAE and a fusion below it gains. Ranking a min metric as
    if higher were better would put the worst model first (the bug this guards against)."""
    root = tmp_path / "sweep"
    maes = {"early": 0.90, "late": 0.60, "cross_attention": 0.75, "unimodal_text": 0.80, "unimodal_image": 1.10}
    for job, (fusion, mae) in enumerate(maes.items()):
        make_run(root, f"{job}_{fusion}", fusion, 0, val=mae, test=mae, metric="mae")
    best_first = ["late", "cross_attention", "unimodal_text", "early", "unimodal_image"]
    assert [g.fusion for g in summarize(load_runs(root), "mae", "min")] == best_first
    assert [g.fusion for g in summarize(load_runs(root), "mae", "max")] == best_first[::-1]  # mode decides, not name

    report = write_report(root, metric="mae", mode="min")
    assert [row["fusion"] for row in rows(report.summary_csv)] == best_first
    assert [row["rank"] for row in rows(report.summary_csv)] == ["1", "2", "3", "4", "5"]
    text = report.markdown.read_text()
    assert "ranked by mean validation mae of each run's best checkpoint (lower is better, best first)" in text
    line = {f: next(ln for ln in text.splitlines() if f"| {f} |" in ln).rstrip(" |") for f in maes}
    assert line["late"].startswith("| 1 |") and line["unimodal_image"].startswith("| 5 |")
    assert line["late"].endswith("+0.2000")   # 0.80 (unimodal_text, the best baseline) - 0.60
    assert line["early"].endswith("-0.1000")  # worse than the best baseline


def _regression_predictions(run: Path, noise: float, seed: int, n: int = 300) -> float:
    """``predictions_test.npz`` as a regression run writes it (float targets, predictions in (N, 1) ``logits``,
    meaningless softmax ``scores``); returns the run's test MAE."""
    import numpy as np

    labels = (np.round(np.random.default_rng(7).uniform(-3, 3, n) * 3) / 3).astype(np.float32)
    pred = (labels + np.random.default_rng(seed).normal(0, noise, n)).astype(np.float32)
    np.savez(run / "predictions_test.npz", ids=np.array([f"s{i}" for i in range(n)]), labels=labels,
             scores=np.ones((n, 1), np.float32), logits=pred[:, None])
    return float(np.abs(pred - labels).mean())


def test_a_regression_report_tests_the_mae_of_every_pair(tmp_path: Path) -> None:
    """A regression comparison (``experiment=mosi``: ranked by MAE, mode min) gets the significance test on MAE,
    the metric it ranks by: the difference is mae(a) - mae(b) (negative: a is better) and equals the mean over seeds
    of the runs' test MAE differences; tensor (much lower MAE) beats late, late and early are not told apart."""
    import numpy as np

    root = tmp_path / "sweep"
    maes: dict[str, list[float]] = {}
    for job, (fusion, noise) in enumerate((("tensor", 0.5), ("late", 1.0), ("early", 1.01))):
        for seed in range(3):
            run = make_run(root, f"{job}_{fusion}_{seed}", fusion, seed, val=noise, test=noise, metric="mae")
            maes.setdefault(fusion, []).append(_regression_predictions(run, noise, seed=100 * job + seed))
    report = write_report(root, metric="mae", mode="min")
    text = report.markdown.read_text()
    table = text.split("## Are the differences real?")[1].split("## Cost")[0]
    assert "`mae(a) - mae(b)` (negative means a is better (lower `mae` is better))" in table
    pair = {(r["a"], r["b"]): r for r in rows(report.markdown.parent / "significance.csv")}
    assert {r["metric"] for r in pair.values()} == {"mae"}
    late_tensor = pair[("late", "tensor")]
    assert float(late_tensor["difference"]) == pytest.approx(np.mean(maes["late"]) - np.mean(maes["tensor"]))
    assert float(late_tensor["difference"]) > 0.3 and float(late_tensor["ci_low"]) > 0  # tensor is better
    assert late_tensor["distinguishable"] == "true" and pair[("early", "late")]["distinguishable"] == "false"
    assert "Not distinguishable: early and late" in table
    assert "The metric is `mae`, mean absolute error" in text.split("## Methods: the significance test")[1]


def test_a_metric_without_a_per_sample_form_says_so_by_name(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    for job, fusion in enumerate(("early", "late")):
        run = make_run(root, f"{job}_{fusion}", fusion, 0, val=0.5, test=0.5, metric="bleu")
        _regression_predictions(run, 1.0, seed=job)
    text = write_report(root, metric="bleu", mode="max").markdown.read_text()
    assert "The ranking metric `bleu` has no per-sample form" in text and "no significance test" in text
    assert not (root / "significance.csv").exists()


def test_a_multilabel_report_uses_the_runs_threshold(tmp_path: Path) -> None:
    """f1_micro is tested at the threshold the runs trained with (their ``config.yaml``): at 0.9 no logit of 2
    (sigmoid 0.88) predicts a label, so both fusions score 0 and nothing differs; at the default 0.5 they do."""
    import numpy as np

    def sweep(threshold: float | None) -> dict[str, str]:
        root = tmp_path / f"sweep{threshold}"
        for job, (fusion, right) in enumerate((("early", 0.9), ("late", 0.5))):
            for seed in range(2):
                run = make_run(root, f"{job}_{fusion}_{seed}", fusion, seed, val=right, test=right, metric="f1_micro")
                if threshold is not None:
                    (run / "config.yaml").write_text("model:\n  module:\n    objectives:\n      multilabel:\n"
                                                     f"        type: multilabel\n        threshold: {threshold}\n")
                rng = np.random.default_rng(10 * job + seed)
                labels = (rng.random((200, 4)) < 0.4).astype(np.int64)
                hit = rng.random((200, 4)) < right
                logits = np.where(hit == labels.astype(bool), 2.0, -2.0).astype(np.float32)
                np.savez(run / "predictions_test.npz", ids=np.arange(200).astype(str), labels=labels,
                         scores=np.full((200, 4), 0.25, np.float32), logits=logits)
        report = write_report(root, metric="f1_micro", mode="max")
        return rows(report.markdown.parent / "significance.csv")[0]

    default, strict = sweep(None), sweep(0.9)
    assert float(default["difference"]) > 0.2 and default["distinguishable"] == "true"
    assert float(strict["difference"]) == 0.0 and strict["p"] == "1.0"


def test_an_unknown_mode_is_an_error(sweep: Path) -> None:
    with pytest.raises(UserError, match=r"compare\.mode='lower': expected max .* or min"):
        write_report(sweep, metric="acc", mode="lower")
