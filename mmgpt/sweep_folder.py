"""A sweep folder is data: what ``mmgpt-compare resume=DIR`` and ``report=DIR`` take from a comparison directory.

A comparison directory may come from another machine. What a resumed comparison runs again is rebuilt from the
overrides it stores (``multirun.yaml``, ``tune/launch.yaml``), the values of its tuning journal's trials and the
sizes of its ``matching.json``; its report is rebuilt from the runs' ``results.json``. Each is checked here as data
before anything is composed, launched or built, and the first value refused is one line naming the file and key.

A stored override is refused when it:

- names code: a ``_target_``/``_args_``/``_partial_`` anywhere in it, ``plugins`` (imports modules), a Hydra
  setting other than the sweep's mode, directory and job subdirectory and a few SLURM resource sizes (refused:
  ``hydra.searchpath``, ``hydra.callbacks``, ``hydra.job.env_set``, logging handlers, launcher ``setup`` lines), a
  command-line flag (``--config-dir``), ``trust_remote_code=true``;
- selects a config group option that is not one of mmgpt's own (``conf/<group>/<option>.yaml``), so an
  ``experiment=`` from an added search path is refused;
- holds an interpolation (``${...}``: a resolver would run when Hydra composes it);
- points a place the run writes (checkpoint ``dirpath``, loggers' ``save_dir``, ``paths.*``, caches,
  ``hydra.sweep.subdir``, ``filename``) outside the sweep folder.

The user may give any of them on the command line (they are appended after the stored ones, unchecked: the
user's own choice). Nothing here imports, composes or resolves anything from the files it checks.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mmgpt import stored_config
from mmgpt.stored_config import CODE_KEYS, StoredConfigError


class SweepFolderError(StoredConfigError):
    """A comparison directory holding a value that a resumed comparison or its report will not take."""


#: Hydra settings a stored override may change (everything else under ``hydra`` is refused).
HYDRA_KEYS = {"hydra.mode", "hydra.sweep.dir", "hydra.sweep.subdir", "hydra.run.dir", "hydra.verbose",
              "hydra.job.chdir"}
#: Launcher settings a stored override may change: resource sizes and names that hold no command and no path.
LAUNCHER_KEYS = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name",
                 "partition", "qos", "comment", "constraint", "exclude", "gres", "cpus_per_gpu", "gpus_per_task",
                 "mem_per_gpu", "mem_per_cpu", "account", "signal_delay_s", "max_num_timeout", "array_parallelism",
                 "n_jobs"}
#: Hydra's own config groups a stored override may select (from mmgpt's ``conf/hydra/<group>``).
HYDRA_GROUPS = {"hydra/launcher"}
#: The last key of a setting that names a directory the run writes into: must lie inside the sweep folder.
DIR_KEYS = {"dirpath", "save_dir", "log_dir", "output_dir", "dir", "cache_dir", "report_dir", "root_dir",
            "default_root_dir", "submitit_folder", "run.dir", "sweep.dir"}
#: The last key of a setting that names a file or folder *below* a written directory: relative, without ``..``
#: (for the loggers also their run ``name``, ``version`` and ``prefix``, which become folders).
NAME_KEYS = {"filename", "subdir"}
LOGGER_NAME_KEYS = {"name", "version", "prefix"}
#: Keys of ``matching.json`` overrides (the sizes ``compare.match`` sets) and of ``results.json`` numbers.
MATCHED_KEYS = {"model.dim", "model.mlp_ratio"}


def _refuse(source: str | Path, where: str, override: str, why: str) -> SweepFolderError:
    return SweepFolderError(f"{source}: {where}: {override!r} {why}; refused (give it on the command line yourself "
                            "if you mean it)")


def _options(override: Any, source: str | Path, where: str, text: str) -> list[Any]:
    """The values of a parsed override: none for a deletion, every choice of a sweep, else its one value."""
    if override.is_delete():
        return []
    if not override.is_sweep_override():
        return [override.value()]
    try:
        return list(override.sweep_iterator())
    except Exception:  # noqa: BLE001 - an interval sweep has no list of values to check
        raise _refuse(source, where, text, "is a sweep whose values cannot be listed") from None


def _group_option_exists(group: str, option: Any) -> bool:
    """Whether ``option`` of config group ``group`` is one of mmgpt's (its YAML file, or a node mmgpt stored)."""
    from hydra.core.config_store import ConfigStore

    from mmgpt.paths import CONFIG_DIR

    if option is None:
        return True  # `group=null`: no option
    if not isinstance(option, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_./-]*", option) or ".." in option:
        return False
    if (CONFIG_DIR / group / f"{option}.yaml").is_file():
        return True
    try:
        return f"{option}.yaml" in ConfigStore.instance().list(group)  # e.g. model/fusion=unimodal_<m> of mmgpt
    except (OSError, ValueError, KeyError):  # Hydra raises IOError for an unknown group
        return False


