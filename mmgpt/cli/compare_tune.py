"""``mmgpt-compare tune=N``: every configuration gets the same N hyperparameter trials, then the seeds run on its best.

::

    mmgpt-compare tune=4                                   # search space: compare.tune.space (compare_fusion.yaml)
    mmgpt-compare tune=2 model/fusion=early,late seed=0,1 trainer=ddp_sim
    mmgpt-compare resume=DIR                               # continue an interrupted tuned comparison

The comparison directory holds::

    tune/launch.yaml           the command line (``resume=DIR`` reads it)
    tune/optuna.journal        Optuna's journal storage: one study per configuration (fusion or baseline)
    tune/<fusion>/trial<k>/    one training run per trial, on the first seed, no missing-modality evaluation
    tuning.json                per configuration: search space, trials, best values (the report's Methods)
    <j>_<fusion>_seed<s>/      the final runs, each configuration on its best values, seed-major as in a sweep
    report.md, report.csv, ... written from the final runs (trials are listed in report.md's tuning section)

Trial k of every configuration runs before trial k + 1 of any, so an interrupted tuning has spent the same
budget on each. Each configuration is selected on its trials' validation ``compare.metric`` (the best
checkpoint's, as in ``results.json``) in its direction ``compare.mode`` (the task's ``primary_metric.mode``: Optuna
maximizes for ``max``, minimizes for ``min``); the test split is never looked at while tuning.

Why Optuna directly rather than Hydra's Optuna sweeper: the sweeper runs one study over one search space for the
whole multirun, with the fusion as one more parameter, so it can guarantee neither N trials per fusion nor hand
each fusion's best values to a seed sweep, and its study lives in memory unless a storage is set up by hand. Here
each configuration has its own study in a journal file next to the runs: an interrupted comparison resumes where
it stopped; a trial cut short is run again with the same values; a finished trial is never run twice.

Every trial and final run is one job run by the ``run`` function the comparison is given
(:func:`mmgpt.cli.compare.run_one`: a Hydra job in RUN mode, in this process, from a list of overrides and a run
directory; nothing reads or changes ``sys.argv``). DDP: the job's overrides, the sampled values included, are
recorded in its ``.hydra/overrides.yaml``; the ranks Lightning's launcher starts run that job
(:mod:`mmgpt.cli.hydra_job`), so every rank of a trial trains with the same values.

Optuna is used through its public API only: a trial cut short is told ``FAIL`` and its number recorded in the
study's user attribute ``interrupted`` (not counted against the budget), and its values are queued again.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mmgpt import stored_config, sweep_folder
from mmgpt.cli.common import take_override, write_json
from mmgpt.cli.compare_dashboards import wandb_group
from mmgpt.config import CONFIG_DIR
from mmgpt.errors import UserError
from mmgpt.report.runs import MATCHING, TUNE_DIR, TUNING, finished_results
from mmgpt.report.summary import higher_is_better

log = logging.getLogger("mmgpt.compare")

LAUNCH = "launch.yaml"
#: Keys that set a network's size: not tuned when the sizes are matched (compare.match).
_SIZE_KEYS = ("num_layers", "dim", "mlp_ratio")
JOURNAL = "optuna.journal"
_SPEC_KEYS = {"low", "high", "log", "int", "choices"}
#: The study's user attribute listing the numbers of its interrupted trials (failed, not counted against the budget).
INTERRUPTED = "interrupted"

#: Runs one job: ``run(overrides, run_dir)`` -> its results (:func:`mmgpt.cli.compare.run_one`).
RunJob = Callable[[Sequence[str], Path], Mapping[str, Any]]


@dataclass(frozen=True)
class Plan:
    """What a tuned comparison runs.

    Attributes:
        sweep_dir: the comparison directory.
        args: the overrides every run gets (the fusion, seed and ``tune=`` taken out).
        fusions: the configurations (``model/fusion`` options), baselines included.
        seeds: the seeds of the final runs; trials use the first.
        trials: the budget N: trials per configuration.
        metric: the selection metric (``val/<metric>``).
        mode: its direction, ``max`` or ``min`` (``compare.mode``).
        space: the declared search space (``compare.tune.space``).
        sampler_seed: seeds trial k's sampler (with k), so a resumed tuning draws what it would have drawn.
        match: ``params`` / ``flops`` when the fusions are scaled to one budget first (:mod:`compare_match`).
        match_reference, match_tolerance: the fusion that sets the budget, and how close the others must be.
        extra: overrides every job gets after its own (the wandb group of the comparison).
        run: runs one job from its overrides and run directory (:func:`mmgpt.cli.compare.run_one`, passed in by
            :mod:`mmgpt.cli.compare`, which imports this module: the imports run one way).
    """

    sweep_dir: Path
    args: list[str]
    fusions: list[str]
    seeds: list[int]
    trials: int
    metric: str
    mode: str
    space: dict[str, dict[str, Any]]
    sampler_seed: int
    match: str | None = None
    match_reference: str = ""
    match_tolerance: float = 0.05
    extra: tuple[str, ...] = ()
    run: RunJob | None = None

    @property
    def direction(self) -> str:
        """Optuna's study direction: ``maximize`` for a ``max`` metric, ``minimize`` for a ``min`` one."""
        return "maximize" if higher_is_better(self.mode) else "minimize"


