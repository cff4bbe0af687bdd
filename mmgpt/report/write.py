"""``report.md``, ``report.csv`` (one row per fusion) and ``runs.csv`` (one row per run) of a comparison."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmgpt import stored_config
from mmgpt.report import significance_section as section
from mmgpt.report.runs import TUNE_DIR, RunRecord
from mmgpt.report.significance_section import SignificanceTest, significance
from mmgpt.report.summary import GroupSummary, Stat, higher_is_better, improvement
from mmgpt.report.tuning import Tuning, tuning_markdown, tuning_rows
from mmgpt.stamp import describe_commits


def _num(value: float | int | None) -> str:
    """A number as CSV text: the shortest repr that reads back to the same float; empty for None."""
    return "" if value is None else repr(float(value)) if isinstance(value, float) else str(value)


def _count(value: float | None) -> str:
    """A parameter count (a mean over seeds, normally all equal) without a spurious ``.0``."""
    return "" if value is None else str(int(value)) if float(value).is_integer() else repr(float(value))


def _subset_names(groups: Sequence[GroupSummary]) -> list[str]:
    return list(dict.fromkeys(s for g in groups for s in g.subsets))


def _split(groups: Sequence[GroupSummary]) -> str:
    return next((g.subsets_split for g in groups if g.subsets_split), "test")


def summary_rows(groups: Sequence[GroupSummary], cost: dict[str, Any] | None = None) -> list[dict[str, str]]:
    """The rows of ``report.csv``: one per group, in rank order, means and stds as separate columns; the measured
    cost (``cost.json``) as ``cost_*`` columns."""
    subsets, split = _subset_names(groups), _split(groups)
    rows = []
    for rank, g in enumerate(groups, 1):
        m = g.metric
        stats: dict[str, Stat] = {
            "train_samples_per_sec": g.train_samples_per_sec,
            "peak_memory_mb": g.peak_memory_mb,
            f"val_{m}": g.val,
            f"test_{m}": g.test,
            "wall_time_s": g.wall_time_s,
            **{f"{split}_{m}[{s}]": g.subsets.get(s, Stat(None, None, 0)) for s in subsets},
        }
        row = {
            "rank": str(rank),
            "name": g.name,
            "fusion": g.fusion,
            "runs": str(len(g.runs)),
            "seeds": " ".join(str(s) for s in g.seeds),
            "params_total": _count(g.params.mean),
            "params_fusion": _count(g.fusion_params.mean),
            "peak_memory_kind": g.peak_memory_kind,
        }
        for key, stat in stats.items():
            row[f"{key}_mean"], row[f"{key}_std"] = _num(stat.mean), _num(stat.std)
        for key, value in ((cost or {}).get("configurations", {}).get(g.name) or {}).items():
            row[f"cost_{key}"] = _num(value)
        rows.append(row)
    return rows


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)


def run_rows(groups: Sequence[GroupSummary], root: Path) -> list[dict[str, str]]:
    """The rows of ``runs.csv``: every run with the numbers the summary was computed from."""
    subsets, split = _subset_names(groups), _split(groups)
    rows = []
    for g in groups:
        m = g.metric
        for r in g.runs:
            res, params = r.results, r.results.get("params") or {}
            row = {
                "name": g.name,
                "fusion": r.fusion,
                "seed": str(r.seed),
                "run_dir": _rel(r.run_dir, root),
                "params_total": _num(params.get("total")),
                "params_fusion": _num(params.get("fusion")),
                "train_samples_per_sec": _num(r.train_samples_per_sec),
                "peak_memory_mb": _num(res.get("peak_memory_mb")),
                "peak_memory_kind": str(res.get("peak_memory_kind", "")),
                f"val_{m}": _num(r.metric(f"val/{m}")),
                f"test_{m}": _num(r.metric(f"test/{m}")),
                "wall_time_s": _num(res.get("wall_time_s")),
                "epochs": _num(res.get("epochs")),
                "global_step": _num(res.get("global_step")),
            }
            for s in subsets:
                row[f"{split}_{m}[{s}]"] = _num(((r.subsets or {}).get(s) or {}).get(m))
            rows.append(row)
    return rows


def write_csv(path: Path, rows: Sequence[dict[str, str]]) -> Path:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _params(total: float | None, fusion: float | None) -> str:
    if total is None:
        return "n/a"
    return f"{total:,.0f}" + (f" ({fusion:,.0f})" if fusion is not None else "")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def sweep_info(root: Path) -> dict[str, Any]:
    """What ``<root>/multirun.yaml`` (written by Hydra at launch) says about the sweep; for a tuned comparison
    (``mmgpt-compare tune=N``) its command line (``tune/launch.yaml``); empty without either."""
    path = root / "multirun.yaml"
    launch = root / TUNE_DIR / "launch.yaml"
    if not path.is_file() and launch.is_file():  # stored configs: read as text, nothing resolved
        saved = stored_config.load(launch)
        args = stored_config.strings(stored_config.select(saved, "args", launch, default=[], shown_only=True),
                                     launch, "args", shown_only=True)
        return {"overrides": [f"tune={stored_config.select(saved, 'trials', launch)}", *args]}
    if not path.is_file():
        return {}
    cfg = stored_config.load(path)
    choices = stored_config.select(cfg, "hydra.runtime.choices", path, default={}, shown_only=True)
    choices = choices if isinstance(choices, dict) else {}
    task = stored_config.select(cfg, "hydra.overrides.task", path, default=[], shown_only=True)
    return {
        "overrides": stored_config.strings(task, path, "hydra.overrides.task", shown_only=True),
        "data": choices.get("data"),
        "experiment": choices.get("experiment"),
        "trainer": choices.get("trainer"),
        "logger": choices.get("logger"),
    }


def _md_header(groups: Sequence[GroupSummary], root: Path, info: dict[str, Any]) -> list[str]:
    runs = [r for g in groups for r in g.runs]
    metric = groups[0].metric if groups else "acc"
    lines = ["# Fusion comparison", ""]
    lines.append(f"- runs: {len(runs)}, configurations: {len(groups)}, directory: `{root}`")
    if info:
        lines.append("- command: `" + " ".join(["mmgpt-compare", *info["overrides"]]) + "`"
                     + ("" if info["overrides"] else " (defaults)"))
        choices = ", ".join(f"{k}={info[k]}" for k in ("data", "experiment", "trainer", "logger") if info.get(k))
        if choices:
            lines.append(f"- config choices: {choices}")
    commits, differ = describe_commits([r.results.get("stamp") for r in runs])
    lines.append(f"- code: {commits}")
    if differ:
        lines.append("- **warning: the runs come from different commits (or uncommitted changes)**; their differences "
                     "may come from the code, not only from the configurations (each run's `results.json` has its "
                     "`stamp`)")
    total = sum(float(r.results.get("wall_time_s") or 0.0) for r in runs)
    lines.append(f"- summed wall time of the runs: {total:.0f} s")
    direction = "higher" if not groups or higher_is_better(groups[0].mode) else "lower"
    lines.append(f"- ranked by mean validation {metric} of each run's best checkpoint ({direction} is better, best "
                 "first); values are mean ± sample std over seeds")
    return lines


def is_baseline(group: GroupSummary) -> bool:
    """A unimodal baseline run (``model/fusion=unimodal_<modality>``)."""
    return group.fusion.startswith("unimodal")


def gain_over_baselines(groups: Sequence[GroupSummary]) -> dict[str, float]:
    """How much each fusion's mean test metric beats the best unimodal baseline's, in the metric's direction
    (positive: better; for a ``min`` metric such as MAE, the baseline's value minus the fusion's); empty without
    baselines."""
    baselines = [g.test.mean for g in groups if is_baseline(g) and g.test.mean is not None]
    if not baselines:
        return {}
    mode = groups[0].mode
    best = max(baselines) if higher_is_better(mode) else min(baselines)
    return {g.name: improvement(g.test.mean, best, mode) for g in groups
            if not is_baseline(g) and g.test.mean is not None}


def _md_summary(groups: Sequence[GroupSummary], test: SignificanceTest | None = None) -> list[str]:
    metric = groups[0].metric if groups else "acc"
    ties = section.ties(test)
    gains = gain_over_baselines(groups)
    kinds = sorted({g.peak_memory_kind for g in groups})
    header = ["rank", "fusion", "seeds", "params (fusion)", "train samples/s", f"peak memory MB ({'/'.join(kinds)})",
              f"best val {metric}", f"test {metric}", "wall time s"]
    if gains:
        header.append(f"test {metric} gain over best unimodal")
    rows = [
        [str(i) + (" (tie)" if i > 1 and frozenset((groups[i - 2].name, g.name)) in ties else ""),
         g.name, " ".join(map(str, g.seeds)),
         _params(g.params.mean, g.fusion_params.mean),
         g.train_samples_per_sec.fmt(1), g.peak_memory_mb.fmt(0), g.val.fmt(4), g.test.fmt(4), g.wall_time_s.fmt(1)]
        + ([("baseline" if is_baseline(g) else f"{gains[g.name]:+.4f}" if g.name in gains else "n/a")] if gains else [])
        for i, g in enumerate(groups, 1)
    ]
    return _table(header, rows)


def _md_robustness(groups: Sequence[GroupSummary]) -> list[str]:
    subsets = _subset_names(groups)
    if not subsets:
        return ["No missing-modality evaluation (`eval_results.json`) in these runs."]
    metric, split = groups[0].metric, _split(groups)
    lines = [f"{split} {metric} of the best checkpoint when only these modalities are present "
             "(the others marked absent), from each run's `eval_results.json`.", ""]
    rows = [[g.name, *(g.subsets[s].fmt(3) if s in g.subsets else "n/a" for s in subsets)] for g in groups]
    return lines + _table(["fusion", *subsets], rows)


def _md_runs(groups: Sequence[GroupSummary], root: Path) -> list[str]:
    metric = groups[0].metric if groups else "acc"
    header = ["fusion", "seed", "run dir", "params", "train samples/s", "peak MB", f"val {metric}", f"test {metric}",
              "wall s"]
    rows = []
    for g in groups:
        for r in g.runs:
            res = r.results
            val, test = r.metric(f"val/{metric}"), r.metric(f"test/{metric}")
            rows.append([
                g.name, str(r.seed), f"`{_rel(r.run_dir, root)}`", f"{(res.get('params') or {}).get('total', 0):,}",
                _fixed(r.train_samples_per_sec, 1), _fixed(res.get("peak_memory_mb"), 0), _fixed(val, 4),
                _fixed(test, 4), _fixed(res.get("wall_time_s"), 1),
            ])
    return _table(header, rows)


def _fixed(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}f}"


def _flops(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f}"


def _md_cost(groups: Sequence[GroupSummary], cost: dict[str, Any] | None) -> list[str]:
    if not cost:
        return ["Not measured (no `cost.json`: written when a comparison finishes)."]
    conf, batch = cost["configurations"], cost["batch"]
    memory = ("CUDA allocator peak (`max_memory_allocated`)" if cost["memory_kind"].startswith("cuda")
              else "peak bytes of live tensors (parameters, batch, activations, gradients)")
    lines = [
        f"Every configuration rebuilt from its runs' config and measured in one process on {cost['device']} "
        f"({cost['threads']} threads) on the same batch: FLOPs per sample counted by `torch.utils.flop_counter` "
        f"(CPU attention included), {memory} of one training step at batch {batch}, forward latency "
        f"(eval, no grad) at batch 1 and {batch}, and training throughput (forward, backward, AdamW) at batch "
        f"{batch}; latency and throughput are medians of {cost['rounds']} rounds interleaved across the "
        f"configurations (load average {cost['load_average_before']:.1f} before, "
        f"{cost['load_average_after']:.1f} after: the machine may have been shared; ratios between "
        "configurations are the robust part).", ""]
    header = ["fusion", "params", "forward FLOPs/sample", "train-step FLOPs/sample", "peak step memory MB",
              "latency b1 ms", f"latency b{batch} ms/sample", "train samples/s", f"test {groups[0].metric}"]
    rows = [[g.name, f"{c['params']:,}", _flops(c["forward_flops"]), _flops(c["train_step_flops"]),
             f"{c['peak_step_memory_mb']:.1f}", f"{c['latency_b1_ms']:.2f}", f"{c['latency_batch_ms'] / batch:.3f}",
             f"{c['train_samples_per_sec']:.0f}", g.test.fmt(4)]
            for g in groups if (c := conf.get(g.name))]
    return lines + _table(header, rows)


def _md_matching(matching: dict[str, Any]) -> list[str]:
    kind, ref, tol = matching["kind"], matching["reference"], matching["tolerance"]
    what = "parameters" if kind == "params" else "forward FLOPs per sample"
    lines = [f"`compare.match={kind}`: before training, every fusion's `model.dim` and `model.mlp_ratio` (shared "
             f"sizes: encoders and fusion alike) were set so that its {what} are within {tol:.0%} of {ref}'s at its "
             "configured size; unimodal baselines keep theirs. Tuned size keys are left out of the search space.",
             "", f"| configuration | {what} before | after | ratio to {ref} | changed |", "|---|---|---|---|---|"]
    for name, c in matching["configurations"].items():
        changed = ", ".join(f"`{k}`={v}" for k, v in sorted(c["overrides"].items())) or "-"
        lines.append(f"| {name} | {c['before']:,.0f} | {c['after']:,.0f} | {c['ratio']:.3f} | {changed} |")
    return lines


def render_markdown(groups: Sequence[GroupSummary], root: Path, plots: Sequence[Path],
                    tuning: Tuning | None = None, cost: dict[str, Any] | None = None,
                    matching: dict[str, Any] | None = None, test: SignificanceTest | None = None) -> str:
    """The text of ``report.md`` (with a tuning section when the comparison was tuned, a cost table when
    ``cost.json`` was measured); ``test``: :func:`significance` of ``groups``, computed when not given."""
    lines = _md_header(groups, root, sweep_info(root))
    test = significance(groups, root=root) if test is None else test
    lines += ["", "## Summary", ""] + _md_summary(groups, test)
    if section.ties(test):
        lines += ["", "`(tie)`: not distinguishable from the fusion ranked just above it (next section)."]
    lines += ["", "## Are the differences real?", ""] + section.markdown(test)
    lines += ["", "## Cost at equal footing", ""] + _md_cost(groups, cost)
    if matching:
        lines += ["", "## Compute matching", ""] + _md_matching(matching)
    lines += ["", "## Missing-modality robustness", ""] + _md_robustness(groups)
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({os.path.relpath(p, root)})" for p in plots]
    lines += ["", "## Runs", ""] + _md_runs(groups, root)
    lines += [
        "",
        "## Where the numbers come from",
        "",
        "- parameters, throughput, peak memory, wall time, best val and test metrics: each run's `results.json`;",
        "- train samples/s: steady-state rate of the `Throughput` callback over training steps only (validation "
        "passes and checkpoint saves excluded; mean over epochs after the first), `train_samples_per_sec` in "
        "`results.json` (runs from before that key: their `samples_per_sec`, which included validation);",
        "- peak memory: `cpu_max_rss` is the process's maximum resident set during the run, `cuda_allocated` the "
        "CUDA allocator peak;",
        "- best val: the validation metric of the checkpoint kept by `ModelCheckpoint` (monitor `val/<metric>`), "
        "test: that checkpoint on the test split;",
        "- validation curves: each run's `metrics.csv`; robustness: each run's `eval_results.json`;",
        "- `report.csv` has these numbers at full precision, `runs.csv` the per-run values.",
        "",
        "## Methods: the significance test",
        "",
        section.methods(test),
        "",
        "## Methods: hyperparameters",
        "",
    ]
    lines += tuning_markdown(tuning) if tuning else [
        "Not tuned: every configuration ran with the same configured hyperparameters (`mmgpt-compare tune=N` "
        "gives each the same number of tuning trials).", ""]
    return "\n".join(lines) + ("\n" if tuning else "")


def write_tables(groups: Sequence[GroupSummary], root: Path, out_dir: Path, plots: Sequence[Path],
                 tuning: Tuning | None = None, cost: dict[str, Any] | None = None,
                 matching: dict[str, Any] | None = None) -> list[Path]:
    """Write ``report.md``, ``report.csv`` and ``runs.csv`` (and ``trials.csv`` when tuned) into ``out_dir``."""
    md = out_dir / "report.md"
    test = significance(groups, root=root)
    md.write_text(render_markdown(groups, root, plots, tuning, cost, matching, test))
    if tuning:
        write_csv(out_dir / "trials.csv", tuning_rows(tuning))
    if test.diffs:
        write_csv(out_dir / "significance.csv", section.rows(test))
    return [md, write_csv(out_dir / "report.csv", summary_rows(groups, cost)),
            write_csv(out_dir / "runs.csv", run_rows(groups, root))]


__all__ = ["RunRecord", "render_markdown", "run_rows", "summary_rows", "sweep_info", "write_tables"]