def _inside(value: Any, sweep_dir: Path) -> bool:
    return isinstance(value, str) and Path(value).is_absolute() and Path(value).resolve().is_relative_to(
        sweep_dir.resolve())


def _below(value: Any) -> bool:
    return isinstance(value, (str, int)) and not Path(str(value)).is_absolute() and ".." not in Path(str(value)).parts


def check_override(override: str, source: str | Path, where: str, sweep_dir: Path) -> None:
    """Refuse the stored override ``override`` (``source``'s ``where``) unless it is data (see the module).

    Raises:
        SweepFolderError: ``<source>: <where>: '<override>' <why>; refused ...``.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if not isinstance(override, str):
        raise _refuse(source, where, str(override), "is not an override string")
    if override.startswith("-"):
        raise _refuse(source, where, override, "is a command-line flag, not an override")
    if "${" in override:
        raise _refuse(source, where, override, "holds an interpolation (a resolver would run)")
    if any(k in override for k in CODE_KEYS):
        raise _refuse(source, where, override, "names code to call")
    try:
        parsed = OverridesParser.create().parse_override(override)
    except HydraException as e:
        raise _refuse(source, where, override, f"is not a valid override ({str(e).splitlines()[0]})") from None
    key = parsed.key_or_group
    values = _options(parsed, source, where, override)
    last = key.rsplit(".", 1)[-1]
    if key == "plugins" or key.startswith(("plugins.", "plugins[")):
        raise _refuse(source, where, override, "imports modules (plugins)")
    if last == "trust_remote_code" and any(v not in (False, None) for v in values):
        raise _refuse(source, where, override, "runs code shipped with a model (trust_remote_code)")
    if key.startswith("hydra/") or ("/" not in key and "." not in key and key != "hydra" and _is_group(key)):
        _check_group(parsed, key, values, override, source, where)
    elif key == "hydra" or key.startswith("hydra."):
        allowed = key in HYDRA_KEYS or (key.startswith("hydra.launcher.") and key.count(".") == 2
                                        and last in LAUNCHER_KEYS)
        if not allowed:
            raise _refuse(source, where, override, "changes a Hydra setting that may run code or write elsewhere "
                          "(search path, callbacks, env_set, logging, launcher commands)")
        if key.startswith("hydra.launcher.") and any(isinstance(v, (dict, list)) for v in values):
            raise _refuse(source, where, override, "sets a launcher option to a structure")
    elif "/" in key:
        _check_group(parsed, key, values, override, source, where)
    _check_paths(key, values, override, source, where, sweep_dir)


def _is_group(key: str) -> bool:
    from mmgpt.paths import CONFIG_DIR

    return (CONFIG_DIR / key).is_dir()


def _check_group(parsed: Any, group: str, values: Sequence[Any], override: str, source: str | Path,
                 where: str) -> None:
    if group.startswith("hydra/") and group not in HYDRA_GROUPS:
        raise _refuse(source, where, override, "selects a Hydra config (logging, sweeper, callbacks)")
    for option in values:
        if not _group_option_exists(group, option):
            raise _refuse(source, where, override, f"selects {option!r}, not one of mmgpt's {group} configs "
                          "(an added search path is not trusted)")


def _check_paths(key: str, values: Sequence[Any], override: str, source: str | Path, where: str,
                 sweep_dir: Path) -> None:
    last = key.rsplit(".", 1)[-1]
    two = ".".join(key.rsplit(".", 2)[-2:])
    if last in DIR_KEYS or two in DIR_KEYS or key.startswith("paths."):
        for value in values:
            if value is not None and not _inside(value, sweep_dir):
                raise _refuse(source, where, override, f"writes outside the sweep folder {sweep_dir}")
    elif last in NAME_KEYS or (key.startswith("logger.") and last in LOGGER_NAME_KEYS):
        for value in values:
            if value is not None and not _below(value):
                raise _refuse(source, where, override, "names a file or folder outside the folder it writes in")


def check_overrides(overrides: Iterable[Any], source: str | Path, where: str, sweep_dir: Path,
                    skip: tuple[str, ...] = ()) -> list[str]:
    """Every stored override of the list at ``source``'s ``where``, checked (:func:`check_override`), except
    those starting with ``skip`` (settings the caller replaces and never passes on)."""
    overrides = stored_config.strings(list(overrides), source, where, shown_only=True, error=SweepFolderError)
    for i, override in enumerate(overrides):
        if not override.startswith(skip) or not skip:
            check_override(override, source, f"{where}[{i}]", sweep_dir)
    return overrides


# ---------------------------------------------------------------------------------------------------------------
# The JSON files a comparison writes: read as data, their shape checked, a malformed one named in one line.


def _number(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; a file that is not one is one line naming it."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SweepFolderError(f"{path}: not a readable JSON file ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise SweepFolderError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _metrics(node: Any, path: Path, where: str) -> None:
    if node is None:
        return
    if not isinstance(node, Mapping) or not all(isinstance(k, str) and _number(v) for k, v in node.items()):
        raise SweepFolderError(f"{path}: {where}: expected a mapping of metric names to numbers, got {node!r}"[:300])


def check_results(results: dict[str, Any], path: Path) -> dict[str, Any]:
    """A run's ``results.json``, its shape checked: ``fusion`` a name, ``seed`` an integer, ``val``/``test`` and
    ``params`` mappings of numbers, timings numbers, ``best_ckpt`` a path."""
    if not isinstance(results.get("fusion"), str):
        raise SweepFolderError(f"{path}: fusion: expected the fusion's name, got {results.get('fusion')!r}")
    seed = results.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise SweepFolderError(f"{path}: seed: expected an integer, got {seed!r}")
    for key in ("val", "test", "params"):
        _metrics(results.get(key), path, key)
    for key in ("wall_time_s", "epochs", "global_step", "train_samples_per_sec", "samples_per_sec",
                "peak_memory_mb"):
        if not _number(results.get(key)):
            raise SweepFolderError(f"{path}: {key}: expected a number, got {results.get(key)!r}")
    if results.get("best_ckpt") is not None and not isinstance(results["best_ckpt"], str):
        raise SweepFolderError(f"{path}: best_ckpt: expected a path, got {results['best_ckpt']!r}")
    return results


def read_results(path: Path) -> dict[str, Any]:
    """A run's ``results.json``, read and checked (:func:`check_results`)."""
    return check_results(read_json_object(path), path)


