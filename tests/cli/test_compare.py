"""``mmgpt-compare``: the sweep machinery with stand-in training (fast), then a tiny real sweep (2 fusions x 2 seeds,
a few steps; marked slow): its report, rebuild, resume, wandb and TensorBoard tracking."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir

import mmgpt.cli.compare as compare
from mmgpt.config import CONFIG_DIR
from mmgpt.training.tracking import offline_wandb_runs, wandb_sync_command

TINY = [
    "experiment=smoke",
    "model/fusion=early,late",
    "seed=0,1",
    "logger=many",                      # CSV + TensorBoard + wandb (offline)
    "model.dim=16",
    "data.num_train=32",
    "data.num_val=16",
    "data.num_test=16",
    "data.batch_size=16",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=2",
    "callbacks.progress=null",
]
JOBS = ["0_early_seed0", "1_late_seed0", "2_early_seed1", "3_late_seed1"]  # seed-major order


# ---------------------------------------------------------------------------------------------------------------
# The sweep machinery, with `train` and `evaluate` replaced by stand-ins that write the same files in milliseconds.


class FakeRuns:
    """Stand-ins for :func:`train` and :func:`evaluate` that record their calls and write plausible run files."""

    def __init__(self) -> None:
        self.trained: list[str] = []
        self.evaluated: list[str] = []

    def train(self, cfg: Any) -> dict[str, Any]:
        from mmgpt.cli.common import write_json
        from mmgpt.cli.train import fusion_name

        out = Path(cfg.paths.output_dir)
        self.trained.append(out.name)
        fusion, seed = fusion_name(cfg), int(cfg.seed)
        acc = {"early": 0.6, "late": 0.7}[fusion] + 0.01 * seed
        (out / "checkpoints").mkdir(parents=True)
        (out / "checkpoints" / "best.ckpt").write_bytes(b"")
        (out / "metrics.csv").write_text(f"epoch,step,val/acc\n0,1,{acc / 2}\n1,2,{acc}\n2,2,{acc}\n")
        mae = round(1.0 - acc, 6)  # a regression's primary metric (task=regression: mae, mode min)
        results = {"fusion": fusion, "seed": seed, "val": {"val/acc": acc, "val/mae": mae},
                   "test": {"test/acc": acc - 0.05, "test/mae": mae + 0.05},
                   "params": {"total": 100 * len(fusion), "fusion": 10}, "train_samples_per_sec": 50.0 + seed,
                   "peak_memory_mb": 300.0, "peak_memory_kind": "cpu_max_rss", "wall_time_s": 1.0 + seed,
                   "epochs": 2, "global_step": 2, "best_ckpt": str(out / "checkpoints" / "best.ckpt")}
        write_json(out / "results.json", results)
        return results

    def evaluate(self, cfg: Any) -> dict[str, Any]:
        from mmgpt.cli.common import write_json

        out = Path(cfg.paths.output_dir)
        self.evaluated.append(out.name)
        assert Path(cfg.ckpt_path).is_file() and cfg.split == "test" and cfg.subsets
        results = {"split": cfg.split, "metrics": {}, "subsets": {"image+text": {"acc": 0.5}, "text": {"acc": 0.25}}}
        write_json(out / "eval_results.json", results)
        return results


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeRuns:
    runs = FakeRuns()
    monkeypatch.setattr(compare, "train", runs.train)
    monkeypatch.setattr(compare, "evaluate", runs.evaluate)
    return runs


def test_sweep_trains_each_point_once_and_resume_skips_finished(fake: FakeRuns, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    compare.main(["model/fusion=early,late", "seed=0,1", f"hydra.sweep.dir={sweep_dir}"])
    assert fake.trained == fake.evaluated == JOBS
    rows = {row["run_dir"]: row for row in csv_rows(sweep_dir / "runs.csv")}
    assert sorted(rows) == JOBS
    for job, res in results_of(sweep_dir).items():
        assert float(rows[job]["val_acc"]) == res["val"]["val/acc"]
        assert rows[job]["test_acc[text]"] == "0.25"
    assert [row["fusion"] for row in csv_rows(sweep_dir / "report.csv")] == ["late", "early"]

    # interrupted: job 2 never finished (leftovers only), job 3 finished training but not its evaluation
    (sweep_dir / JOBS[2] / "results.json").unlink()
    (sweep_dir / JOBS[3] / "eval_results.json").unlink()
    (sweep_dir / "report.md").unlink()
    kept = {j: (sweep_dir / j / "results.json").stat().st_mtime_ns for j in (JOBS[0], JOBS[1], JOBS[3])}
    fake.trained.clear(), fake.evaluated.clear()
    compare.main([f"resume={sweep_dir}"])
    assert fake.trained == [JOBS[2]]
    assert fake.evaluated == [JOBS[2], JOBS[3]]
    assert {j: (sweep_dir / j / "results.json").stat().st_mtime_ns for j in kept} == kept
    assert (sweep_dir / "report.md").is_file() and len(csv_rows(sweep_dir / "runs.csv")) == 4

    # resuming a finished sweep trains nothing
    fake.trained.clear(), fake.evaluated.clear()
    compare.main([f"resume={sweep_dir}"])
    assert fake.trained == fake.evaluated == []


def test_a_regression_sweep_ranks_the_lowest_mae_first_also_when_rebuilt(fake: FakeRuns, tmp_path: Path) -> None:
    """task=regression declares primary_metric {mae, min}: the report ranks the lowest MAE first (late: 0.3 < 0.4),
    and report=DIR reads that direction back from the sweep; another metric needs its direction given."""
    sweep_dir = tmp_path / "sweep"
    compare.main(["task=regression", "model/fusion=early,late", "seed=0,1", "compare.robustness=false",
                  "compare.cost=false", f"hydra.sweep.dir={sweep_dir}"])
    assert compare.sweep_ranking(sweep_dir) == ("mae", "min")
    ranked = csv_rows(sweep_dir / "report.csv")
    assert [row["fusion"] for row in ranked] == ["late", "early"]
    assert float(ranked[0]["val_mae_mean"]) < float(ranked[1]["val_mae_mean"])
    assert "(lower is better, best first)" in (sweep_dir / "report.md").read_text()

    (sweep_dir / "report.csv").unlink()
    compare.main([f"report={sweep_dir}"])
    assert [row["fusion"] for row in csv_rows(sweep_dir / "report.csv")] == ["late", "early"]
    with pytest.raises(SystemExit, match=r"compare\.metric=loss: .* add compare\.mode=max .* or compare\.mode=min"):
        compare.main([f"report={sweep_dir}", "compare.metric=loss"])
    compare.main([f"report={sweep_dir}", "compare.metric=acc", "compare.mode=max"])
    assert [row["fusion"] for row in csv_rows(sweep_dir / "report.csv")] == ["late", "early"]  # acc: 0.7 > 0.6


def test_two_sweeps_never_share_a_directory(fake: FakeRuns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMGPT_LOG_DIR", str(tmp_path))
    for _ in range(2):
        compare.main(["model/fusion=early", "seed=0", "compare.robustness=false"])
    sweeps = sorted((tmp_path / "compare" / "multiruns").iterdir())
    assert len(sweeps) == 2
    assert all((s / "0_early_seed0" / "results.json").is_file() for s in sweeps)


# ---------------------------------------------------------------------------------------------------------------
# A tiny real sweep: 2 fusions x 2 seeds, a few steps, CSV + TensorBoard + wandb (offline).


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the tiny comparison once for the module; returns its sweep directory."""
    sweep_dir = tmp_path_factory.mktemp("compare") / "sweep"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        compare.main([*TINY, f"hydra.sweep.dir={sweep_dir}"])
    return sweep_dir


