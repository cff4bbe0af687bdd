"""Is one fusion better than another? Differences with confidence intervals and p-values, Holm-corrected.

The test is a two-level paired bootstrap over the per-sample predictions every run saves. Runs of two fusions
with the same seed saw the same data (the seed also draws the data order, and for the embedded set the data
itself), so they are paired by seed, and within a seed by sample id. Each replicate draws seeds with replacement
and, within each drawn seed, that seed's test samples with replacement (the same draw for both fusions), and
computes the mean over the drawn seeds of ``metric(A) - metric(B)``. The 95% interval is the 2.5-97.5 percentile
range of the replicates; the two-sided p-value is ``2 * min(P(d <= 0), P(d >= 0))`` over the replicates, which is
1 when the two fusions' predictions are identical. Resampling seeds carries the seed-to-seed variation into the
interval; with three seeds that variation is itself estimated from three values, so the test can miss a real
difference that is small against it (low power), and says "not distinguishable" rather than rank.

For m pairs, p-values are adjusted with Holm's step-down method (family-wise error rate at most alpha).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Metric = Callable[[np.ndarray, np.ndarray], float]


def accuracy(labels: np.ndarray, scores: np.ndarray) -> float:
    """Top-1 accuracy of (N, C) scores against (N,) labels."""
    return float((scores.argmax(axis=1) == labels).mean())


@dataclass
class RunPredictions:
    """One run's predictions on a split: sample ``ids`` (N,), ``labels`` (N,) and ``scores`` (N, C)."""

    ids: np.ndarray
    labels: np.ndarray
    scores: np.ndarray

    def aligned(self, ids: np.ndarray) -> RunPredictions:
        """The predictions in the order of ``ids`` (every id must be present)."""
        where = {v: i for i, v in enumerate(self.ids.tolist())}
        try:
            order = np.array([where[v] for v in ids.tolist()])
        except KeyError as e:
            raise ValueError(f"sample id {e.args[0]!r} is missing from a run's predictions") from None
        return RunPredictions(self.ids[order], self.labels[order], self.scores[order])


@dataclass
class Difference:
    """``metric(a) - metric(b)``: the observed difference, its 95% interval and p-value (raw and Holm-adjusted)."""

    a: str
    b: str
    diff: float
    low: float
    high: float
    p_value: float
    p_holm: float = float("nan")

    def distinguishable(self, alpha: float = 0.05) -> bool:
        return self.p_holm < alpha


def bootstrap_difference(
    a: dict[int, RunPredictions], b: dict[int, RunPredictions], metric: Metric = accuracy, n_boot: int = 1000,
    seed: int = 0, names: tuple[str, str] = ("a", "b"),
) -> Difference:
    """The two-level paired bootstrap of the module docstring for runs ``a`` and ``b`` (seed -> predictions).

    Only seeds both sides have are compared.

    Raises:
        ValueError: no seed in common, or a sample id of one side missing from the other's predictions.
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError(f"{names[0]} and {names[1]} have no seed in common to compare")
    pairs = []
    for s in seeds:
        ids = np.sort(a[s].ids)  # a fixed order, whatever order the runs saved their samples in
        pairs.append((a[s].aligned(ids), b[s].aligned(ids)))
    observed = np.mean([metric(x.labels, x.scores) - metric(y.labels, y.scores) for x, y in pairs])
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for k in range(n_boot):
        drawn = []
        for s in rng.integers(0, len(pairs), len(pairs)):
            x, y = pairs[s]
            idx = rng.integers(0, len(x.ids), len(x.ids))
            drawn.append(metric(x.labels[idx], x.scores[idx]) - metric(y.labels[idx], y.scores[idx]))
        diffs[k] = np.mean(drawn)
    p = min(1.0, 2.0 * min(np.mean(diffs <= 0), np.mean(diffs >= 0)))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return Difference(names[0], names[1], float(observed), float(low), float(high), float(p))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of m p-values (same order as given)."""
    m = len(p_values)
    order = np.argsort(p_values, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted.tolist()


def pairwise(
    runs: dict[str, dict[int, RunPredictions]], metric: Metric = accuracy, n_boot: int = 1000, seed: int = 0
) -> list[Difference]:
    """Every pair of fusions (name -> seed -> predictions, in name order), with Holm-adjusted p-values."""
    names = sorted(runs)
    out = [bootstrap_difference(runs[x], runs[y], metric, n_boot, seed, (x, y))
           for i, x in enumerate(names) for y in names[i + 1:]]
    for d, p in zip(out, holm([d.p_value for d in out])):
        d.p_holm = p
    return out