def read_eval_results(path: Path) -> dict[str, Any]:
    """A run's ``eval_results.json`` (the missing-modality evaluation), read and checked."""
    evaluated = read_json_object(path)
    subsets = evaluated.get("subsets")
    if subsets is not None and not isinstance(subsets, Mapping):
        raise SweepFolderError(f"{path}: subsets: expected a mapping of modality subsets, got {subsets!r}"[:300])
    for name, metrics in (subsets or {}).items():
        _metrics(metrics, path, f"subsets.{name}")
    if evaluated.get("split") not in (None, "val", "test"):
        raise SweepFolderError(f"{path}: split: expected val or test, got {evaluated.get('split')!r}")
    return evaluated


def check_matching(record: Any, path: Path) -> dict[str, Any]:
    """``matching.json`` (``compare.match``): per configuration, the sizes its runs get, numbers of
    ``model.dim``/``model.mlp_ratio`` only (they become overrides of a resumed comparison)."""
    confs = record.get("configurations") if isinstance(record, Mapping) else None
    if not isinstance(confs, Mapping):
        raise SweepFolderError(f"{path}: configurations: expected a mapping of configurations")
    for name, conf in confs.items():
        where = f"configurations.{name}"
        overrides = conf.get("overrides") if isinstance(conf, Mapping) else None
        if not isinstance(overrides, Mapping):
            raise SweepFolderError(f"{path}: {where}.overrides: expected a mapping of sizes")
        for key, value in overrides.items():
            if key not in MATCHED_KEYS:
                raise SweepFolderError(f"{path}: {where}.overrides.{key}: not a size compare.match sets "
                                       f"({', '.join(sorted(MATCHED_KEYS))}); refused")
            if not _number(value) or value is None or not math.isfinite(value) or value <= 0:
                raise SweepFolderError(f"{path}: {where}.overrides.{key}: expected a positive number, got {value!r}")
        for key in ("before", "after", "ratio"):
            if not _number(conf.get(key)):
                raise SweepFolderError(f"{path}: {where}.{key}: expected a number, got {conf.get(key)!r}")
    return dict(record)


