"""``mmgpt-compare tune=N``: the same number of trials for every configuration, selection on validation, the seeds on
each best, resumption after an interruption; with stand-in training (fast), then a real tiny tuning (slow)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import mmgpt.cli.compare as compare
from mmgpt.cli.compare_tune import distribution, make_plan
from mmgpt.errors import UserError

LR = "model.module.optimizer.lr"


class FakeTraining:
    """Stand-in for :func:`train`: val accuracy rises with the learning rate (so the best trial is known), a
    wandering test accuracy, the files a run writes. ``interrupt_at``: raise KeyboardInterrupt on that call.
    ``metric="mae"``: a regression's error instead, 1 - accuracy (it falls as the learning rate rises)."""

    def __init__(self, interrupt_at: int | None = None, metric: str = "acc") -> None:
        self.calls: list[tuple[str, str, int, float]] = []  # (directory, fusion, seed, lr)
        self.interrupt_at = interrupt_at
        self.metric = metric

    def train(self, cfg: Any) -> dict[str, Any]:
        from mmgpt.cli.common import write_json
        from mmgpt.cli.train import fusion_name

        out = Path(cfg.paths.output_dir)
        fusion, seed, lr = fusion_name(cfg), int(cfg.seed), float(cfg.model.module.optimizer.lr)
        self.calls.append((str(out.relative_to(out.parents[2] if "tune" in out.parts else out.parent)), fusion,
                           seed, lr))
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            (out / "checkpoints").mkdir(parents=True)
            raise KeyboardInterrupt
        acc = min(1.0, 0.5 + 50 * lr) - (0.1 if fusion == "late" else 0.0)
        val, test = (acc, acc - 0.01 * seed) if self.metric == "acc" else (1.0 - acc, 1.0 - acc + 0.01 * seed)
        results = {"fusion": fusion, "seed": seed, "val": {f"val/{self.metric}": val},
                   "test": {f"test/{self.metric}": test},
                   "params": {"total": 100, "fusion": 10}, "train_samples_per_sec": 50.0, "peak_memory_mb": 300.0,
                   "peak_memory_kind": "cpu_max_rss", "wall_time_s": 1.0, "epochs": 1, "global_step": 1,
                   "best_ckpt": None}
        write_json(out / "results.json", results)
        return results


def _args(sweep_dir: Path) -> list[str]:
    return ["model/fusion=early,late", "seed=0,1", "compare.robustness=false", f"hydra.sweep.dir={sweep_dir}"]


