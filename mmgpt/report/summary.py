"""Aggregating runs per fusion (mean ± std over seeds) and ranking the fusions."""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from mmgpt.errors import UserError
from mmgpt.report.runs import RunRecord

#: Overrides that identify a run within its group rather than the group (a seed) or that name the group itself.
_RUN_KEYS = ("seed", "model/fusion")


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (n - 1) of some values; ``std`` is None for fewer than two values."""

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Iterable[float | int | None]) -> Stat:
        xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
        if not xs:
            return cls(None, None, 0)
        return cls(statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else None, len(xs))

    def fmt(self, digits: int = 4) -> str:
        """``0.9120 ± 0.0040`` (``0.9120`` for a single value, ``n/a`` for none)."""
        if self.mean is None:
            return "n/a"
        if self.std is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


@dataclass(frozen=True)
class GroupSummary:
    """The runs of one fusion (one configuration) over seeds, summarised.

    Attributes:
        name: the fusion, followed by any override that differs between groups (``early model.dim=32``).
        fusion: the ``model/fusion`` option.
        runs: the runs, by seed.
        metric: the metric name (``acc``); ``val`` and ``test`` summarise ``val/<metric>``, ``test/<metric>``.
        mode: the metric's direction, ``max`` (higher is better) or ``min`` (``primary_metric.mode``).
        params: total parameter count; ``fusion_params``: the fusion module's.
        train_samples_per_sec: steady-state training throughput (samples/s, all processes together; training
            steps only, validation and checkpoints excluded).
        peak_memory_mb: peak memory; ``peak_memory_kind`` says which (CUDA allocator or process max RSS).
        val: the validation metric of the best checkpoint (the run's selected model).
        test: the test metric of the best checkpoint.
        wall_time_s: wall time of a run (fit + validate + test).
        subsets: the metric per modality subset (missing-modality evaluation), when every run has one.
        subsets_split: the split of that evaluation.
        curve: the validation metric per epoch, over seeds.
    """

    name: str
    fusion: str
    runs: list[RunRecord]
    metric: str
    mode: str
    params: Stat
    fusion_params: Stat
    train_samples_per_sec: Stat
    peak_memory_mb: Stat
    peak_memory_kind: str
    val: Stat
    test: Stat
    wall_time_s: Stat
    subsets: dict[str, Stat]
    subsets_split: str | None
    curve: list[tuple[int, Stat]]

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]


#: ``primary_metric.mode`` (and ``compare.mode``): ``max`` when a higher value is better, ``min`` when lower is.
MODES = ("max", "min")


def higher_is_better(mode: str) -> bool:
    """Whether a higher value of the metric is better, from its declared ``mode`` (``primary_metric.mode``, which
    ``compare.mode`` follows): the one rule the ranking, the Pareto fronts, the gain over the baselines and the
    tuning all follow. The metric's name plays no part (a regression's ``mae`` is ``min``, its ``corr`` ``max``)."""
    if mode not in MODES:
        raise UserError(f"compare.mode={mode!r}: expected max (higher is better) or min (lower is better)")
    return mode == "max"


def improvement(value: float, reference: float, mode: str) -> float:
    """How much better ``value`` is than ``reference`` in the metric's direction (positive: better)."""
    return value - reference if higher_is_better(mode) else reference - value


def pareto_front(points: Sequence[tuple[str, float, float]], higher_is_better: bool = True) -> list[str]:
    """The names of the ``(name, cost, metric)`` points on the Pareto front: none other costs no more and scores
    at least as well, with one of the two strictly. Sorted by cost."""
    sign = 1.0 if higher_is_better else -1.0
    front = [
        (c, name) for name, c, m in points
        if not any(c2 <= c and sign * m2 >= sign * m and (c2 < c or sign * m2 > sign * m) for _, c2, m2 in points)
    ]
    return [name for _, name in sorted(front)]