def read_matching(path: Path) -> dict[str, Any] | None:
    """``matching.json`` read and checked (:func:`check_matching`); None when absent."""
    return check_matching(read_json_object(path), path) if path.is_file() else None


def check_trial_params(params: Mapping[str, Any], space: Iterable[str], source: Path, where: str,
                       sweep_dir: Path) -> None:
    """A tuning trial's values from the Optuna journal: only keys of the declared search space, each value an
    override that is data (:func:`check_override`)."""
    declared = set(space)
    for key, value in params.items():
        if key not in declared:
            raise SweepFolderError(f"{source}: {where}.{key}: not a key of the search space "
                                   f"(compare.tune.space: {', '.join(sorted(declared))}); refused")
        if not isinstance(value, (str, int, float, bool)) and value is not None:
            raise SweepFolderError(f"{source}: {where}.{key}: expected a number or a name, got {value!r}")
        check_override(f"{key}={value}", source, f"{where}.{key}", sweep_dir)


# ---------------------------------------------------------------------------------------------------------------
# The whole folder, checked once before ``resume=DIR`` launches anything.


def run_dirs(sweep_dir: Path) -> list[Path]:
    """Every directory under ``sweep_dir`` holding a ``results.json``: the runs and the tuning trials."""
    return sorted(p.parent for p in sweep_dir.rglob("results.json") if ".hydra" not in p.parts)


def check_sweep_folder(sweep_dir: Path) -> None:
    """Check what resuming ``sweep_dir`` reads besides its stored overrides: every run's and trial's
    ``config.yaml`` (no interpolation; its data config only mmgpt's datamodules), ``results.json`` and
    ``eval_results.json``, and ``matching.json``.

    Raises:
        SweepFolderError (or :class:`~mmgpt.training.safe_load.CheckpointError` for a data config): the first value
        refused, naming its file and key.
    """
    from mmgpt.training.safe_load import safe_data_config

    for run_dir in run_dirs(sweep_dir):
        saved = stored_config.run_config(run_dir, error=SweepFolderError)
        if saved is not None and saved.get("data") is not None:
            safe_data_config(saved["data"], run_dir / "config.yaml", run_dir, where="data")
        read_results(run_dir / "results.json")
        if (run_dir / "eval_results.json").is_file():
            read_eval_results(run_dir / "eval_results.json")
    read_matching(sweep_dir / "matching.json")


__all__ = ["SweepFolderError", "check_matching", "check_override", "check_overrides", "check_results",
           "check_sweep_folder", "check_trial_params", "read_eval_results", "read_json_object", "read_matching",
           "read_results", "run_dirs"]
