"""``mmgpt-compare``: every fusion strategy x several seeds as one Hydra multirun, then one report.

::

    mmgpt-compare                                          # conf/compare.yaml: experiment=compare_fusion
    mmgpt-compare model/fusion=early,late seed=0,1 trainer.max_epochs=2 data=manifest data.root=DIR
    mmgpt-compare report=DIR [compare.metric=f1 compare.mode=max]  # rebuild DIR's report from its run directories
    mmgpt-compare resume=DIR [more overrides]              # finish an interrupted comparison in DIR
    mmgpt-compare tune=N [overrides]                       # N tuning trials per fusion first (compare_tune.py)

Each job of the sweep is one :func:`mmgpt.cli.train.train` run in ``<sweep dir>/<job>_<fusion>_seed<seed>``,
followed by the missing-modality evaluation of :func:`mmgpt.cli.evaluate.evaluate` on its best checkpoint.
A job whose directory already holds ``results.json`` is not trained again (that is how ``resume=DIR`` skips
finished runs). When the sweep ends, :class:`CompareReport` writes the report (:func:`mmgpt.report.write_report`)
into the sweep directory and prints where it is, with the ``wandb sync`` command for offline wandb runs.
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

import mmgpt.cli  # noqa: F401  (registers the config schemas)
from mmgpt import stored_config, sweep_folder
from mmgpt.cli.app import with_version
from mmgpt.cli.common import rank_zero, relaunchable_job, user_errors
from mmgpt.cli.evaluate import evaluate
from mmgpt.cli.train import train
from mmgpt.config import CONFIG_DIR
from mmgpt.errors import UserError
from mmgpt.report import ReportFiles, write_report
from mmgpt.report.runs import COST, EVAL_RESULTS, TUNE_DIR, find_run_dirs, finished_results
from mmgpt.stored_config import run_config
from mmgpt.training.checkpointing import config_differences
from mmgpt.training.tracking import wandb_sync_command

log = logging.getLogger("mmgpt.compare")

#: Environment variables Lightning's DDP launcher sets in the launching process.

#: The comparisons finished in this process, newest last (:func:`mmgpt.compare` returns the one it ran).
FINISHED: list[Path] = []

#: What an unfinished run directory keeps when its job starts again: Hydra's record of the job and the job log.
_KEEP_ON_RETRY = (".hydra",)


def _moved(node: Any, old: str, new: str) -> Any:
    """``node`` with the run directory ``old`` replaced by ``new`` in every string."""
    if isinstance(node, dict):
        return {k: _moved(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [_moved(v, old, new) for v in node]
    return node.replace(old, new) if isinstance(node, str) else node


def changed_keys(run_dir: Path, cfg: DictConfig) -> list[str]:
    """Keys whose value in the finished run's ``config.yaml`` differs from ``cfg`` (empty when none or no file).

    Where runs are stored (``paths.*``, and paths under the run directory) is not a difference: a sweep may have
    been moved or copied before it is resumed.
    """
    saved = run_config(run_dir)  # data: read unresolved, an interpolation in it is refused
    if saved is None:
        return []
    now = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(now, dict)
    old_dir, new_dir = str((saved.get("paths") or {}).get("output_dir")), str(now["paths"]["output_dir"])
    saved, now = ({k: v for k, v in c.items() if k != "paths"} for c in (_moved(saved, old_dir, new_dir), now))
    return sorted({d.split(":", 1)[0] for d in config_differences(saved, now)})


def clear_unfinished(run_dir: Path) -> list[Path]:
    """Remove what an interrupted attempt left in ``run_dir`` (checkpoints, logs of metrics), keep Hydra's files.

    Without this, a retried run would mix two attempts: stale checkpoints next to new ones, two TensorBoard
    event files. Returns the removed paths.
    """
    removed = []
    for path in sorted(run_dir.iterdir()) if run_dir.is_dir() else []:
        if path.name in _KEEP_ON_RETRY or path.suffix == ".log":
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(path)
    if removed:
        log.info("%s: removed %d leftovers of an unfinished attempt", run_dir, len(removed))
    return removed


def best_checkpoint(run_dir: Path, results: dict[str, Any]) -> Path | None:
    """The run's best checkpoint: inside ``run_dir`` when the sweep was moved or copied, else as recorded."""
    recorded = results.get("best_ckpt")
    if not recorded:
        return None
    candidates = [run_dir / "checkpoints" / Path(recorded).name, Path(recorded)]
    # a results.json is data: a recorded path outside the run's own directory is not opened
    return next((p for p in candidates if p.is_file() and p.resolve().is_relative_to(run_dir.resolve())), None)