def sweep_values(key: str, value: str) -> list[str]:
    """The values of a Hydra sweep override (``early,late``, ``range(0,3)``) as strings."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    override = OverridesParser.create().parse_override(f"{key}={value}")
    if override.is_sweep_override():
        return [str(v) for v in override.sweep_string_iterator()]
    return [override.get_value_element_as_str()]


def compose_compare(args: Sequence[str]) -> DictConfig:
    """``conf/compare.yaml`` with ``args``, Hydra's own config included (as ``mmgpt-compare`` would see it)."""
    from hydra import compose, initialize_config_dir

    from mmgpt.config import apply_backbones

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name="compare"):
        cfg = compose("compare", overrides=list(args), return_hydra_config=True)
    apply_backbones(cfg)  # the short backbone syntax: matching measures the backbones the runs will train
    return cfg


def make_plan(args: Sequence[str], trials: int, sweep_dir: Path | None = None) -> Plan:
    """The :class:`Plan` of ``mmgpt-compare tune=<trials> <args>`` (``sweep_dir``: resume this directory)."""
    if trials < 0:
        raise UserError(f"tune={trials}: the number of trials per configuration cannot be negative")
    fusions_arg, rest = take_override(args, "model/fusion")
    seeds_arg, rest = take_override(rest, "seed")
    rest = [a for a in rest if not a.startswith(("hydra.mode=", "hydra.sweep.dir=", "hydra.run.dir="))]
    cfg = compose_compare(rest)
    rest = [a for a in rest if not a.startswith(("compare.match=", "compare.match_"))]  # the runs get the sizes
    fusions = sweep_values("model/fusion", fusions_arg or str(cfg.hydra.sweeper.params["model/fusion"]))
    seeds = [int(s) for s in sweep_values("seed", seeds_arg or str(cfg.compare.seeds))]
    space = OmegaConf.to_container(cfg.compare.tune.space, resolve=True)
    assert isinstance(space, dict)
    for key, spec in space.items():
        distribution(str(key), spec)  # a bad range fails here, before any training
    if trials and not space:
        raise UserError("compare.tune.space is empty: declare the search space (conf/experiment/compare_fusion.yaml)")
    match = None if cfg.compare.match in (None, "none", "null") else str(cfg.compare.match)
    sweep = (sweep_dir or Path(str(cfg.hydra.sweep.dir))).resolve()
    return Plan(
        sweep_dir=sweep,
        args=rest,
        fusions=fusions,
        seeds=seeds,
        trials=trials,
        metric=str(cfg.compare.metric),
        mode=str(cfg.compare.mode),
        space={str(k): dict(v) for k, v in space.items()},
        sampler_seed=int(cfg.compare.tune.sampler_seed),
        match=match,
        match_reference=str(cfg.compare.match_reference or fusions[0]),
        match_tolerance=float(cfg.compare.match_tolerance),
        # the wandb group a sweep's runs get (tracking.sweep_group), which RUN-mode jobs must be given
        extra=(f"logger.wandb.group={wandb_group(sweep)}",) if OmegaConf.select(cfg, "logger.wandb") else (),
    )


