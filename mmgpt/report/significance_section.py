"""The report's "Are the differences real?" section: the significance test of every pair of configurations on
the metric the report ranks by, read from the runs' per-sample predictions, and its Methods paragraph.

The metric is the comparison's (``groups[0].metric``, the task's ``primary_metric``) and has a per-sample form in
:data:`mmgpt.report.significance.SAMPLE_METRICS`, or the section says that this metric has none. Differences are
``metric(a) - metric(b)``; which sign means "a is better" follows the metric's direction (``mode``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mmgpt import stored_config
from mmgpt.report.significance import Difference, RunPredictions, SampleMetric, pairwise, sample_metrics
from mmgpt.report.summary import GroupSummary, higher_is_better
from mmgpt.training.predictions import read_predictions

#: Bootstrap replicates of the significance test.
N_BOOT = 1000
#: The multi-label decision threshold when a run's config does not say (``MultiLabel``'s default).
DEFAULT_THRESHOLD = 0.5
#: What each metric is, in the report's words.
DESCRIPTIONS = {
    "acc": "top-1 accuracy",
    "auroc": "AUROC of the positive class's probability",
    "mae": "mean absolute error (the paired difference of a resample is the mean of the per-sample differences "
           "of absolute errors)",
    "corr": "Pearson correlation of predictions and targets",
    "acc2": "MMSA's Acc-2, negative vs non-negative",
    "f1": "MMSA's weighted F1, negative vs non-negative",
    "acc2_nonzero": "MMSA's Acc-2, negative vs positive (zero targets left out)",
    "f1_nonzero": "MMSA's weighted F1, negative vs positive (zero targets left out)",
    "acc5": "MMSA's Acc-5 (clipped to [-2, 2] and rounded)",
    "acc7": "MMSA's Acc-7 (clipped to [-3, 3] and rounded)",
    "f1_micro": "micro-averaged F1 over every (sample, label), a label predicted when sigmoid(logit) >= the "
                "task's threshold",
}


@dataclass
class SignificanceTest:
    """The significance test of a comparison.

    Attributes:
        metric: the metric compared (the one the report ranks by).
        mode: its direction, ``max`` or ``min``.
        diffs: every pair, ``metric(a) - metric(b)``; None when there is no test.
        why: when there is no test, the sentence that says why.
    """

    metric: str
    mode: str
    diffs: list[Difference] | None = None
    why: str = ""


def _threshold(run_dir: Path) -> float:
    """The multi-label decision threshold a run trained with (its saved ``config.yaml``), else the default."""
    cfg = stored_config.run_config(run_dir) or {}
    objectives = ((cfg.get("model") or {}).get("module") or {}).get("objectives") or {}
    for spec in objectives.values():
        if isinstance(spec, dict) and spec.get("type") == "multilabel" and spec.get("threshold") is not None:
            return float(spec["threshold"])
    return DEFAULT_THRESHOLD


def _metric(groups: Sequence[GroupSummary]) -> SampleMetric | str:
    """The per-sample form of the comparison's metric, or why there is none."""
    name = groups[0].metric
    if name not in DESCRIPTIONS:
        return (f"The ranking metric `{name}` has no per-sample form (the test covers "
                f"{', '.join(f'`{m}`' for m in DESCRIPTIONS)}): no significance test.")
    if name != "f1_micro":
        return sample_metrics()[name]
    thresholds = {_threshold(r.run_dir) for g in groups for r in g.runs}
    if len(thresholds) > 1:
        return (f"The runs use different multi-label thresholds ({', '.join(map(str, sorted(thresholds)))}), so "
                f"their `{name}` values are not the same metric: no significance test.")
    return sample_metrics(thresholds.pop())[name]


