"""A config read back from disk is data: the one reader of every stored config, interpolations never resolved.

A stored config is anything mmgpt reads back that a config once produced: a checkpoint's module arguments
(``hyper_parameters``) and run config (``checkpoint["mmgpt"]``), a run directory's ``config.yaml``, Hydra's records
``.hydra/config.yaml``, ``.hydra/overrides.yaml`` and a sweep's ``multirun.yaml``, a tuned comparison's
``tune/launch.yaml``. Such a file may come from another machine, so reading it must be as safe as reading a CSV:

- YAML is parsed by OmegaConf's safe loader into plain Python containers, and nothing is resolved: an
  OmegaConf interpolation (``${...}``: ``${oc.create:...}``, ``${oc.env:NAME}``, a custom resolver, a reference to
  another key) is never evaluated. A value that holds one is refused with one line naming the file and the key: a
  run's own files store resolved values (``config.yaml`` is saved resolved), so an interpolation there was put
  there by someone else. Hydra's records (``.hydra/config.yaml``, ``multirun.yaml``) hold Hydra's own unresolved
  defaults; only the keys mmgpt reads from them are taken (:func:`select`), and those are checked.
- Hydra's instantiation keys (``_target_``, ``_args_``, ``_partial_``) are refused unless the caller says the
  subtree may name code (a whole run config does: its trainer and loggers; the caller then checks the sections it
  builds, e.g. :func:`mmgpt.training.safe_load.safe_data_config` for the data).

The checked result is a plain ``dict``/``list`` tree: handing it to ``OmegaConf.create`` or ``instantiate`` later
cannot resolve anything, since no string in it is an interpolation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmgpt.errors import UserError

#: Hydra's instantiation keys: a stored value that holds one would name code to call.
CODE_KEYS = ("_target_", "_args_", "_partial_")


class StoredConfigError(UserError):
    """A stored config (a checkpoint's, a run's or a sweep's) holding something that is not plain data."""


def is_interpolation(value: Any) -> bool:
    """Whether OmegaConf would resolve ``value`` (a string holding ``${``, escaped or not: refused either way)."""
    return isinstance(value, str) and "${" in value


def join(where: str, key: Any) -> str:
    """``where.key`` (``key`` alone when ``where`` is empty)."""
    return f"{where}.{key}" if where else str(key)


def check(node: Any, source: str | Path, where: str = "", *, code: bool = False,
          error: type[UserError] = StoredConfigError) -> Any:
    """Check the stored tree ``node`` (read from ``source``, at key ``where``) as data; return it unchanged.

    Args:
        node: a plain tree of mappings, lists and scalars.
        source: the file it was read from (named in the error).
        where: the key path of ``node`` in that file.
        code: allow Hydra's instantiation keys (the caller checks what it builds from them).
        error: the exception raised (a :class:`~mmgpt.errors.UserError`).
    Raises:
        error: ``<source>: <key>: ...`` for the first interpolation, or instantiation key when not allowed.
    """
    if isinstance(node, Mapping):
        for key, value in node.items():
            here = join(where, key)
            if is_interpolation(key):
                raise error(f"{source}: {here}: an interpolation as a key; a stored config is data (refused)")
            if not code and key in CODE_KEYS:
                raise error(f"{source}: {here}: {value!r} refused (a stored config may not name code to call; "
                            "nothing was imported or called)")
            check(value, source, here, code=code, error=error)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            check(value, source, f"{where}[{i}]", code=code, error=error)
    elif is_interpolation(node):
        raise error(f"{source}: {where or 'value'}: {node!r} is an interpolation; a stored config is data and is "
                    "never resolved (refused; nothing was evaluated)")
    return node


def load(path: str | Path, error: type[UserError] = StoredConfigError) -> Any:
    """The YAML file ``path`` as plain containers, nothing resolved and nothing checked yet (see :func:`select`,
    :func:`load_checked`); a missing or malformed file is one line naming it."""
    from omegaconf import OmegaConf

    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such file")
    try:
        cfg = OmegaConf.load(path)
        return OmegaConf.to_container(cfg, resolve=False)
    except Exception as e:  # noqa: BLE001 - YAML and OmegaConf errors of every kind mean "not a config file"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise error(f"{path}: not a readable YAML config ({first})") from None


def load_checked(path: str | Path, *, code: bool = False, kind: type = dict,
                 error: type[UserError] = StoredConfigError) -> Any:
    """The YAML file ``path`` (a mapping, or a list with ``kind=list``), every value checked (:func:`check`)."""
    node = load(path, error)
    if not isinstance(node, kind):
        raise error(f"{path}: expected a {'mapping' if kind is dict else 'list'}, got a {type(node).__name__}")
    return check(node, path, code=code, error=error)


#: A whole value that only refers to another key of the same file (``${primary_metric.name}``): no resolver.
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\}")