def test_every_configuration_gets_the_same_trials_and_the_seeds_run_on_its_best(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = FakeTraining()
    monkeypatch.setattr(compare, "train", fake.train)
    sweep = tmp_path / "sweep"
    compare.main(["tune=3", *_args(sweep)])

    trials, finals = fake.calls[:6], fake.calls[6:]
    # round-robin: trial k of every configuration before trial k + 1; trials on the first seed only
    assert [(d, f, s) for d, f, s, _ in trials] == [
        (f"tune/{f}/trial{k}", f, 0) for k in range(3) for f in ("early", "late")]
    tuning = json.loads((sweep / "tuning.json").read_text())
    assert tuning["trials_per_configuration"] == 3 and tuning["metric"] == "val/acc"
    for fusion in ("early", "late"):
        conf = tuning["configurations"][fusion]
        lrs = [lr for _, f, _, lr in trials if f == fusion]
        assert conf["trials"] == 3 and len(set(lrs)) == 3
        assert conf["best_params"][LR] == pytest.approx(max(lrs))  # selected on validation: highest lr wins
        assert all(1e-4 <= lr <= 1e-2 for lr in lrs)  # within the declared search space
    # final runs: seed-major, every configuration on its own best learning rate
    assert [(d, f, s) for d, f, s, _ in finals] == [
        ("0_early_seed0", "early", 0), ("1_late_seed0", "late", 0), ("2_early_seed1", "early", 1),
        ("3_late_seed1", "late", 1)]
    for _, fusion, _, lr in finals:
        assert lr == pytest.approx(tuning["configurations"][fusion]["best_params"][LR])

    # the report: one group per fusion (the tuned values differ by design), the tuning in Methods, trials.csv
    with (sweep / "report.csv").open() as f:
        assert [row["name"] for row in csv.DictReader(f)] == ["early", "late"]
    md = (sweep / "report.md").read_text()
    assert "mmgpt-compare tune=3 model/fusion=early,late seed=0,1" in md
    assert "budget of **3 trials**" in md and f"`{LR}`" in md
    with (sweep / "trials.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 6

    # a finished tuned comparison resumes to nothing
    fake.calls.clear()
    compare.main([f"resume={sweep}"])
    assert fake.calls == []


def test_a_min_metric_is_tuned_by_minimizing_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """task=regression (primary_metric mae, mode min): each study minimizes val/mae, so the trial with the lowest
    error (the highest learning rate here) is chosen, and the report ranks the lower MAE first."""
    fake = FakeTraining(metric="mae")
    monkeypatch.setattr(compare, "train", fake.train)
    sweep = tmp_path / "sweep"
    compare.main(["tune=3", "task=regression", "compare.cost=false", *_args(sweep)])
    tuning = json.loads((sweep / "tuning.json").read_text())
    assert tuning["metric"] == "val/mae" and tuning["direction"] == "minimize"
    for fusion in ("early", "late"):
        trials = tuning["configurations"][fusion]["all_trials"]
        conf = tuning["configurations"][fusion]
        assert conf["best_value"] == min(t["value"] for t in trials)
        assert conf["best_params"][LR] == pytest.approx(max(t["params"][LR] for t in trials))
    with (sweep / "report.csv").open() as f:
        assert [row["name"] for row in csv.DictReader(f)] == ["early", "late"]  # late's error is 0.1 higher


def test_an_interrupted_tuning_resumes_with_the_same_values_and_budget(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    first = FakeTraining(interrupt_at=4)  # early trial 0, late 0, early 1, then late trial 1 is cut short
    monkeypatch.setattr(compare, "train", first.train)
    with pytest.raises(KeyboardInterrupt):
        compare.main(["tune=2", *_args(sweep)])
    cut = first.calls[-1]
    assert cut[0] == "tune/late/trial1"

    again = FakeTraining()
    monkeypatch.setattr(compare, "train", again.train)
    compare.main([f"resume={sweep}"])
    retried, finals = again.calls[0], again.calls[1:]
    assert retried[1:] == cut[1:]  # the same configuration, seed and learning rate, nothing else trained again
    assert retried[0] == "tune/late/trial2" and not (sweep / cut[0]).exists()
    assert len(finals) == 4
    tuning = json.loads((sweep / "tuning.json").read_text())["configurations"]
    assert tuning["early"]["trials"] == tuning["late"]["trials"] == 2
    assert [t["interrupted"] for t in tuning["late"]["all_trials"]] == [False, True, False]

    # the values an uninterrupted tuning draws are the same (trial k's sampler is seeded from k)
    straight = FakeTraining()
    monkeypatch.setattr(compare, "train", straight.train)
    compare.main(["tune=2", *_args(tmp_path / "straight")])
    assert [c[1:] for c in straight.calls[:4]] == [c[1:] for c in first.calls[:3]] + [cut[1:]]


def test_bad_search_space_and_budget_fail_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"compare\.tune\.space\.model\.dropout: .*low"):
        distribution("model.dropout", {"low": 0.5, "high": 0.1})
    with pytest.raises(UserError, match=r"compare\.tune\.space\.x: expected"):
        distribution("x", {"lo": 0, "high": 1})
    with pytest.raises(SystemExit, match=r"^error: tune=x: expected the number of trials"):
        compare.main(["tune=x"])
    with pytest.raises(UserError, match="cannot be negative"):
        make_plan([], -1)


def test_default_search_space_is_declared_and_valid() -> None:
    plan = make_plan([], 1)
    assert {LR, "model.module.optimizer.weight_decay", "model.dropout", "model.fusion.num_layers"} <= set(plan.space)
    assert plan.fusions == ["early", "late", "cross_attention", "unimodal_audio", "unimodal_image", "unimodal_text"]
    for key, spec in plan.space.items():
        distribution(key, spec)


@pytest.mark.slow
def test_tuned_comparison_with_ddp_trains_every_trial_on_two_processes(tmp_path: Path) -> None:
    """Real training, trainer=ddp_sim: 2 trials x 2 fusions, then 1 seed. Run as the installed command: Lightning's
    DDP launcher re-executes the command line, which inside pytest would be pytest itself."""
    sweep = tmp_path / "sweep"
    # the default experiment (compare_fusion: it declares the search space), shrunk by hand
    command = [str(Path(sys.executable).parent / "mmgpt-compare"), "tune=2", "trainer=ddp_sim",
               "model/fusion=early,late", "seed=0", "logger=csv", "compare.robustness=false", "model.dim=16",
               "model.num_heads=2", "data.num_train=64", "data.num_val=32", "data.num_test=32", "data.batch_size=16",
               "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0", "trainer.limit_train_batches=2",
               "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "callbacks.progress=null",
               f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    trial_results = sorted(sweep.glob("tune/*/trial*/results.json"))
    assert len(trial_results) == 4
    for path in [*trial_results, *sweep.glob("*_seed0/results.json")]:
        assert json.loads(path.read_text())["world_size"] == 2
    assert (sweep / "report.md").is_file() and (sweep / "tune" / "optuna.journal").is_file()


def test_tune_is_a_plain_function_that_ignores_argv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """compare.tune runs every trial and final run through compare.run_one: with sys.argv set to garbage it runs
    the same comparison, leaves sys.argv alone, and each job's directory records the job's own overrides."""
    from omegaconf import OmegaConf

    fake = FakeTraining()
    monkeypatch.setattr(compare, "train", fake.train)
    garbage = ["garbage", "tune=x", "--cfg", "resume=/nowhere"]
    monkeypatch.setattr(sys, "argv", garbage)
    sweep = compare.tune(["model/fusion=early,late", "seed=0", "compare.robustness=false", "compare.cost=false"], 1,
                         tmp_path / "sweep")
    assert sweep == (tmp_path / "sweep").resolve() and sys.argv is garbage and sys.argv[1] == "tune=x"
    assert [c[0] for c in fake.calls] == ["tune/early/trial0", "tune/late/trial0", "0_early_seed0", "1_late_seed0"]
    trial = OmegaConf.load(sweep / "tune" / "late" / "trial0" / ".hydra" / "overrides.yaml")
    lr = next(o for o in trial if o.startswith(f"{LR}="))
    assert "model/fusion=late" in trial and float(lr.split("=", 1)[1]) == pytest.approx(fake.calls[1][3])
    final = OmegaConf.load(sweep / "1_late_seed0" / ".hydra" / "overrides.yaml")
    assert f"{LR}={fake.calls[1][3]!r}" in final  # the final run on the best (only) trial's values
    assert (sweep / "report.md").is_file() and (sweep / "tuning.json").is_file()


def test_the_tuner_uses_optuna_through_its_public_api_only() -> None:
    """No private attribute (``study._storage``, ``trial._trial_id``...) anywhere in the tuner: the interrupted
    trials are a study user attribute (see test_an_interrupted_tuning_resumes_with_the_same_values_and_budget)."""
    import ast

    import mmgpt.cli.compare_tune as module

    tree = ast.parse(Path(module.__file__).read_text())
    private = [f"{ast.unparse(n)} (line {n.lineno})" for n in ast.walk(tree)
               if isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__")]
    assert private == []


def test_a_malformed_interrupted_record_in_the_journal_is_refused_in_one_line(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    monkeypatch.setattr(compare, "train", FakeTraining().train)
    sweep = tmp_path / "sweep"
    compare.main(["tune=1", "compare.cost=false", *_args(sweep)])
    journal = sweep / "tune" / "optuna.journal"
    storage = JournalStorage(JournalFileBackend(str(journal)))
    optuna.load_study(study_name="late", storage=storage).set_user_attr("interrupted", ["0; rm -rf /"])
    with pytest.raises(SystemExit, match=rf"^error: {journal}: study late: user attribute 'interrupted': expected"):
        compare.main([f"resume={sweep}"])
