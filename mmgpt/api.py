"""mmgpt from Python: :func:`train`, :func:`evaluate` and :func:`compare` run what ``mmgpt-train``, ``mmgpt-eval``
and ``mmgpt-compare`` run, and return their results as dataclasses (docs/api.md walks through them).

Each call composes ``conf/<train|eval>.yaml`` with Hydra exactly as the command does, in a run directory of the
same name and with the same files (``.hydra/``, the ``<job>.log``, ``results.json``...): the overrides are the
command line's, and keyword options are more overrides (``seed=1``, ``trainer={"max_epochs": 2}`` ->
``seed=1 trainer.max_epochs=2``). Lightning and Hydra are imported when a function is called, not by
``import mmgpt``. Runs that launch processes of their own (``trainer=ddp_sim``, SLURM) are for the commands.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from mmgpt.predictor import Predictor

__all__ = ["Comparison", "EvalResults", "Results", "compare", "evaluate", "load", "overrides_of", "train"]


@dataclass(frozen=True)
class Results:
    """A training run, as its ``results.json`` says.

    Attributes:
        run_dir: the run directory (``config.yaml``, ``metrics.csv``, checkpoints, predictions).
        val: the best checkpoint's validation metrics (``{"val/acc": ...}``).
        test: its test metrics (empty without a test split or with ``test=false``).
        best_checkpoint: the best checkpoint, for :func:`mmgpt.load`, :func:`evaluate` or ``mmgpt-export``.
        fusion: the fusion option (``early``...); seed: the run's seed.
        stamp: the run stamp (commit, versions, command, host, devices).
        data: everything ``results.json`` holds (parameter counts, throughput, memory...).
    """

    run_dir: Path
    val: dict[str, float]
    test: dict[str, float]
    best_checkpoint: Path | None
    fusion: str
    seed: int
    stamp: dict[str, Any]
    data: dict[str, Any] = field(repr=False)

    @classmethod
    def of(cls, results: Mapping[str, Any], run_dir: str | Path | None = None) -> Results:
        """From the dict :func:`mmgpt.cli.train.train` returns (or a ``results.json`` read back)."""
        best = results.get("best_ckpt")
        return cls(run_dir=Path(run_dir or results["run_dir"]), val=dict(results.get("val") or {}),
                   test=dict(results.get("test") or {}), best_checkpoint=Path(best) if best else None,
                   fusion=str(results.get("fusion")), seed=int(results.get("seed", 0)),
                   stamp=dict(results.get("stamp") or {}), data=dict(results))

    @classmethod
    def read(cls, run_dir: str | Path) -> Results:
        """The results of a finished run directory."""
        return cls.of(json.loads((Path(run_dir) / "results.json").read_text()), run_dir)


@dataclass(frozen=True)
class EvalResults:
    """An evaluation (``eval_results.json``): metrics on all modalities and on every subset of them.

    Attributes:
        run_dir: the evaluation's directory; checkpoint: what was evaluated; split: ``val`` or ``test``.
        metrics: ``{"val/acc": ...}``; subsets: ``{"audio+image": {"acc": ...}, ...}`` (empty with ``subsets=false``).
        predictions: the per-sample predictions file (ids, labels, scores, logits), when the task has classes.
    """

    run_dir: Path
    checkpoint: Path
    split: str
    metrics: dict[str, float]
    subsets: dict[str, dict[str, float]]
    predictions: Path | None
    stamp: dict[str, Any]


@dataclass(frozen=True)
class Comparison:
    """A comparison (``mmgpt-compare``): its directory, report and runs.

    Attributes:
        sweep_dir: the comparison's directory; report: its ``report.md``.
        table: ``report.csv``'s rows (one per configuration, best first), as strings.
        runs: every run of the comparison.
    """

    sweep_dir: Path
    report: Path
    table: list[dict[str, str]]
    runs: list[Results]


# -- overrides ---------------------------------------------------------------------------------------------------------
_BARE = re.compile(r"^[\w./:@+\-]*$")  # a value Hydra's override grammar reads as the same string, unquoted


def _value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        if _BARE.match(value) and value not in ("null", "true", "false") and not _number(value):
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    raise TypeError(f"option value {value!r}: expected a str, number, bool, None, path, list or dict")


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def overrides_of(overrides: Sequence[str] | None, options: Mapping[str, Any]) -> list[str]:
    """The command line of a call: ``overrides`` as given, then ``options`` as ``key=value`` (nested dicts give
    dotted keys: ``trainer={"max_epochs": 2}`` -> ``trainer.max_epochs=2``; a key with ``/`` chooses a config group:
    ``**{"model/fusion": "late"}``)."""
    if isinstance(overrides, str):
        raise TypeError("overrides: a list of strings, e.g. ['model/fusion=late'], not one string")
    out = [str(o) for o in overrides or ()]

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, sub in value.items():
                add(f"{prefix}.{key}", sub)
        else:
            out.append(f"{prefix}={_value(value)}")

    for key, value in options.items():
        add(key, value)
    return out


# -- running a command's Hydra app in this process ---------------------------------------------------------------------
def _run_app(config_name: str, job_name: str, args: list[str], task: Callable[[Any], Any], api: str) -> Any:
    """Compose ``conf/<config_name>.yaml`` with ``args`` and run ``task(cfg)`` as Hydra's app does (run directory,
    ``.hydra/`` files, job logging), recording ``mmgpt.<api> args`` as the run's command line."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import mmgpt.cli  # noqa: F401  (registers the schemas and resolvers)
    from mmgpt.cli.common import logging_restored
    from mmgpt.config import CONFIG_DIR
    from mmgpt.stamp import command_line

    with logging_restored(), command_line([f"mmgpt.{api}", *args]), initialize_config_dir(
            config_dir=str(CONFIG_DIR), version_base="1.3", job_name=job_name):
        hydra = GlobalHydra.instance().hydra
        assert hydra is not None
        return hydra.run(config_name=config_name, task_function=task, overrides=args).return_value