def _override_dict(run: RunRecord, ignore: Collection[str] = ()) -> dict[str, str]:
    out = {}
    for o in run.overrides:
        key, sep, value = o.lstrip("+~").partition("=")
        if sep and key not in _RUN_KEYS and key not in ignore and not key.startswith("hydra."):
            out[key] = value
    return out


def group_runs(runs: Sequence[RunRecord], ignore: Collection[str] = ()) -> dict[str, list[RunRecord]]:
    """Runs grouped by fusion plus every override whose value differs between runs (seeds aside, and the keys in
    ``ignore``: the tuned hyperparameters, which differ between fusions of a tuned comparison by design)."""
    overrides = [_override_dict(r, ignore) for r in runs]
    keys = sorted({k for o in overrides for k in o})
    varying = [k for k in keys if len({o.get(k) for o in overrides}) > 1]
    groups: dict[str, list[RunRecord]] = {}
    for run, o in zip(runs, overrides):
        name = " ".join([run.fusion, *(f"{k}={o.get(k, '-')}" for k in varying)])
        groups.setdefault(name, []).append(run)
    return groups


def _subsets(runs: Sequence[RunRecord], metric: str) -> tuple[dict[str, Stat], str | None]:
    if not runs or any(r.subsets is None for r in runs):
        return {}, None
    names = sorted(runs[0].subsets or {}, key=lambda s: (-len(s.split("+")), s))  # largest subsets first
    return (
        {s: Stat.of((r.subsets or {}).get(s, {}).get(metric) for r in runs) for s in names},
        runs[0].subsets_split,
    )


def _curve(runs: Sequence[RunRecord], key: str) -> list[tuple[int, Stat]]:
    per_epoch: dict[int, list[float]] = {}
    for r in runs:
        for epoch, value in r.curves.get(key, []):
            per_epoch.setdefault(epoch, []).append(value)
    return [(e, Stat.of(v)) for e, v in sorted(per_epoch.items())]


def summarize_group(name: str, runs: Sequence[RunRecord], metric: str = "acc", mode: str = "max") -> GroupSummary:
    """The :class:`GroupSummary` of the runs of one group (``mode``: the metric's direction, ``max`` or ``min``)."""
    runs = sorted(runs, key=lambda r: (r.seed, str(r.run_dir)))
    kinds = sorted({str(r.results.get("peak_memory_kind")) for r in runs})
    subsets, split = _subsets(runs, metric)
    return GroupSummary(
        name=name,
        fusion=runs[0].fusion,
        runs=list(runs),
        metric=metric,
        mode=mode,
        params=Stat.of((r.results.get("params") or {}).get("total") for r in runs),
        fusion_params=Stat.of((r.results.get("params") or {}).get("fusion") for r in runs),
        train_samples_per_sec=Stat.of(r.train_samples_per_sec for r in runs),
        peak_memory_mb=Stat.of(r.results.get("peak_memory_mb") for r in runs),
        peak_memory_kind="/".join(kinds),
        val=Stat.of(r.metric(f"val/{metric}") for r in runs),
        test=Stat.of(r.metric(f"test/{metric}") for r in runs),
        wall_time_s=Stat.of(r.results.get("wall_time_s") for r in runs),
        subsets=subsets,
        subsets_split=split,
        curve=_curve(runs, f"val/{metric}"),
    )


def summarize(runs: Sequence[RunRecord], metric: str = "acc", mode: str = "max",
              ignore: Collection[str] = ()) -> list[GroupSummary]:
    """One :class:`GroupSummary` per group (:func:`group_runs`), ranked by mean best-validation metric in its
    direction ``mode`` (best first: the highest for ``max``, the lowest for ``min``); groups without it last."""
    higher = higher_is_better(mode)
    groups = [summarize_group(name, rs, metric, mode) for name, rs in group_runs(runs, ignore).items()]

    def key(g: GroupSummary) -> tuple[bool, float, str]:
        v = g.val.mean
        return (v is None, -(v or 0.0) if higher else (v or 0.0), g.name)

    return sorted(groups, key=key)
