"""``mmgpt-compare``: every fusion strategy x several seeds as one Hydra multirun, then one report.

::

    mmgpt-compare                                          # conf/compare.yaml: experiment=compare_fusion
    mmgpt-compare model/fusion=early,late seed=0,1 trainer.max_epochs=2 data=manifest data.root=DIR
    mmgpt-compare report=DIR [compare.metric=f1 compare.mode=max]  # rebuild DIR's report from its run directories
    mmgpt-compare resume=DIR [more overrides]              # finish an interrupted comparison in DIR
    mmgpt-compare tune=N [overrides]                       # N tuning trials per fusion first (compare_tune.py)
    mmgpt-compare OVERRIDES hydra.mode=RUN hydra.run.dir=DIR  # one job of a comparison, in DIR

Each job of the sweep is one :func:`mmgpt.cli.train.train` run in ``<sweep dir>/<job>_<fusion>_seed<seed>``,
followed by the missing-modality evaluation of :func:`mmgpt.cli.evaluate.evaluate` on its best checkpoint.
A job whose directory already holds ``results.json`` is not trained again (that is how ``resume=DIR`` skips
finished runs). When the sweep ends, :class:`CompareReport` writes the report (:func:`mmgpt.report.write_report`)
into the sweep directory and prints where it is, with the ``wandb sync`` command for offline wandb runs.

The same steps are plain functions, for a notebook as for the command (:func:`run` reads the command line):

- :func:`run_one` (overrides, run directory): one job, in this process, without ``sys.argv``;
- :func:`sweep` (overrides): the Hydra multirun, through the configured launcher, then cost and report;
- :func:`tune` (overrides, trials): the tuned or compute-matched comparison (:mod:`mmgpt.cli.compare_tune`);
- :func:`resume` (directory): finish an interrupted comparison of either kind;
- :func:`mmgpt.cli.compare_cost.measure_costs` (directory): ``cost.json``;
- :func:`report` (directory): the report, from the run directories alone.
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

import mmgpt.cli  # noqa: F401  (registers the config schemas)
from mmgpt import stored_config, sweep_folder
from mmgpt.cli.app import with_version
from mmgpt.cli.common import rank_zero, relaunchable_job, take_override, user_errors
from mmgpt.cli.evaluate import evaluate
from mmgpt.cli.hydra_job import ddp_rank_job, override_value, recorded_overrides, run_hydra_job
from mmgpt.cli.train import train
from mmgpt.config import CONFIG_DIR
from mmgpt.errors import UserError
from mmgpt.report import ReportFiles, write_report
from mmgpt.report.runs import COST, EVAL_RESULTS, TUNE_DIR, find_run_dirs, finished_results
from mmgpt.stored_config import run_config
from mmgpt.training.checkpointing import config_differences
from mmgpt.training.tracking import wandb_sync_command

log = logging.getLogger("mmgpt.compare")

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


def report(sweep_dir: str | Path, metric: str | None = None, mode: str | None = None) -> ReportFiles:
    """Write the report of the comparison in ``sweep_dir`` from its run directories alone (``mmgpt-compare
    report=DIR``), and print where it is, how to see the dashboards and sync wandb.

    Args:
        sweep_dir: the comparison's directory.
        metric: rank by ``val/<metric>``; the comparison's own (``compare.metric``) by default.
        mode: its direction, ``max`` or ``min``; needed with a metric other than the comparison's.

    Raises:
        mmgpt.errors.UserError: a metric without its direction; a malformed file of the folder.
        FileNotFoundError: no finished run in ``sweep_dir``.
    """
    sweep_dir = Path(sweep_dir).resolve()
    return _report(sweep_dir, *report_ranking(sweep_dir, metric, mode))


def _report(sweep_dir: Path, metric: str, mode: str) -> ReportFiles:
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
    files = _report(sweep_dir, str(cfg.compare.metric), str(cfg.compare.mode))
    if OmegaConf.select(cfg, "logger.wandb") is not None:
        from mmgpt.cli.compare_dashboards import publish_to_wandb

        publish_to_wandb(sweep_dir, cfg)
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


def run_one(overrides: Sequence[str], run_dir: str | Path) -> dict[str, Any]:
    """One job of a comparison, in this process: ``mmgpt-compare <overrides> hydra.mode=RUN hydra.run.dir=<run_dir>``
    without a command line.

    ``conf/compare.yaml`` composed with ``overrides`` (``model/fusion=late``, ``seed=1``...): train unless
    ``run_dir`` already holds a finished run, then the missing-modality evaluation unless done or turned off
    (:func:`run_job`). ``run_dir`` gets what a Hydra job's directory gets (``.hydra/config.yaml``, ``hydra.yaml``,
    ``overrides.yaml``, ``compare.log``) and the run's files; ``sys.argv`` is neither read nor changed. With a DDP
    trainer, Lightning starts the other ranks by re-running this process's command line: :func:`run` (the
    command's entry point) recognises them and runs the job recorded in ``run_dir`` (:mod:`mmgpt.cli.hydra_job`);
    from a notebook, DDP is for the command.

    Returns:
        the run's results (``results.json``).
    """
    overrides = [str(o) for o in overrides]
    run_dir = Path(run_dir).resolve()
    return run_hydra_job("compare", overrides, run_dir, run_job, job_name="compare",
                         command=["mmgpt-compare", *overrides, "hydra.mode=RUN", f"hydra.run.dir={run_dir}"])


def sweep_job(cfg: DictConfig) -> float | None:
    """The task of the multirun's jobs (:func:`sweep`): :func:`run_job`, returning the validation metric."""
    results = run_job(cfg)
    return (results.get("val") or {}).get(f"val/{cfg.compare.metric}")