def select(node: Any, key: str, source: str | Path, *, code: bool = False, default: Any = None,
           shown_only: bool = False, references: bool = False, error: type[UserError] = StoredConfigError) -> Any:
    """The value at the dotted ``key`` of a loaded tree (``default`` when absent), checked (:func:`check`).

    Args:
        shown_only: the value is only shown (a report's command line), never used as config, so it is not
            checked: it stays text (an interpolation in it is printed, never resolved).
        references: for Hydra's unresolved records (``multirun.yaml``, ``.hydra/config.yaml``): a value that is
            exactly a reference to another key of the same file (``${primary_metric.name}``) is looked up in the
            tree, as plain data (no resolver runs); any other interpolation is still refused.
    """
    value, seen = _lookup(node, key, default), {key}
    while references and isinstance(value, str) and (ref := _REFERENCE.fullmatch(value)) and ref[1] not in seen:
        seen.add(ref[1])
        value = _lookup(node, ref[1], default)
    return value if shown_only else check(value, source, key, code=code, error=error)


def _lookup(node: Any, key: str, default: Any) -> Any:
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def strings(node: Any, source: str | Path, where: str, *, shown_only: bool = False,
            error: type[UserError] = StoredConfigError) -> list[str]:
    """A stored list of strings (overrides), each checked for interpolations unless ``shown_only`` (see
    :func:`select`); anything but a list of strings is one line naming the key."""
    if not isinstance(node, list) or not all(isinstance(s, str) for s in node):
        raise error(f"{source}: {where}: expected a list of strings, got {node!r}"[:300])
    return node if shown_only else check(node, source, where, code=True, error=error)


def checkpoint_hparams(ckpt: Mapping[str, Any], path: str | Path, error: type[UserError] = StoredConfigError) -> Any:
    """A checkpoint's ``hyper_parameters`` with every value checked for interpolations (its specs are checked
    against the registry by :func:`mmgpt.training.safe_load.module_hparams`)."""
    return check(ckpt.get("hyper_parameters"), path, "hyper_parameters", code=True, error=error)


def checkpoint_run_config(ckpt: Mapping[str, Any], path: str | Path,
                          error: type[UserError] = StoredConfigError) -> dict[str, Any] | None:
    """The resolved run config a checkpoint stores (``checkpoint["mmgpt"]["config"]``), or None; no value may be
    an interpolation (a run stores it resolved). It names code (its trainer, callbacks, loggers): build nothing
    from it unchecked (the data: :func:`mmgpt.training.safe_load.safe_data_config`)."""
    meta = ckpt.get("mmgpt")
    if meta is None:
        return None
    if not isinstance(meta, Mapping):
        raise error(f"{path}: mmgpt: expected a mapping, got a {type(meta).__name__}")
    config = meta.get("config")
    if config is not None and not isinstance(config, Mapping):
        raise error(f"{path}: mmgpt.config: expected a mapping, got a {type(config).__name__}")
    return check(config, path, "mmgpt.config", code=True, error=error)


def checkpoint_string(ckpt: Mapping[str, Any], key: str, path: str | Path,
                      error: type[UserError] = StoredConfigError) -> str | None:
    """A plain string a checkpoint records under ``mmgpt.<key>`` (the wandb run id), or None; checked."""
    meta = ckpt.get("mmgpt") or {}
    if not isinstance(meta, Mapping):
        raise error(f"{path}: mmgpt: expected a mapping, got a {type(meta).__name__}")
    value = meta.get(key)
    if value is not None and not isinstance(value, str):
        raise error(f"{path}: mmgpt.{key}: expected a string, got a {type(value).__name__}")
    return check(value, path, f"mmgpt.{key}", error=error)


def run_config(run_dir: str | Path, error: type[UserError] = StoredConfigError) -> dict[str, Any] | None:
    """A run directory's ``config.yaml`` (saved resolved by ``mmgpt-train``), checked; None when absent."""
    path = Path(run_dir) / "config.yaml"
    return load_checked(path, code=True, error=error) if path.is_file() else None


def hydra_overrides(run_dir: str | Path, error: type[UserError] = StoredConfigError) -> list[str]:
    """The task overrides Hydra recorded for a run (``.hydra/overrides.yaml``) as text, to show and group runs by
    (never parsed or resolved: a user's ``${...}`` in one stays text); empty when absent."""
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    return strings(load(path, error), path, "overrides", shown_only=True, error=error) if path.is_file() else []


__all__ = ["CODE_KEYS", "StoredConfigError", "check", "checkpoint_hparams", "checkpoint_run_config",
           "checkpoint_string", "hydra_overrides", "is_interpolation", "load", "load_checked", "run_config",
           "select", "strings"]
