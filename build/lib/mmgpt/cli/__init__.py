"""Command-line entry points: thin Hydra apps around plain functions."""

import os
from datetime import datetime

from omegaconf import OmegaConf

from mmgpt.config import register_schemas


def run_id() -> str:
    """A run directory name that every process of one launch agrees on.

    Under ``torchrun`` each process composes its own config, so a timestamp would differ between them; the
    rendezvous id (``--rdzv-id``, random with ``--standalone``) is shared, so all ranks write to one directory.
    Otherwise: the start time with microseconds, so runs started in the same second never collide.
    """
    elastic = os.environ.get("TORCHELASTIC_RUN_ID")
    if elastic and elastic != "none":
        return f"torchrun-{elastic}"
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")


register_schemas()
OmegaConf.register_new_resolver("mmgpt_run_id", run_id, use_cache=True, replace=True)