def distribution(key: str, spec: Any) -> Any:
    """The Optuna distribution of one search-space entry; a bad entry raises a :class:`UserError` naming it."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    where = f"compare.tune.space.{key}"
    if not isinstance(spec, Mapping) or not spec or set(spec) - _SPEC_KEYS:
        raise UserError(f"{where}: expected {{low, high[, log][, int]}} or {{choices: [...]}}, got {spec!r}")
    try:
        if "choices" in spec:
            return CategoricalDistribution(list(spec["choices"]))
        low, high, log_scale = spec["low"], spec["high"], bool(spec.get("log", False))
        if spec.get("int", False):
            return IntDistribution(int(low), int(high), log=log_scale)
        return FloatDistribution(float(low), float(high), log=log_scale)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{where}: {e}") from None


def space_of(plan: Plan, fusion: str) -> tuple[dict[str, Any], list[str]]:
    """The distributions of the keys ``fusion``'s config has, and the declared keys it has not."""
    cfg = compose_compare([*plan.args, f"model/fusion={fusion}"])
    present = {k: distribution(k, s) for k, s in plan.space.items() if OmegaConf.select(cfg, k) is not None}
    return present, sorted(set(plan.space) - set(present))


def _override(key: str, value: Any) -> str:
    return f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"


def run_point(plan: Plan, run_dir: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """One training run (plus its missing-modality evaluation unless turned off) in ``run_dir``, through the plan's
    ``run`` function; returns its ``results.json``. A finished run is not trained again (:func:`compare.run_job`)."""
    assert plan.run is not None, "a plan runs its jobs through the run function it was given"
    plan.run([*plan.args, *overrides, *plan.extra], run_dir)
    results = finished_results(run_dir)
    if results is None:
        raise RuntimeError(f"{run_dir}: the run ended without writing results.json")
    return results


def _value(results: Mapping[str, Any], metric: str) -> float | None:
    value = (results.get("val") or {}).get(f"val/{metric}")
    return None if value is None or not math.isfinite(float(value)) else float(value)


def _storage(plan: Plan) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = plan.sweep_dir / TUNE_DIR / JOURNAL
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def _trial_dir(plan: Plan, fusion: str, number: int) -> Path:
    return plan.sweep_dir / TUNE_DIR / fusion / f"trial{number}"


def interrupted(study: Any) -> set[int]:
    """The numbers of the study's trials that an interruption cut short: its user attribute ``interrupted`` (and,
    in a journal written before that attribute, the trials carrying ``interrupted`` themselves).

    Raises:
        ValueError: the attribute is not a list of trial numbers (the journal is data).
    """
    recorded = study.user_attrs.get(INTERRUPTED, [])
    if not isinstance(recorded, list) or not all(isinstance(n, int) and not isinstance(n, bool) for n in recorded):
        raise ValueError(f"user attribute {INTERRUPTED!r}: expected a list of trial numbers, got {recorded!r}")
    return set(recorded) | {t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get(INTERRUPTED)}


def settle_interrupted(plan: Plan, fusion: str, study: Any) -> None:
    """Trials an interruption left running: told their value when their run finished, else failed (recorded as
    ``interrupted``, not counted against the budget), their directory removed and their values queued again."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        run_dir = _trial_dir(plan, fusion, trial.number)
        results = finished_results(run_dir)
        value = None if results is None else _value(results, plan.metric)
        if value is not None:
            study.tell(trial.number, value)
            continue
        # recorded before it is failed: stopped in between, the next resume records it again (a set)
        study.set_user_attr(INTERRUPTED, sorted(interrupted(study) | {trial.number}))
        study.tell(trial.number, state=TrialState.FAIL)
        shutil.rmtree(run_dir, ignore_errors=True)
        study.enqueue_trial(trial.params)
        log.info("%s trial %d was interrupted: it runs again with the same values", fusion, trial.number)


def spent(study: Any) -> int:
    """Trials that count against the budget: finished ones and failures of the run itself (not interruptions)."""
    from optuna.trial import TrialState

    cut = interrupted(study)
    return sum(t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and t.number not in cut)
               for t in study.get_trials(deepcopy=False))


def run_trial(plan: Plan, fusion: str, study: Any, space: dict[str, Any], fixed: Sequence[str] = ()) -> None:
    """Ask the study for values, train one run with them (and the ``fixed`` overrides: matched sizes) on the
    first seed, tell it the validation metric."""
    import optuna
    from optuna.trial import TrialState

    # trial k's sampler is seeded from k alone: a resumed tuning draws the values an uninterrupted one would have
    study.sampler = optuna.samplers.TPESampler(seed=plan.sampler_seed * 1_000_003 + len(study.trials))
    trial = study.ask(fixed_distributions=space)
    overrides = [_override(k, v) for k, v in sorted(trial.params.items())]
    log.info("%s trial %d/%d: %s", fusion, spent(study) + 1, plan.trials, " ".join(overrides))
    results = run_point(plan, _trial_dir(plan, fusion, trial.number),
                        [f"model/fusion={fusion}", f"seed={plan.seeds[0]}", *fixed, *overrides,
                         "compare.robustness=false"])
    value = _value(results, plan.metric)
    if value is None:
        log.warning("%s trial %d: no finite val/%s; counted as failed", fusion, trial.number, plan.metric)
        study.tell(trial, state=TrialState.FAIL)
    else:
        study.tell(trial, value)


def _trial_record(plan: Plan, fusion: str, trial: Any, cut: set[int]) -> dict[str, Any]:
    return {"number": trial.number, "state": trial.state.name, "value": trial.value, "params": trial.params,
            "interrupted": trial.number in cut,
            "run_dir": str(_trial_dir(plan, fusion, trial.number).relative_to(plan.sweep_dir))}


def tune(plan: Plan, fixed: Mapping[str, Sequence[str]]) -> dict[str, dict[str, Any]]:
    """Run every configuration's trials (round-robin; ``fixed``: each one's matched sizes) and return its best
    values, as written to ``tuning.json``."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    journal = plan.sweep_dir / TUNE_DIR / JOURNAL
    try:
        storage = _storage(plan)
        studies = {f: optuna.create_study(study_name=f, storage=storage, direction=plan.direction,
                                          load_if_exists=True) for f in plan.fusions}
    except Exception as e:  # noqa: BLE001 - a journal Optuna cannot replay, whatever the reason
        raise sweep_folder.SweepFolderError(f"{journal}: not a readable Optuna journal ({type(e).__name__}: "
                                            f"{str(e).splitlines()[0] if str(e) else ''})") from None
    for fusion, study in studies.items():  # the journal is data: its trials' values become overrides
        for trial in study.get_trials(deepcopy=False):
            sweep_folder.check_trial_params(trial.params, plan.space, journal,
                                            f"study {fusion} trial {trial.number} params", plan.sweep_dir)
        try:
            interrupted(study)
        except ValueError as e:
            raise sweep_folder.SweepFolderError(f"{journal}: study {fusion}: {e}") from None
    spaces = {f: space_of(plan, f) for f in plan.fusions}
    for fusion, study in studies.items():
        settle_interrupted(plan, fusion, study)
    for k in range(plan.trials):
        for fusion, study in studies.items():
            if spent(study) <= k:
                run_trial(plan, fusion, study, spaces[fusion][0], fixed.get(fusion, ()))
    out: dict[str, dict[str, Any]] = {}
    for fusion, study in studies.items():
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not done:
            raise RuntimeError(f"{fusion}: none of its {plan.trials} trials finished with a val/{plan.metric}")
        best, cut = study.best_trial, interrupted(study)
        out[fusion] = {
            "trials": spent(study), "completed": len(done), "best_value": best.value, "best_trial": best.number,
            "best_params": best.params, "not_tuned": spaces[fusion][1],
            "all_trials": [_trial_record(plan, fusion, t, cut) for t in study.get_trials(deepcopy=False)],
        }
    return out


