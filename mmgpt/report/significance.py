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

The metric is the one the report ranks by, from :data:`SAMPLE_METRICS` (accuracy, AUROC, MAE, Pearson
correlation, MMSA's sentiment Acc-2 / F1 / Acc-5 / Acc-7, multi-label micro F1): the functional forms of
:mod:`mmgpt.objectives.metrics`, which score a whole (R, N) matrix of resampling weights in one call. The sample
draws are made once per seed and shared by every configuration (so each run's replicates are scored once, not
once per pair): a seed drawn k times in a replicate takes its first k of S independent sample draws (S: the
number of seeds).

For m pairs, p-values are adjusted with Holm's step-down method (family-wise error rate at most alpha).
Legend: N samples of a seed's split, R = n_boot replicates, S seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mmgpt.objectives import metrics as M


@dataclass(frozen=True)
class SampleMetric:
    """A metric that scores resampled predictions: ``fn(labels, values, weights (R, N)) -> (R,)``.

    Attributes:
        name: the logged name (``test/<name>``), the key of :data:`SAMPLE_METRICS`.
        reads: which array of ``predictions_<split>.npz`` it takes: ``scores`` (softmax) or ``logits``.
        fn: the metric over weighted samples (a functional form of :mod:`mmgpt.objectives.metrics`).
    """

    name: str
    reads: str
    fn: Callable[[Tensor, Tensor, Tensor | None], Tensor]

    def __call__(self, labels: np.ndarray, values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """The metric (R,) of each resample (``weights`` (R, N)); (1,) for the split itself without weights."""
        w = None if weights is None else torch.from_numpy(np.asarray(weights, dtype=np.float64))
        return self.fn(torch.from_numpy(np.asarray(labels)), torch.from_numpy(np.asarray(values)), w).numpy()


def _one_value(values: Tensor) -> Tensor:
    """A regression's predictions (N,) from its saved logits (N, 1) (or (N,))."""
    if values.dim() > 2 or (values.dim() == 2 and values.shape[1] != 1):
        raise ValueError(f"a regression saves one value per sample, got predictions of shape {tuple(values.shape)}")
    return values.reshape(-1)


def sample_metrics(threshold: float = 0.5) -> dict[str, SampleMetric]:
    """Every metric with a per-sample form, by the name the tasks log it under; ``threshold``: the multi-label
    decision threshold (``model.module.objectives.<name>.threshold`` of task=multilabel)."""
    def regression(fn: Callable[..., Tensor], **kw: object) -> Callable[[Tensor, Tensor, Tensor | None], Tensor]:
        return lambda y, v, w: fn(_one_value(v), y, weights=w, **kw)

    return {
        "acc": SampleMetric("acc", "scores", lambda y, s, w: M.accuracy(s, y, w)),
        "auroc": SampleMetric("auroc", "scores", lambda y, s, w: M.binary_auroc(s[:, 1], y, w)),
        "mae": SampleMetric("mae", "logits", regression(M.mean_absolute_error)),
        "corr": SampleMetric("corr", "logits", regression(M.pearson_corr)),
        **{name: SampleMetric(name, "logits", regression(M.sentiment_binary, score=score, exclude_zero=nonzero))
           for name, score, nonzero in (("acc2", "acc", False), ("f1", "f1", False),
                                        ("acc2_nonzero", "acc", True), ("f1_nonzero", "f1", True))},
        "acc5": SampleMetric("acc5", "logits", regression(M.sentiment_classes, num_classes=5)),
        "acc7": SampleMetric("acc7", "logits", regression(M.sentiment_classes, num_classes=7)),
        "f1_micro": SampleMetric("f1_micro", "logits", lambda y, v, w: M.micro_f1(v, y, threshold=threshold,
                                                                                  weights=w)),
    }


#: The metrics with a per-sample form at the default multi-label threshold (0.5).
SAMPLE_METRICS = sample_metrics()
accuracy = SAMPLE_METRICS["acc"]


@dataclass
class RunPredictions:
    """One run's predictions on a split: sample ``ids`` (N,), ``labels`` (N,) or (N, C) multi-hot, and ``scores``:
    the array the metric reads (:attr:`SampleMetric.reads`: class scores (N, C), or logits)."""

    ids: np.ndarray
    labels: np.ndarray
    scores: np.ndarray

    def aligned(self, ids: np.ndarray) -> RunPredictions:
        """The predictions in the order of ``ids`` (every id must be present)."""
        where = {v: i for i, v in enumerate(self.ids.tolist())}
        try:
            order = np.array([where[v] for v in ids.tolist()], dtype=np.int64)
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


@dataclass
class _Scored:
    """One run (one configuration, one seed) scored: the metric on the split and on every draw, (S, R)."""

    observed: float
    replicates: np.ndarray


def _counts(rng: np.random.Generator, n_boot: int, n: int) -> np.ndarray:
    """(R, N): how often each of the N samples is drawn (N draws with replacement) in each of R replicates."""
    idx = rng.integers(0, n, (n_boot, n)) + (np.arange(n_boot) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def _score(runs: dict[str, dict[int, RunPredictions]], metric: SampleMetric, n_boot: int,
           seed: int) -> dict[str, dict[int, _Scored]]:
    """Every run scored on the split and on the shared draws of its seed (see the module docstring)."""
    names = sorted(runs)
    depth = max(len(r) for r in runs.values())  # the most times one seed can be drawn in a replicate
    rng = np.random.default_rng(seed)
    out: dict[str, dict[int, _Scored]] = {n: {} for n in names}
    for s in sorted({s for r in runs.values() for s in r}):
        having = [n for n in names if s in runs[n]]
        ids = np.sort(runs[having[0]][s].ids)  # a fixed order, whatever order the runs saved their samples in
        aligned = {n: runs[n][s].aligned(ids) for n in having}
        reps = {n: np.empty((depth, n_boot)) for n in having}
        for k in range(depth):
            weights = _counts(rng, n_boot, len(ids))
            for n in having:
                reps[n][k] = metric(aligned[n].labels, aligned[n].scores, weights)
        for n in having:
            out[n][s] = _Scored(float(metric(aligned[n].labels, aligned[n].scores)[0]), reps[n])
    return out


def _difference(x: dict[int, _Scored], y: dict[int, _Scored], n_boot: int, seed: int,
                names: tuple[str, str]) -> Difference:
    seeds = sorted(set(x) & set(y))
    if not seeds:
        raise ValueError(f"{names[0]} and {names[1]} have no seed in common to compare")
    observed = np.mean([x[s].observed - y[s].observed for s in seeds])
    drawn = np.random.default_rng(seed).integers(0, len(seeds), (n_boot, len(seeds)))  # (R, seeds drawn)
    diffs = np.zeros(n_boot)
    for j, s in enumerate(seeds):
        times = (drawn == j).sum(axis=1)  # (R,): how often seed s is drawn in each replicate
        d = x[s].replicates - y[s].replicates  # (S, R)
        diffs += (d * (np.arange(len(d))[:, None] < times[None])).sum(axis=0)
    diffs /= len(seeds)
    p = min(1.0, 2.0 * min(np.mean(diffs <= 0), np.mean(diffs >= 0)))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return Difference(names[0], names[1], float(observed), float(low), float(high), float(p))


def bootstrap_difference(
    a: dict[int, RunPredictions], b: dict[int, RunPredictions], metric: SampleMetric = accuracy,
    n_boot: int = 1000, seed: int = 0, names: tuple[str, str] = ("a", "b"),
) -> Difference:
    """The two-level paired bootstrap of the module docstring for runs ``a`` and ``b`` (seed -> predictions).

    Only seeds both sides have are compared.

    Raises:
        ValueError: no seed in common, or a sample id of one side missing from the other's predictions.
    """
    if not set(a) & set(b):
        raise ValueError(f"{names[0]} and {names[1]} have no seed in common to compare")
    common = sorted(set(a) & set(b))
    scored = _score({"0": {s: a[s] for s in common}, "1": {s: b[s] for s in common}}, metric, n_boot, seed)
    return _difference(scored["0"], scored["1"], n_boot, seed, names)


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


def pairwise(runs: dict[str, dict[int, RunPredictions]], metric: SampleMetric = accuracy, n_boot: int = 1000,
             seed: int = 0) -> list[Difference]:
    """Every pair of configurations (name -> seed -> predictions, in name order) compared on ``metric``
    (``metric(a) - metric(b)``), with Holm-adjusted p-values."""
    names = sorted(runs)
    scored = _score(runs, metric, n_boot, seed)
    out = [_difference(scored[x], scored[y], n_boot, seed, (x, y)) for i, x in enumerate(names) for y in names[i + 1:]]
    for d, p in zip(out, holm([d.p_value for d in out])):
        d.p_holm = p
    return out