def robustness_config(cfg: DictConfig, ckpt_path: str) -> DictConfig:
    """The ``mmgpt-eval`` config (conf/eval.yaml's keys) that evaluates ``ckpt_path`` on every modality subset.

    The evaluation runs in this one process (``devices=1``) even when training used several.
    """
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(trainer, dict)
    trainer.update(devices=1, num_nodes=1, strategy="auto")
    return OmegaConf.create(
        {
            "ckpt_path": ckpt_path,
            "split": cfg.compare.robustness_split,
            "subsets": True,
            "data": OmegaConf.to_container(cfg.data, resolve=True),
            "trainer": trainer,
            "paths": {"output_dir": str(cfg.paths.output_dir)},
            "plugins": list(cfg.get("plugins") or []),
            "feature_cache": OmegaConf.to_container(cfg.feature_cache, resolve=True),  # cached as in training
        }
    )


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """One point of the sweep: train unless already finished, then the missing-modality evaluation unless done."""
    if cfg.compare.match not in (None, "none", "null"):
        raise UserError(f"compare.match={cfg.compare.match} gives each fusion its own sizes, which a plain sweep "
                        "cannot: pass it on the mmgpt-compare command line (not in a config file)")
    run_dir = Path(cfg.paths.output_dir)
    results = finished_results(run_dir)
    if results is None:
        if rank_zero():  # other ranks (DDP) start while rank 0 trains: leave its files alone
            clear_unfinished(run_dir)
        with relaunchable_job(run_dir):
            results = train(cfg)
    else:
        changed = changed_keys(run_dir, cfg)
        if changed:
            raise ValueError(
                f"{run_dir} holds a finished run with another config ({', '.join(changed[:8])}); resume a sweep with "
                "the overrides it was started with, or start a new one"
            )
        log.info("%s: finished run (results.json), not trained again", run_dir)
    if cfg.compare.robustness and rank_zero() and not (run_dir / EVAL_RESULTS).is_file():
        ckpt = best_checkpoint(run_dir, results)
        if ckpt is not None:
            evaluate(robustness_config(cfg, str(ckpt)))
        else:
            log.warning("%s: no best checkpoint, so no missing-modality evaluation", run_dir)
    return results


def report(sweep_dir: Path, metric: str, mode: str) -> ReportFiles:
    """Write the report of ``sweep_dir``, ranked by ``metric`` in its direction ``mode`` (``max`` or ``min``), and
    print where it is, how to see the dashboards and sync wandb."""
    files = write_report(sweep_dir, metric=metric, mode=mode)
    print(f"\nreport: {files.markdown}\n        {files.summary_csv}\n        {files.runs_csv}")
    for path in files.plots:
        print(f"        {path}")
    print(f"TensorBoard (HParams tab compares the runs): tensorboard --logdir {sweep_dir}")
    sync = wandb_sync_command(sweep_dir)
    if sync:
        print(f"wandb runs are offline; upload them with:\n  {sync}")
    return files


def finish(sweep_dir: Path, cfg: DictConfig) -> ReportFiles:
    """When every run is done: measure the configurations' cost (``compare.cost``, unless already measured),
    write the report, and put its tables in the comparison's wandb group when it logs to wandb."""
    if cfg.compare.cost and not (sweep_dir / COST).is_file():
        from mmgpt.cli.compare_cost import measure_costs

        try:
            measure_costs(sweep_dir, rounds=int(cfg.compare.cost_rounds))
        except Exception as e:  # the runs are done: a failed measurement must not cost the report
            log.warning("cost measurement failed (%s: %s); report without cost.json", type(e).__name__, e)
    files = report(sweep_dir, metric=str(cfg.compare.metric), mode=str(cfg.compare.mode))
    if OmegaConf.select(cfg, "logger.wandb") is not None:
        from mmgpt.cli.compare_dashboards import publish_to_wandb

        publish_to_wandb(sweep_dir, cfg)
    FINISHED.append(Path(sweep_dir).resolve())
    return files


class CompareReport(Callback):
    """Hydra callback: when the multirun ends, measure the cost and write the report into the sweep directory."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        finish(Path(config.hydra.sweep.dir), config)


def previous_overrides(sweep_dir: Path) -> list[str]:
    """The overrides an existing sweep was launched with (``<sweep_dir>/multirun.yaml``), to launch it again."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; resume=DIR needs the directory of an mmgpt-compare sweep")
    saved = stored_config.load(path)  # data: nothing resolved; each override checked (mmgpt/sweep_folder.py)
    # the sweep's directory and mode are given anew (a moved sweep records its old directory)
    replaced = ("hydra.sweep.dir=", "hydra.mode=")
    hydra_overrides, task = (
        sweep_folder.check_overrides(stored_config.select(saved, key, path, default=[], shown_only=True), path, key,
                                     sweep_dir, skip=replaced)
        for key in ("hydra.overrides.hydra", "hydra.overrides.task"))
    return [*(o for o in hydra_overrides if not o.startswith(replaced)), *task]


def load_launch(sweep_dir: Path) -> tuple[int, list[str]] | None:
    """``(trials, overrides)`` of a tuned comparison (``<sweep_dir>/tune/launch.yaml``); None for any other."""
    path = sweep_dir / TUNE_DIR / "launch.yaml"
    if not path.is_file():
        return None
    saved = stored_config.load_checked(path, code=True)  # data: nothing resolved; each override checked below
    overrides = sweep_folder.check_overrides(saved.get("args", []), path, "args", sweep_dir)
    trials = saved.get("trials")
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 0:
        raise UserError(f"{path}: trials: expected a number of trials, got {trials!r}")
    return trials, overrides


