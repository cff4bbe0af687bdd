"""PNG plots of a comparison: validation curves with a band over seeds, and the metric against cost."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure  # the object API: no pyplot state, no display backend needed
from matplotlib.ticker import MaxNLocator

from mmgpt.report.summary import GroupSummary, Stat, higher_is_better, pareto_front

_DPI = 120


def _colours(n: int) -> list[str]:
    return [f"C{i % 10}" for i in range(n)]


def plot_val_curves(groups: Sequence[GroupSummary], path: Path) -> Path:
    """Validation metric per epoch: the mean over seeds as a line, mean ± std as a band."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for group, colour in zip(groups, _colours(len(groups))):
        points = [(e, s) for e, s in group.curve if s.mean is not None]
        if not points:
            continue
        epochs = [e for e, _ in points]
        mean = [s.mean or 0.0 for _, s in points]
        std = [s.std or 0.0 for _, s in points]
        ax.plot(epochs, mean, marker="o", ms=3, color=colour, label=f"{group.name} (n={len(group.runs)})")
        ax.fill_between(epochs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=colour, alpha=0.2, linewidth=0)
    metric = groups[0].metric if groups else "metric"
    ax.set(xlabel="epoch", ylabel=f"val/{metric}", title=f"Validation {metric} (mean ± std over seeds)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    return path


def plot_metric_vs(groups: Sequence[GroupSummary], path: Path, x: Callable[[GroupSummary], Stat],
                   xlabel: str) -> Path:
    """Test metric (mean ± std over seeds) against a cost such as parameters or throughput."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for group, colour in zip(groups, _colours(len(groups))):
        xs, ys = x(group), group.test
        if xs.mean is None or ys.mean is None:
            continue
        ax.errorbar([xs.mean], [ys.mean], xerr=[xs.std or 0.0], yerr=[ys.std or 0.0], fmt="o", color=colour,
                    capsize=3, label=group.name)
        ax.annotate(group.name, (xs.mean, ys.mean), textcoords="offset points", xytext=(5, 5), fontsize="small")
    metric = groups[0].metric if groups else "metric"
    ax.set(xlabel=xlabel, ylabel=f"test/{metric}", title=f"Test {metric} vs {xlabel} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    return path


def plot_metric_vs_cost(groups: Sequence[GroupSummary], cost: Mapping[str, Mapping[str, float]], key: str,
                        xlabel: str, path: Path) -> Path:
    """Test metric (mean ± std over seeds) against a measured cost (``cost.json``), log-scaled, with the Pareto
    front (no configuration both cheaper and better) drawn as a line and its points ringed."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    points = [(g, cost[g.name][key]) for g in groups if g.name in cost and g.test.mean is not None]
    for (group, x), colour in zip(points, _colours(len(points))):
        assert group.test.mean is not None
        ax.errorbar([x], [group.test.mean], yerr=[group.test.std or 0.0], fmt="o", color=colour, capsize=3)
        ax.annotate(group.name, (x, group.test.mean), textcoords="offset points", xytext=(5, 5), fontsize="small")
    metric = groups[0].metric if groups else "metric"
    front = pareto_front([(g.name, x, g.test.mean or 0.0) for g, x in points],
                         higher_is_better(groups[0].mode) if groups else True)
    on_front = sorted(((x, g.test.mean) for g, x in points if g.name in front), key=lambda p: p[0])
    if on_front:
        ax.plot([x for x, _ in on_front], [y for _, y in on_front], "--", color="0.4", label="Pareto front")
        ax.scatter([x for x, _ in on_front], [y for _, y in on_front], s=160, facecolors="none", edgecolors="0.4")
        ax.legend(fontsize="small")
    if points and min(x for _, x in points) > 0:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=f"test/{metric}", title=f"Test {metric} vs {xlabel}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    return path


def write_plots(groups: Sequence[GroupSummary], out_dir: Path,
                cost: Mapping[str, Mapping[str, float]] | None = None) -> list[Path]:
    """``val_curves.png``, ``metric_vs_params.png`` and ``metric_vs_throughput.png`` in ``out_dir``; with the
    measured cost (``cost.json``) also ``metric_vs_flops.png`` and ``metric_vs_latency.png`` (Pareto fronts)."""
    plots = [
        plot_val_curves(groups, out_dir / "val_curves.png"),
        plot_metric_vs(groups, out_dir / "metric_vs_params.png", lambda g: g.params, "parameters"),
        plot_metric_vs(groups, out_dir / "metric_vs_throughput.png", lambda g: g.train_samples_per_sec,
                       "training throughput (samples/s)"),
    ]
    if cost:
        plots += [
            plot_metric_vs_cost(groups, cost, "forward_flops", "forward FLOPs per sample",
                                out_dir / "metric_vs_flops.png"),
            plot_metric_vs_cost(groups, cost, "latency_b1_ms", "latency at batch 1 (ms)",
                                out_dir / "metric_vs_latency.png"),
        ]
    return plots