def write_tuning(plan: Plan, tuned: dict[str, dict[str, Any]]) -> Path:
    """``tuning.json``: the budget, the search space, the sampler and every configuration's trials and best."""
    path = plan.sweep_dir / TUNING
    write_json(path, {
        "trials_per_configuration": plan.trials, "metric": f"val/{plan.metric}",
        "direction": plan.direction,
        "seed": plan.seeds[0], "space": plan.space,
        "sampler": f"optuna TPESampler (default settings: the first 10 trials are random), trial k seeded from "
                   f"compare.tune.sampler_seed={plan.sampler_seed} and k",
        "configurations": tuned,
    })
    return path


def save_launch(sweep_dir: Path, args: Sequence[str], trials: int) -> None:
    """Record the command line in ``tune/launch.yaml``, or check that a resumed one matches it."""
    path = sweep_dir / TUNE_DIR / LAUNCH
    launch = {"trials": trials, "args": list(args)}
    if path.is_file():
        saved = stored_config.load_checked(path)  # data: nothing resolved
        if saved != launch:
            raise UserError(f"{sweep_dir} was started as `mmgpt-compare tune={saved['trials']} "  # type: ignore[index]
                            f"{' '.join(saved['args'])}`; resume it with resume={sweep_dir}")  # type: ignore[index]
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(launch), path)