def _take(args: list[str], key: str) -> tuple[str | None, list[str]]:
    """Remove ``key=value`` from ``args``; return the value (None when absent) and the other arguments."""
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"{key}=")]
    return (values[-1] if values else None), [a for a in args if not a.startswith(f"{key}=")]


def sweep_ranking(sweep_dir: Path) -> tuple[str, str]:
    """``(compare.metric, compare.mode)`` a comparison was run with: from its ``multirun.yaml`` (a sweep), else
    from its first run's ``.hydra/config.yaml`` (a tuned or matched comparison runs its jobs one by one); a
    directory from before the keys existed ranks by ``acc``, ``max`` (their defaults then)."""
    runs = find_run_dirs(sweep_dir) if sweep_dir.is_dir() else []
    paths = [sweep_dir / "multirun.yaml", *(d / ".hydra" / "config.yaml" for d in runs[:1])]
    path = next((p for p in paths if p.is_file()), None)
    saved = stored_config.load(path) if path is not None else {}  # Hydra's records: only these keys are read
    return tuple(str(stored_config.select(saved, f"compare.{key}", path, default=default, references=True) or default)
                 for key, default in (("metric", "acc"), ("mode", "max")))  # type: ignore[return-value]


def report_ranking(sweep_dir: Path, metric: str | None, mode: str | None) -> tuple[str, str]:
    """The metric and direction of ``report=DIR``: the comparison's own unless given; a metric other than the
    comparison's needs its direction given too (``compare.mode``), as nothing else says which way is better."""
    saved_metric, saved_mode = sweep_ranking(sweep_dir)
    if mode is None and metric not in (None, saved_metric):
        raise UserError(f"report={sweep_dir} compare.metric={metric}: the comparison ranked by {saved_metric} "
                        f"({saved_mode}); add compare.mode=max (higher is better) or compare.mode=min for {metric}")
    return metric or saved_metric, mode or saved_mode


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="compare")
def _compare_app(cfg: DictConfig) -> float | None:
    results = run_job(cfg)
    return (results.get("val") or {}).get(f"val/{cfg.compare.metric}")


def _tuned(args: list[str], trials: str | None, resume_dir: str | None) -> None:
    """``tune=N`` or ``compare.match=...``: a planned comparison (:mod:`mmgpt.cli.compare_tune`); with
    ``resume=DIR``, continue one."""
    from mmgpt.cli.compare_tune import tuned_comparison

    if resume_dir is None:
        if trials is None or not trials.isdigit():
            raise UserError(f"tune={trials}: expected the number of trials per configuration, e.g. tune=4")
        tuned_comparison(args, int(trials), app=_compare_app, finish=finish)
        return
    launch = load_launch(Path(resume_dir))
    assert launch is not None
    sweep_folder.check_sweep_folder(Path(resume_dir).resolve())  # the runs' and trials' files are data too
    if trials is not None or args:
        raise UserError(f"resume={resume_dir} continues a tuned comparison as it was started; it takes no other "
                        f"arguments (got: {' '.join(args) or 'tune=' + str(trials)})")
    tuned_comparison(launch[1], launch[0], Path(resume_dir).resolve(), app=_compare_app, finish=finish)


@with_version("mmgpt-compare")
@user_errors
def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: ``report=DIR`` and ``resume=DIR`` are handled here, everything else goes to Hydra."""
    run(list(sys.argv[1:] if argv is None else argv))


def run(args: list[str]) -> None:
    """``mmgpt-compare <args>`` (:func:`main` without the one-line error report; :func:`mmgpt.compare` calls it)."""
    report_dir, args = _take(args, "report")
    if report_dir is not None:
        metric, args = _take(args, "compare.metric")
        mode, args = _take(args, "compare.mode")
        if args:
            raise SystemExit(f"mmgpt-compare report=DIR accepts only compare.metric=... and compare.mode=..., not: "
                             f"{' '.join(args)}")
        sweep_dir = Path(report_dir).resolve()
        report(sweep_dir, *report_ranking(sweep_dir, metric, mode))
        return
    resume_dir, args = _take(args, "resume")
    trials, args = _take(args, "tune")
    matched = any(a.startswith("compare.match=") and a.split("=", 1)[1] not in ("null", "none", "") for a in args)
    if trials is not None or matched or (resume_dir is not None and load_launch(Path(resume_dir)) is not None):
        _tuned(args, "0" if trials is None and matched else trials, resume_dir)
        return
    if resume_dir is not None:
        sweep_dir = Path(resume_dir).resolve()
        stored = previous_overrides(sweep_dir)
        sweep_folder.check_sweep_folder(sweep_dir)  # the runs' files are data too
        args = [*stored, *args, f"hydra.sweep.dir={sweep_dir}"]
        log.info("resuming %s with: %s", sweep_dir, " ".join(args))
    saved, sys.argv = sys.argv, [sys.argv[0], *args]
    try:
        _compare_app()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
