"""The tuning of a comparison (``mmgpt-compare tune=N``) as the report shows it, read from ``tuning.json``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmgpt.report.runs import TUNING
from mmgpt.sweep_folder import SweepFolderError, read_json_object


@dataclass(frozen=True)
class Tuning:
    """What ``tuning.json`` records.

    Attributes:
        trials: the budget: trials per configuration.
        metric: the selection metric (``val/acc``); ``direction``: ``maximize`` or ``minimize``.
        seed: the seed every trial trained with.
        space: the declared search space, key -> range.
        sampler: how values were drawn, in words.
        configurations: per configuration (fusion or baseline): ``trials``, ``best_value``, ``best_trial``,
            ``best_params``, ``not_tuned`` and ``all_trials``.
    """

    trials: int
    metric: str
    direction: str
    seed: int
    space: dict[str, dict[str, Any]]
    sampler: str
    configurations: dict[str, dict[str, Any]]


def read_tuning(root: Path) -> Tuning | None:
    """The :class:`Tuning` of a comparison directory; None when the comparison was not tuned."""
    path = root / TUNING
    if not path.is_file():
        return None
    data = read_json_object(path)  # data from the comparison directory: a malformed file is one line
    try:
        return Tuning(trials=int(data["trials_per_configuration"]), metric=str(data["metric"]),
                      direction=str(data["direction"]), seed=int(data["seed"]), space=dict(data["space"]),
                      sampler=str(data["sampler"]), configurations=dict(data["configurations"]))
    except (KeyError, TypeError, ValueError) as e:
        raise SweepFolderError(f"{path}: missing or malformed {type(e).__name__}: {e}") from None


def _range(spec: dict[str, Any]) -> str:
    if "choices" in spec:
        return "{" + ", ".join(map(str, spec["choices"])) + "}"
    kind = "integer" if spec.get("int") else "log-uniform" if spec.get("log") else "uniform"
    return f"[{spec['low']}, {spec['high']}] {kind}"


def _value(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def tuning_rows(tuning: Tuning) -> list[dict[str, str]]:
    """Every trial of every configuration, one row each (``trials.csv``)."""
    keys = sorted(tuning.space)
    rows = []
    for name, conf in sorted(tuning.configurations.items()):
        for t in conf["all_trials"]:
            rows.append({"configuration": name, "trial": str(t["number"]), "state": t["state"],
                         "interrupted": str(t["interrupted"]).lower(),
                         tuning.metric: "" if t["value"] is None else repr(float(t["value"])),
                         **{k: "" if k not in t["params"] else str(t["params"][k]) for k in keys},
                         "run_dir": t["run_dir"]})
    return rows


def tuning_markdown(tuning: Tuning) -> list[str]:
    """The Methods paragraph and tables on the tuning: budget, search space, each configuration's choice."""
    lines = [
        f"Every configuration had the same budget of **{tuning.trials} trials**: training runs on seed "
        f"{tuning.seed} with values drawn from the search space below by {tuning.sampler}. Each configuration's "
        f"values are those of its trial with the {'highest' if tuning.direction == 'maximize' else 'lowest'} "
        f"{tuning.metric} (best checkpoint); the seeds then ran on them. The test split played no part in the "
        f"choice. The validation figures of the seed-{tuning.seed} runs are therefore optimistic; test figures "
        "are not. Trials interrupted and run again do not count against the budget. Every trial: `trials.csv`, "
        "`tuning.json`; their runs: `tune/<configuration>/trial<k>/`.",
        "",
        "| hyperparameter | range |",
        "|---|---|",
        *(f"| `{k}` | {_range(s)} |" for k, s in sorted(tuning.space.items())),
        "",
        f"| configuration | trials | best {tuning.metric} (trial) | chosen values | not tuned (absent) |",
        "|---|---|---|---|---|",
    ]
    for name, conf in sorted(tuning.configurations.items()):
        chosen = ", ".join(f"`{k.rsplit('.', 1)[-1]}`={_value(v)}" for k, v in sorted(conf["best_params"].items()))
        lines.append(f"| {name} | {conf['trials']} | {conf['best_value']:.4f} ({conf['best_trial']}) | {chosen} | "
                     f"{', '.join(conf['not_tuned']) or '-'} |")
    return lines