def significance(groups: Sequence[GroupSummary], split: str = "test", root: Path | None = None) -> SignificanceTest:
    """Every pair of groups compared on ``split``'s per-sample predictions with the metric the report ranks by
    (:mod:`mmgpt.report.significance`); no test, with the reason, when there are fewer than two groups, the
    metric has no per-sample form, or a run saved no predictions."""
    metric, mode = (groups[0].metric, groups[0].mode) if groups else ("acc", "max")
    test = SignificanceTest(metric, mode)
    if len(groups) < 2:
        test.why = "Only one configuration: nothing to compare, no significance test."
        return test
    sample_metric = _metric(groups)
    if isinstance(sample_metric, str):
        test.why = sample_metric
        return test
    runs: dict[str, dict[int, RunPredictions]] = {}
    for g in groups:
        runs[g.name] = {}
        for r in g.runs:
            preds = read_predictions(r.run_dir, split, sample_metric.reads)
            if preds is None:
                where = r.run_dir if root is None else _rel(r.run_dir, root)
                test.why = (f"No per-sample predictions (`predictions_{split}.npz` with `{sample_metric.reads}`) in "
                            f"every run (not in `{where}`): no significance test.")
                return test
            runs[g.name][r.seed] = RunPredictions(*preds)
    try:
        test.diffs = pairwise(runs, sample_metric, n_boot=N_BOOT)
    except ValueError as e:  # the runs of one seed predicted different samples
        test.why = f"The runs' predictions cannot be paired ({e}): no significance test."
    return test


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)


def direction(test: SignificanceTest) -> str:
    """Which sign of ``metric(a) - metric(b)`` means that a is better."""
    better, word = ("positive", "higher") if higher_is_better(test.mode) else ("negative", "lower")
    return f"{better} means a is better ({word} `{test.metric}` is better)"


def ties(test: SignificanceTest | None) -> set[frozenset[str]]:
    """The pairs that are not distinguishable."""
    return {frozenset((d.a, d.b)) for d in (test.diffs if test else None) or () if not d.distinguishable()}


def markdown(test: SignificanceTest) -> list[str]:
    """The section's lines: the table of every pair, or why there is no test."""
    if test.diffs is None:
        return [test.why]
    rows = [[f"{d.a} − {d.b}", f"{d.diff:+.4f}", f"[{d.low:+.4f}, {d.high:+.4f}]", f"{d.p_value:.3f}",
             f"{d.p_holm:.3f}", "yes" if d.distinguishable() else "**no**"] for d in test.diffs]
    same = [f"{d.a} and {d.b}" for d in test.diffs if not d.distinguishable()]
    m = test.metric
    lines = [f"Difference of mean test `{m}` for every pair a − b, `{m}(a) - {m}(b)` ({direction(test)}), with a "
             "95% bootstrap interval and a two-sided p-value, Holm-adjusted over the pairs (see Methods).", ""]
    header = ["pair a − b", f"{m}(a) - {m}(b)", "95% CI", "p", "p (Holm)", "distinguishable at 0.05"]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", ("Not distinguishable: " + "; ".join(same) + ". Their order in the ranking is not evidence that "
                   "one is better.") if same else "Every pair is distinguishable at the 0.05 level (Holm)."]
    return lines


def methods(test: SignificanceTest) -> str:
    """The Methods paragraph that states the test."""
    m = test.metric
    what = (f"`{m}`, {DESCRIPTIONS[m]}, the metric the report ranks by" if m in DESCRIPTIONS
            else f"the ranking metric `{m}` (no per-sample form: not tested)")
    return (
        "Each run saves its best checkpoint's per-sample test predictions (`predictions_test.npz`). Runs of two "
        "fusions with the same seed saw the same data, so they are paired by seed and by sample id. The metric "
        f"is {what}. For a pair of fusions a and b, {N_BOOT} bootstrap replicates each draw seeds with "
        "replacement and, within each drawn seed, test samples with replacement (the same draw for both fusions), "
        f"and compute the mean over the drawn seeds of `{m}(a) - {m}(b)`, the metric recomputed on the drawn "
        f"samples ({direction(test)}). The 95% interval is the 2.5-97.5 percentile range of the replicates; the "
        "two-sided p-value is 2 min(P(d <= 0), P(d >= 0)); p-values are Holm-adjusted over all pairs (only seeds "
        "both fusions ran are compared). Resampling seeds carries seed-to-seed variation into the interval. With "
        "three seeds that variation is estimated from three values: the test has little power against differences "
        "smaller than the spread between seeds, and a pair marked not distinguishable may still differ; a t-test "
        "over three seeds would have two degrees of freedom and even less power.")


def rows(test: SignificanceTest) -> list[dict[str, str]]:
    """The rows of ``significance.csv``: every pair, the metric, its difference, interval, p-values and verdict."""
    def num(x: float) -> str:
        return repr(float(x))

    return [{"a": d.a, "b": d.b, "metric": test.metric, "difference": num(d.diff), "ci_low": num(d.low),
             "ci_high": num(d.high), "p": num(d.p_value), "p_holm": num(d.p_holm),
             "distinguishable": str(d.distinguishable()).lower()} for d in test.diffs or ()]