def sweep(overrides: Sequence[str] = ()) -> Path:
    """Every configuration x seed of ``conf/compare.yaml`` with ``overrides`` as one Hydra multirun (through the
    configured launcher: local, SLURM...), then the cost and the report (:class:`CompareReport`); returns the
    comparison's directory. Nothing reads or changes ``sys.argv``."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from mmgpt.cli.common import logging_restored

    with logging_restored(), initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3",
                                                   job_name="compare"):
        hydra = GlobalHydra.instance().hydra
        assert hydra is not None
        batches = hydra.multirun(config_name="compare", task_function=sweep_job, overrides=[str(o) for o in overrides])
    jobs = [job for batch in batches or () for job in batch]
    if not jobs:
        raise UserError("mmgpt-compare: the sweep has no jobs")
    job = jobs[0].cfg.copy()  # Hydra's node alone cannot resolve the sweep directory (it reads paths.log_dir)
    with open_dict(job):
        job.hydra = jobs[0].hydra_cfg.hydra
    return Path(str(job.hydra.sweep.dir)).resolve()


def tune(overrides: Sequence[str], trials: int, sweep_dir: str | Path | None = None) -> Path:
    """``mmgpt-compare tune=<trials> <overrides>``: the same number of tuning trials for every configuration, then
    the seeds on each one's best values, then cost and report (:mod:`mmgpt.cli.compare_tune`); with
    ``compare.match=params|flops`` in ``overrides``, the sizes are matched first (``trials=0``: matching only).
    Every job runs through :func:`run_one`. Returns the comparison's directory (``sweep_dir``, else
    ``hydra.sweep.dir``)."""
    from mmgpt.cli.compare_tune import tuned_comparison

    if isinstance(trials, bool) or not isinstance(trials, int):
        raise UserError(f"tune={trials}: expected the number of trials per configuration, e.g. tune=4")
    return tuned_comparison([str(o) for o in overrides], trials, Path(sweep_dir).resolve() if sweep_dir else None,
                            run=run_one, finish=finish)


def resume(sweep_dir: str | Path, overrides: Sequence[str] = ()) -> Path:
    """Finish the interrupted comparison in ``sweep_dir`` (``mmgpt-compare resume=DIR``): finished runs are not
    trained again. A sweep is launched again with the overrides it was started with (``multirun.yaml``), plus
    ``overrides``; a tuned comparison (``tune/launch.yaml``) continues as it was started and takes none."""
    from mmgpt.cli.compare_tune import tuned_comparison

    sweep_dir = Path(sweep_dir).resolve()
    launch = load_launch(sweep_dir)
    if launch is not None:
        sweep_folder.check_sweep_folder(sweep_dir)  # the runs' and trials' files are data too
        if overrides:
            raise UserError(f"resume={sweep_dir} continues a tuned comparison as it was started; it takes no other "
                            f"arguments (got: {' '.join(overrides)})")
        return tuned_comparison(launch[1], launch[0], sweep_dir, run=run_one, finish=finish)
    stored = previous_overrides(sweep_dir)
    sweep_folder.check_sweep_folder(sweep_dir)  # the runs' files are data too
    args = [*stored, *overrides, f"hydra.sweep.dir={sweep_dir}"]
    log.info("resuming %s with: %s", sweep_dir, " ".join(args))
    return sweep(args)


def _matched(args: Sequence[str]) -> bool:
    return any(a.startswith("compare.match=") and a.split("=", 1)[1] not in ("null", "none", "") for a in args)


def run(args: Sequence[str]) -> Path:
    """``mmgpt-compare <args>`` without the one-line error report (:func:`main`; :func:`mmgpt.compare` calls it):
    the command's own arguments (``report=``, ``resume=``, ``tune=``, ``hydra.mode=RUN``) choose the function;
    returns the comparison's directory (a job's directory for a single job)."""
    args = [str(a) for a in args if a not in ("-m", "--multirun")]  # a comparison is a multirun anyway
    flags = [a for a in args if a.startswith("-")]
    if flags:
        raise UserError(f"mmgpt-compare takes overrides (key=value), not flags: {' '.join(flags)}")
    rank = ddp_rank_job(args)
    if rank is not None:  # a DDP rank of a job run in the parent process: that job, whatever the command line says
        run_dir, job_name = rank
        run_hydra_job("compare", recorded_overrides(run_dir), run_dir, run_job, job_name=job_name, records=False,
                      command=["mmgpt-compare", *args])
        return run_dir
    report_dir, args = take_override(args, "report")
    if report_dir is not None:
        metric, args = take_override(args, "compare.metric")
        mode, args = take_override(args, "compare.mode")
        if args:
            raise UserError(f"mmgpt-compare report=DIR accepts only compare.metric=... and compare.mode=..., not: "
                            f"{' '.join(args)}")
        report(report_dir, metric, mode)
        return Path(report_dir).resolve()
    mode, args = take_override(args, "hydra.mode")
    if mode == "RUN":
        run_dir, args = take_override(args, "hydra.run.dir")
        if run_dir is None:
            raise UserError("mmgpt-compare hydra.mode=RUN runs one job: give its directory, hydra.run.dir=DIR")
        run_one(args, override_value("hydra.run.dir", run_dir))
        return Path(override_value("hydra.run.dir", run_dir)).resolve()
    if mode is not None:
        args = [*args, f"hydra.mode={mode}"]
    resume_dir, args = take_override(args, "resume")
    trials, args = take_override(args, "tune")
    if resume_dir is not None:
        if trials is not None:
            raise UserError(f"resume={resume_dir} continues a comparison as it was started; tune={trials} cannot "
                            "be given again")
        return resume(resume_dir, args)
    if trials is not None or _matched(args):
        if trials is not None and not trials.isdigit():
            raise UserError(f"tune={trials}: expected the number of trials per configuration, e.g. tune=4")
        return tune(args, int(trials or 0))
    return sweep(args)


@with_version("mmgpt-compare")
@user_errors
def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: ``mmgpt-compare <args>`` (:func:`run`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return
    if not logging.getLogger().handlers:  # what the steps between jobs log (tuning trials, cost) goes to the console
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] %(message)s")
    run(args)


if __name__ == "__main__":
    main()
