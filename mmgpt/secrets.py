"""Credentials stay out of everything a run writes: config.yaml, .hydra/, loggers' hyperparameters, checkpoints.

Object-store credentials may be given in ``data.storage_options``; the transport (fsspec) uses them, and every
place that records a config drops them first (a later ``mmgpt-eval`` finds them where the training run's transport
did: the environment, ``~/.aws``).
"""

from __future__ import annotations

import re
from typing import Any

#: Names of options under a ``storage_options`` node (``data.storage_options``) that hold credentials.
SECRET_OPTION = re.compile(r"key|secret|token|password|credential", re.IGNORECASE)


def is_secret_key(path: str) -> bool:
    """Whether the dotted config key ``path`` is a credential (``data.storage_options.secret``...)."""
    parts = path.lstrip("+~").split(".")
    if "storage_options" not in parts[:-1]:
        return False
    return any(SECRET_OPTION.search(p) for p in parts[parts.index("storage_options") + 1 :])


def redacted(config: Any, inside: bool = False) -> Any:
    """``config`` (plain containers) without the credentials under any ``storage_options`` node, so that a run's
    ``config.yaml``, its loggers' hyperparameters and its checkpoints never hold them (mmgpt-eval finds them
    again where the training run's transport did: environment, ``~/.aws``)."""
    if isinstance(config, dict):
        return {k: redacted(v, inside or k == "storage_options") for k, v in config.items()
                if not (inside and SECRET_OPTION.search(str(k)))}
    if isinstance(config, list):
        return [redacted(v, inside) for v in config]
    return config


#: What a credential's value is replaced with where it appears in text (a command line, Hydra's records).
REDACTED = "REDACTED"


def secret_values(config: Any, inside: bool = False) -> set[str]:
    """The values (text of four characters or more) of the credentials under any ``storage_options`` node of
    ``config`` (plain containers): what :func:`scrub` removes from text that records the command line."""
    found: set[str] = set()
    if isinstance(config, dict):
        for k, v in config.items():
            if inside and SECRET_OPTION.search(str(k)):
                found |= {s for s in _strings(v) if len(s) >= 4}
            else:
                found |= secret_values(v, inside or k == "storage_options")
    elif isinstance(config, list):
        for v in config:
            found |= secret_values(v, inside)
    return found


def config_secrets(cfg: Any) -> set[str]:
    """:func:`secret_values` of an OmegaConf config, as given (an override's text) and resolved."""
    from omegaconf import OmegaConf

    found = secret_values(OmegaConf.to_container(cfg, resolve=False))
    try:
        found |= secret_values(OmegaConf.to_container(cfg, resolve=True))
    except Exception:  # noqa: BLE001 - a value that does not resolve here holds no resolved secret either
        pass
    return found


def scrub(node: Any, values: set[str]) -> Any:
    """``node`` (text or plain containers) with every occurrence of the credentials ``values`` replaced by
    :data:`REDACTED`: the command line in a run stamp, Hydra's ``overrides.yaml`` and ``hydra.yaml``, where a
    ``'data.storage_options={key: ..., secret: ...}'`` override is recorded as typed."""
    if not values:
        return node
    if isinstance(node, str):
        for value in sorted(values, key=len, reverse=True):
            node = node.replace(value, REDACTED)
        return node
    if isinstance(node, dict):
        return {scrub(k, values): scrub(v, values) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [scrub(v, values) for v in node]
    return node


def _strings(node: Any) -> set[str]:
    if isinstance(node, str):
        return {node}
    if isinstance(node, dict):
        return set().union(*(_strings(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_strings(v) for v in node)) if node else set()
    return set()