def matched_sizes(plan: Plan) -> dict[str, list[str]]:
    """``compare.match``: every fusion's size overrides (``matching.json`` records them; computed once, so a
    resumed comparison keeps the sizes its finished runs had)."""
    from mmgpt.cli.compare_match import match_sizes, matching_record

    path = plan.sweep_dir / MATCHING
    record = sweep_folder.read_matching(path)  # data: only sizes (model.dim, model.mlp_ratio) become overrides
    if record is None:
        configs = {f: compose_compare([*plan.args, f"model/fusion={f}"]) for f in plan.fusions}
        matched = match_sizes(configs, plan.match or "", plan.match_reference, plan.match_tolerance)
        record = matching_record(plan.match or "", plan.match_reference, plan.match_tolerance, matched, plan.fusions)
        write_json(path, record)
    return {f: [_override(k, v) for k, v in sorted(c["overrides"].items())]
            for f, c in record["configurations"].items()}


def tuned_comparison(args: Sequence[str], trials: int, sweep_dir: Path | None = None, *, run: RunJob,
                     finish: Callable[[Path, DictConfig], Any]) -> Path:
    """``mmgpt-compare tune=N`` and/or ``compare.match=...``: match the sizes, tune every configuration, train the
    seeds on each one's values, then ``finish`` (cost and report). ``run`` runs one job (see :class:`Plan`)."""
    given, args = take_override(args, "hydra.sweep.dir")
    plan = replace(make_plan(args, trials, sweep_dir or (Path(given) if given else None)), run=run)
    save_launch(plan.sweep_dir, args, trials)
    log.info("comparison in %s: %s%d tuning trials for each of %s, then seeds %s", plan.sweep_dir,
             f"sizes matched on {plan.match}, " if plan.match else "", trials, ", ".join(plan.fusions), plan.seeds)
    fixed = matched_sizes(plan) if plan.match else {}
    if plan.match:  # a tuned depth or width would undo the matching
        plan = replace(plan, space={k: v for k, v in plan.space.items() if not k.endswith(_SIZE_KEYS)})
    best: dict[str, list[str]] = {}
    if trials:
        tuned = tune(plan, fixed)
        write_tuning(plan, tuned)
        best = {f: [_override(k, v) for k, v in sorted(t["best_params"].items())] for f, t in tuned.items()}
    jobs = [(seed, fusion) for seed in plan.seeds for fusion in plan.fusions]
    for num, (seed, fusion) in enumerate(jobs):
        run_dir = plan.sweep_dir / f"{num}_{fusion}_seed{seed}"
        run_point(plan, run_dir, [f"model/fusion={fusion}", f"seed={seed}", *fixed.get(fusion, ()),
                                  *best.get(fusion, ())])
    finish(plan.sweep_dir, compose_compare(plan.args))
    return plan.sweep_dir