def results_of(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/results.json"))}


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_compare_config_defaults() -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("compare", return_hydra_config=True)
        train_cfg = compose("train", overrides=["experiment=compare_fusion"])
    assert cfg.task_name == "compare"
    assert cfg.hydra.runtime.choices.experiment == "compare_fusion"
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    # the three fusions and one unimodal baseline per modality (issue 13: does fusing help at all?)
    assert cfg.hydra.sweeper.params["model/fusion"] == (
        "early,late,cross_attention,unimodal_audio,unimodal_image,unimodal_text")
    assert cfg.hydra.sweeper.params.seed == "0,1,2"
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        no_baselines = compose("compare", overrides=["compare.baselines=false"], return_hydra_config=True)
    assert no_baselines.hydra.sweeper.params["model/fusion"] == "early,late,cross_attention"
    # the experiment file alone reproduces the comparison's settings with mmgpt-train too
    assert train_cfg.trainer.max_epochs == cfg.trainer.max_epochs
    assert train_cfg.compare.fusions == cfg.compare.fusions


@pytest.mark.slow
def test_sweep_writes_report_whose_numbers_are_the_runs(sweep: Path) -> None:
    results = results_of(sweep)
    assert sorted(results) == JOBS  # job number first: run directories never collide
    for name in ("report.md", "report.csv", "runs.csv"):
        assert (sweep / name).stat().st_size > 0
    for name in ("val_curves.png", "metric_vs_params.png", "metric_vs_throughput.png", "metric_vs_flops.png",
                 "metric_vs_latency.png"):
        assert (sweep / name).read_bytes().startswith(b"\x89PNG")

    for row in csv_rows(sweep / "runs.csv"):
        res = results[row["run_dir"]]
        assert (row["fusion"], int(row["seed"])) == (res["fusion"], res["seed"])
        assert float(row["val_acc"]) == res["val"]["val/acc"]
        assert float(row["test_acc"]) == res["test"]["test/acc"]
        assert float(row["train_samples_per_sec"]) == res["train_samples_per_sec"]
        assert int(row["params_total"]) == res["params"]["total"]
        subsets = json.loads((sweep / row["run_dir"] / "eval_results.json").read_text())["subsets"]
        assert float(row["test_acc[audio+image+text]"]) == subsets["audio+image+text"]["acc"]
        assert float(row["test_acc[text]"]) == subsets["text"]["acc"]

    summary = {row["fusion"]: row for row in csv_rows(sweep / "report.csv")}
    assert set(summary) == {"early", "late"}
    for fusion, row in summary.items():
        runs = [r for r in results.values() if r["fusion"] == fusion]
        assert row["seeds"] == "0 1"
        for column, values in {
            "val_acc": [r["val"]["val/acc"] for r in runs],
            "test_acc": [r["test"]["test/acc"] for r in runs],
            "train_samples_per_sec": [r["train_samples_per_sec"] for r in runs],
            "peak_memory_mb": [r["peak_memory_mb"] for r in runs],
            "wall_time_s": [r["wall_time_s"] for r in runs],
        }.items():
            assert float(row[f"{column}_mean"]) == pytest.approx(statistics.mean(values), rel=1e-12)
            assert float(row[f"{column}_std"]) == pytest.approx(statistics.stdev(values), rel=1e-12)
        assert int(row["params_total"]) == runs[0]["params"]["total"]
    # ranked by mean validation accuracy
    ranked = sorted(summary.values(), key=lambda row: int(row["rank"]))
    assert float(ranked[0]["val_acc_mean"]) >= float(ranked[1]["val_acc_mean"])
    md = (sweep / "report.md").read_text()
    assert "mmgpt-compare experiment=smoke model/fusion=early,late seed=0,1" in md
    # the cost of both fusions, measured once after the runs, in report.md and as cost_* columns of report.csv
    cost = json.loads((sweep / "cost.json").read_text())
    assert sorted(cost["configurations"]) == ["early", "late"] and cost["batch"] == 32  # the 32 training samples
    for fusion, row in summary.items():
        measured = cost["configurations"][fusion]
        assert measured["params"] == int(row["params_total"])
        assert measured["forward_flops"] > 0 and measured["train_step_flops"] > 2 * measured["forward_flops"]
        assert measured["peak_step_memory_mb"] > 2 * measured["params"] * 4 / 2**20  # weights + gradients
        assert measured["latency_b1_ms"] > 0 and measured["train_samples_per_sec"] > 0
        assert float(row["cost_forward_flops"]) == measured["forward_flops"]
    assert "## Cost at equal footing" in md and "## Methods: hyperparameters" in md
    assert "## Missing-modality robustness" in md and "audio+image+text" in md


@pytest.mark.slow
def test_report_from_directories_is_the_same(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = ["report.md", "report.csv", "runs.csv", "significance.csv", "val_curves.png", "metric_vs_params.png",
             "metric_vs_throughput.png", "metric_vs_flops.png", "metric_vs_latency.png"]
    before = {n: (sweep / n).read_bytes() for n in names}
    for n in names:
        (sweep / n).unlink()
    compare.main([f"report={sweep}"])
    assert {n: (sweep / n).read_bytes() for n in names} == before
    assert "report.md" in capsys.readouterr().out


@pytest.fixture
def interrupted(sweep: Path, tmp_path: Path) -> Path:
    """A copy of the sweep as an interruption would leave it: job 3 mid-training, job 1 before its evaluation."""
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    (copy / JOBS[3] / "results.json").unlink()
    (copy / JOBS[3] / "eval_results.json").unlink()
    (copy / JOBS[3] / "checkpoints" / "stale-attempt.ckpt").write_bytes(b"")
    (copy / JOBS[1] / "eval_results.json").unlink()
    for name in ("report.md", "report.csv"):
        (copy / name).unlink()
    return copy


@pytest.mark.slow
def test_resume_of_a_real_sweep_skips_finished_runs(interrupted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trained: list[tuple[str, int]] = []
    evaluated: list[str] = []
    real_train, real_evaluate = compare.train, compare.evaluate

    def counting_train(cfg: Any) -> dict[str, Any]:
        trained.append((Path(cfg.paths.output_dir).name, int(cfg.seed)))
        return real_train(cfg)

    def counting_evaluate(cfg: Any) -> dict[str, Any]:
        evaluated.append(Path(cfg.paths.output_dir).name)
        return real_evaluate(cfg)

    monkeypatch.setattr(compare, "train", counting_train)
    monkeypatch.setattr(compare, "evaluate", counting_evaluate)
    finished = {j: (interrupted / j / "results.json").stat().st_mtime_ns for j in JOBS[:3]}
    compare.main([f"resume={interrupted}"])

    assert trained == [(JOBS[3], 1)]
    assert evaluated == [JOBS[1], JOBS[3]]
    assert {j: (interrupted / j / "results.json").stat().st_mtime_ns for j in JOBS[:3]} == finished
    assert not (interrupted / JOBS[3] / "checkpoints" / "stale-attempt.ckpt").exists()
    assert sorted(results_of(interrupted)) == JOBS
    assert len(csv_rows(interrupted / "runs.csv")) == 4


def wandb_records(path: Path) -> Iterator[Any]:
    """The records of a wandb ``.wandb`` file (a LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


@pytest.mark.slow
def test_wandb_runs_are_separate_and_share_one_group(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = results_of(sweep)
    runs = [p for p in offline_wandb_runs(sweep) if p.parent.parent.name != "dashboard"]
    assert sorted(p.parent.parent.name for p in runs) == JOBS  # one run per job, in the job's directory
    ids, groups = set(), set()
    for run_dir in runs:
        res = results[run_dir.parent.parent.name]
        run_records = [r.run for r in wandb_records(next(run_dir.glob("run-*.wandb"))) if r.HasField("run")]
        summary = {u.key: json.loads(u.value_json) for r in wandb_records(next(run_dir.glob("run-*.wandb")))
                   if r.HasField("summary") for u in r.summary.update if u.key}
        ids |= {r.run_id for r in run_records}
        groups |= {r.run_group for r in run_records}
        assert {f"fusion:{res['fusion']}", f"seed:{res['seed']}"} <= set(run_records[-1].tags)
        assert summary["params/total"] == res["params"]["total"]
        assert summary["train_samples_per_sec"] == pytest.approx(res["train_samples_per_sec"])
    assert len(ids) == len(JOBS)
    assert groups == {f"compare-{sweep.name}"}
    # the comparison's own tables: one more run in the same group, with the summary and significance tables
    (report_run,) = [p for p in offline_wandb_runs(sweep) if p.parent.parent.name == "dashboard"]
    records = list(wandb_records(next(report_run.glob("run-*.wandb"))))
    assert {r.run.run_group for r in records if r.HasField("run")} == {f"compare-{sweep.name}"}
    tables = {(item.nested_key[0], json.loads(item.value_json)) for r in records if r.HasField("history")
              for item in r.history.item if list(item.nested_key[1:]) == ["_type"]}
    assert {("summary", "table-file"), ("runs", "table-file"), ("significance", "table-file")} <= tables
    assert wandb_sync_command(sweep) == f"wandb sync {sweep}/*/wandb/offline-run-*"


@pytest.mark.slow
def test_tensorboard_hparams_hold_fusion_and_final_metrics(sweep: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    for job, res in results_of(sweep).items():
        acc = EventAccumulator(str(sweep / job / "tensorboard"))
        acc.Reload()
        content = acc.PluginTagToContent("hparams")
        starts = [plugin_data_pb2.HParamsPluginData.FromString(c) for c in content.values()]
        hparams = next(s.session_start_info.hparams for s in starts if s.HasField("session_start_info"))
        assert hparams["fusion"].string_value == res["fusion"]
        assert hparams["seed"].number_value == res["seed"]
        assert acc.Scalars("final/val/acc")[-1].value == pytest.approx(res["val"]["val/acc"], rel=1e-6)
        assert acc.Scalars("final/params/total")[-1].value == res["params"]["total"]


def test_clear_unfinished_keeps_hydra_record_and_log(tmp_path: Path) -> None:
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "compare.log").write_text("log")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "metrics.csv").write_text("")
    removed = compare.clear_unfinished(tmp_path)
    assert sorted(p.name for p in removed) == ["checkpoints", "metrics.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hydra", "compare.log"]


def test_report_of_a_directory_without_runs_fails(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"^error: .*no finished run \(no results.json\)"):
        compare.main([f"report={tmp_path}"])


@pytest.mark.slow
def test_ddp_sim_jobs_each_launch_their_own_processes(tmp_path: Path) -> None:
    """With trainer=ddp_sim every job of the sweep trains on two processes, the second job too.

    Run as the installed command: Lightning's DDP launcher re-executes the command line, which inside pytest
    would be pytest itself.
    """
    import subprocess
    import sys

    sweep_dir = tmp_path / "sweep"
    command = [str(Path(sys.executable).parent / "mmgpt-compare"), "experiment=smoke", "trainer=ddp_sim",
               "model/fusion=early", "seed=0,1", "logger=csv", "compare.robustness=false",
               "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
               "callbacks.progress=null", f"hydra.sweep.dir={sweep_dir}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = results_of(sweep_dir)
    assert sorted(results) == ["0_early_seed0", "1_early_seed1"]
    assert [r["world_size"] for r in results.values()] == [2, 2]
    assert (sweep_dir / "report.md").is_file()


def test_a_finished_run_with_another_config_is_not_reused(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=smoke", f"paths.output_dir={tmp_path}"])
    OmegaConf.save(cfg, tmp_path / "config.yaml", resolve=True)
    assert compare.changed_keys(tmp_path, cfg) == []
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "config.yaml").write_text((tmp_path / "config.yaml").read_text())
    cfg.paths.output_dir = str(moved)
    assert compare.changed_keys(moved, cfg) == []  # a moved sweep is the same sweep
    cfg.trainer.max_epochs = 7
    assert compare.changed_keys(moved, cfg) == ["trainer.max_epochs"]


@pytest.mark.slow
def test_a_real_regression_comparison_on_features_is_measured_and_ranked_by_lowest_mae(tmp_path: Path) -> None:
    """experiment=mosi (features modalities, task=regression) end to end, about 30 s on CPU: the cost step
    rebuilds each network fitted to the data's declared features and trains it on float targets (cost.json for
    every fusion), the report puts the lowest validation MAE first, and its significance test compares the runs'
    saved predicted values on MAE."""
    from tests.helpers.benchmarks import write_mmsa

    pkl = tmp_path / "unaligned_50.pkl"
    write_mmsa(pkl, aligned=False, sizes={"train": 16, "valid": 8, "test": 8}, seq_lens=(12, 10, 8))
    sweep = tmp_path / "sweep"
    compare.main(["experiment=mosi", f"data.root={pkl}", "model/fusion=early,late", "seed=0",
                  "compare.baselines=false", "compare.robustness=false", "compare.cost_rounds=1", "model.dim=16",
                  "model.num_heads=2", "trainer.max_epochs=1", "logger=csv", "callbacks.progress=null",
                  "data.batch_size=8", f"hydra.sweep.dir={sweep}"])
    assert sorted(json.loads((sweep / "cost.json").read_text())["configurations"]) == ["early", "late"]
    maes = [float(row["val_mae_mean"]) for row in csv_rows(sweep / "report.csv")]
    assert maes == sorted(maes)
    # each run saved its predicted values, and the report tests the pair on MAE (the metric it ranks by)
    import numpy as np

    saved = [np.load(p) for p in sorted(sweep.rglob("predictions_test.npz"))]
    assert len(saved) == 2 and all(s["logits"].shape == (8, 1) and s["labels"].dtype == np.float32 for s in saved)
    (pair,) = csv_rows(sweep / "significance.csv")
    assert (pair["a"], pair["b"], pair["metric"]) == ("early", "late", "mae")
    tests = {row["fusion"]: float(row["test_mae_mean"]) for row in csv_rows(sweep / "report.csv")}
    assert float(pair["difference"]) == pytest.approx(tests["early"] - tests["late"], abs=1e-5)
    assert "`mae(a) - mae(b)` (negative means a is better" in (sweep / "report.md").read_text()


# ---------------------------------------------------------------------------------------------------------------
# The plain function interface: one job from overrides and a run directory, nothing read from or written to argv.

JOB = ["model/fusion=late", "seed=1", "compare.robustness=false"]


class SeenByTraining:
    """A stand-in for :func:`train` that records what a job sees of Hydra and the run stamp, then runs ``inner``."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.seen = inner, []

    def __call__(self, cfg: Any) -> dict[str, Any]:
        from hydra.core.hydra_config import HydraConfig

        from mmgpt.cli.common import hydra_choice
        from mmgpt.stamp import current_command

        hc = HydraConfig.get()
        self.seen.append({"task": list(hc.overrides.task), "mode": str(hc.mode), "run_dir": hc.run.dir,
                          "job": hc.job.name, "fusion": hydra_choice("model/fusion"), "seed": int(cfg.seed),
                          "output_dir": str(cfg.paths.output_dir), "command": current_command()})
        return self.inner(cfg)


def test_run_one_is_a_hydra_job_in_the_given_directory_and_leaves_argv_alone(
        fake: FakeRuns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import logging
    import sys

    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    seen = SeenByTraining(fake.train)
    monkeypatch.setattr(compare, "train", seen)
    garbage = ["not-a-program", "--no-such-flag", "tune=oops", "report=/nowhere"]
    monkeypatch.setattr(sys, "argv", garbage)
    handlers = logging.getLogger().handlers[:]
    run_dir = tmp_path / "job"

    results = compare.run_one(JOB, run_dir)

    assert sys.argv is garbage and sys.argv == ["not-a-program", "--no-such-flag", "tune=oops", "report=/nowhere"]
    assert results == json.loads((run_dir / "results.json").read_text())
    assert (results["fusion"], results["seed"]) == ("late", 1) and fake.trained == ["job"]
    # Hydra's RUN-mode records: read back by the report, resume and sweep_ranking
    assert OmegaConf.load(run_dir / ".hydra" / "overrides.yaml") == JOB
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").compare.metric == "acc"
    assert OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra.run.dir == str(run_dir.resolve())
    assert compare.sweep_ranking(tmp_path) == ("acc", "max")
    assert (run_dir / "compare.log").is_file()
    # what the job saw: its own overrides as overrides.task (a DDP rank re-runs them), RUN mode, its directory
    (job,) = seen.seen
    assert job["task"] == JOB and job["mode"] == "RunMode.RUN" and job["run_dir"] == str(run_dir.resolve())
    assert (job["job"], job["fusion"], job["seed"]) == ("compare", "late", 1)
    assert job["output_dir"] == str(run_dir.resolve())
    assert job["command"] == ["mmgpt-compare", *JOB, "hydra.mode=RUN", f"hydra.run.dir={run_dir.resolve()}"]
    # and afterwards Hydra and logging are as they were
    assert not HydraConfig.initialized() and logging.getLogger().handlers == handlers

    fake.trained.clear()
    assert compare.run_one(JOB, run_dir) == results and fake.trained == []  # a finished job is not run again


def test_a_ddp_rank_process_runs_the_job_recorded_in_its_run_directory(
        fake: FakeRuns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning's launcher re-runs the parent's command line (here a whole tuned comparison) with the job's
    directory appended: the rank runs the job recorded there, without writing Hydra's records again."""
    from mmgpt.cli.hydra_job import ddp_rank_job

    run_dir = tmp_path / "tune" / "late" / "trial0"
    compare.run_one(JOB, run_dir)
    (run_dir / "results.json").unlink()  # rank 0 is still training
    records = {p.name: p.read_text() for p in (run_dir / ".hydra").iterdir()}
    seen = SeenByTraining(fake.train)
    monkeypatch.setattr(compare, "train", seen)
    launcher = ["tune=2", "model/fusion=early,late", "seed=0", f'hydra.run.dir="{run_dir}"',
                "hydra.job.name=train_ddp_process_1", "hydra.output_subdir=null"]
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert ddp_rank_job(launcher) is None  # rank 0 / no launcher: the command line means what it says
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert ddp_rank_job(launcher) == (run_dir, "train_ddp_process_1")

    assert compare.run(launcher) == run_dir
    (job,) = seen.seen
    assert job["task"] == JOB and (job["fusion"], job["seed"], job["job"]) == ("late", 1, "train_ddp_process_1")
    assert {p.name: p.read_text() for p in (run_dir / ".hydra").iterdir()} == records
    assert (run_dir / "train_ddp_process_1.log").is_file()
    assert not (tmp_path / "tune" / "early").exists()  # nothing of the comparison on the command line ran


def test_mmgpt_compare_from_python_returns_the_comparison_it_ran(
        fake: FakeRuns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``mmgpt.compare`` goes through compare.run's functions; the sweep directory comes back from the multirun
    (here Hydra's default one, under MMGPT_LOG_DIR), not from argv or a global."""
    import sys

    import mmgpt

    monkeypatch.setenv("MMGPT_LOG_DIR", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["garbage", "resume=/nowhere"])
    comparison = mmgpt.compare(["model/fusion=early,late", "seed=0", "compare.robustness=false", "compare.cost=false"])
    (sweep_dir,) = (tmp_path / "compare" / "multiruns").iterdir()
    assert comparison.sweep_dir == sweep_dir.resolve() and comparison.report == sweep_dir.resolve() / "report.md"
    assert [row["name"] for row in comparison.table] == ["late", "early"]
    assert sorted(r.run_dir.name for r in comparison.runs) == ["0_early_seed0", "1_late_seed0"]
    assert mmgpt.compare([f"report={sweep_dir}"]).table == comparison.table
    assert sys.argv == ["garbage", "resume=/nowhere"]


def test_the_comparison_code_neither_swaps_argv_nor_calls_a_private_app() -> None:
    """No module of the comparison assigns ``sys.argv`` (Lightning's launcher for a Hydra multirun aside: that is
    mmgpt/cli/common.py's relaunchable_job), and none defines a Hydra app to be driven through it."""
    import ast

    import mmgpt.cli

    root = Path(mmgpt.cli.__file__).parent
    for name in ("compare.py", "compare_tune.py", "compare_cost.py", "compare_match.py", "hydra_job.py"):
        tree = ast.parse((root / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in (t for tt in targets for t in ast.walk(tt)):
                    assert ast.unparse(target) != "sys.argv", f"{name}:{node.lineno} assigns sys.argv"
            if isinstance(node, ast.FunctionDef):
                decorators = [ast.unparse(d) for d in node.decorator_list]
                assert not any(d.startswith("hydra.main") for d in decorators), f"{name}: a Hydra app {node.name}"


def test_command_line_flags_are_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"^error: mmgpt-compare takes overrides \(key=value\), not flags: --cfg"):
        compare.main(["--cfg", "job"])
    with pytest.raises(SystemExit, match=r"^error: mmgpt-compare hydra.mode=RUN runs one job: give its directory"):
        compare.main(["hydra.mode=RUN", "seed=0"])
