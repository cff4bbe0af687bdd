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