def train(overrides: Sequence[str] | None = None, **options: Any) -> Results:
    """Train as ``mmgpt-train <overrides>`` does (same config, run directory and files) and return the results.

    Args:
        overrides: Hydra overrides, as on the command line (``["model/fusion=late", "encoders.text=hf:DIR"]``).
        options: more overrides as keywords (``seed=1``, ``trainer={"max_epochs": 2}``).

    Raises:
        mmgpt.errors.UserError: a config or data problem (the command prints the same as one line).
    """
    from mmgpt.cli.train import train as run

    results = _run_app("train", "train", overrides_of(overrides, options), run, "train")
    return Results.of(results)


def evaluate(overrides: Sequence[str] | None = None, **options: Any) -> EvalResults:
    """Evaluate a checkpoint as ``mmgpt-eval`` does: ``evaluate(ckpt_path=results.best_checkpoint, split="test")``.

    The metrics on all modalities, on every subset of them, and the per-sample predictions are written into the
    evaluation's directory.
    """
    from mmgpt.cli.evaluate import evaluate as run

    def task(cfg: Any) -> tuple[dict[str, Any], Path]:
        return run(cfg), Path(cfg.paths.output_dir)

    results, run_dir = _run_app("eval", "evaluate", overrides_of(overrides, options), task, "evaluate")
    predictions = run_dir / f"predictions_{results['split']}.npz"
    return EvalResults(run_dir=run_dir, checkpoint=Path(results["ckpt_path"]), split=str(results["split"]),
                       metrics=dict(results["metrics"]), subsets=dict(results.get("subsets") or {}),
                       predictions=predictions if predictions.is_file() else None,
                       stamp=dict(results.get("stamp") or {}))


def compare(overrides: Sequence[str] | None = None, **options: Any) -> Comparison:
    """Run a comparison as ``mmgpt-compare <overrides>`` does (``report=DIR``, ``resume=DIR`` and ``tune=N``
    included) and return its report and runs: ``compare(["model/fusion=early,late", "seed=0,1"])``.

    The command's own arguments choose one of the plain functions of :mod:`mmgpt.cli.compare` (``sweep``, ``tune``,
    ``resume``, ``report``; ``run_one`` runs a single job); call them directly for one step at a time."""
    from mmgpt.cli import compare as cmd
    from mmgpt.report.runs import find_run_dirs
    from mmgpt.stamp import command_line

    args = overrides_of(overrides, options)
    with command_line(["mmgpt.compare", *args]):
        sweep_dir = cmd.run(args)  # the command's arguments choose cmd.sweep / tune / resume / report
    with (sweep_dir / "report.csv").open(newline="") as f:
        table = list(csv.DictReader(f))
    return Comparison(sweep_dir=sweep_dir, report=sweep_dir / "report.md", table=table,
                      runs=[Results.read(d) for d in find_run_dirs(sweep_dir)])


def load(path: str | Path, *, device: str | torch.device = "cpu", plugins: Sequence[str] = ()) -> Predictor:
    """A :class:`Predictor` from a checkpoint (``.ckpt``, or a sharded checkpoint's folder) or a folder written by
    ``mmgpt-export``, opened by the same safe loader as ``mmgpt-eval``: nothing it names is imported.

    Args:
        path: the checkpoint or exported folder.
        device: where the model runs.
        plugins: your modules that register parts the model uses (imported here, by your choice).
    """
    path = Path(path)
    if path.is_dir() and (path / "mmgpt.json").is_file():
        from mmgpt.exported import load_exported

        return load_exported(path, device=device, plugins=plugins)
    if path.is_dir():
        from mmgpt.training.distributed import is_sharded_checkpoint

        if not is_sharded_checkpoint(path):
            from mmgpt.exported import ExportError

            raise ExportError(f"{path}: a folder, but neither an mmgpt export (its mmgpt.json is missing) nor a "
                              "sharded checkpoint (.metadata and meta.pt)")
    from mmgpt.cli.generate import media_processors
    from mmgpt.predictor import Predictor, task_of
    from mmgpt.training.lit_module import MultimodalModule
    from mmgpt.training.safe_load import read_checkpoint, stored_run_config

    module = MultimodalModule.load_from_checkpoint(path, map_location="cpu", plugins=list(plugins))
    data_cfg = (stored_run_config(read_checkpoint(path), path) or {}).get("data") or {}
    processors = media_processors(module.net, module.hparams["net"], data_cfg)
    task, threshold = task_of(module.hparams.get("objectives"))
    return Predictor(module.net.to(device), processors, module.hparams.get("class_names") or [], task=task,
                     threshold=threshold, source=path)
