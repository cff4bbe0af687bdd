"""Hugging Face data sets as mmgpt data: ``data=hf`` (see :mod:`mmgpt.datamodules.hf.datamodule`).

The names are imported on first use, so that ``mmgpt-data check`` on a manifest folder (which asks
:mod:`.check` whether a path is Hugging Face data) needs neither pyarrow nor ``datasets``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["HFDataError", "HFDataModule", "open_source"]
_WHERE = {"HFDataModule": "datamodule", "HFDataError": "source", "open_source": "source"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"mmgpt.datamodules.hf.{_WHERE[name]}"), name)
    raise AttributeError(name)
