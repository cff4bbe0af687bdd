"""Experiment-tracking helpers that Hydra configs point at."""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)


def wandb_logger(project: str, save_dir: str, name: str | None = None, group: str | None = None,
                 tags: list[str] | None = None, id: str | None = None, **kwargs: Any):
    """A Lightning ``WandbLogger`` that runs offline unless the user has configured wandb.

    Offline mode is chosen when neither ``WANDB_MODE`` nor ``WANDB_API_KEY`` is set, so nothing tries to reach
    the network by surprise; ``wandb sync <save_dir>/wandb/offline-run-*`` uploads such runs later.
    Inside a Hydra multirun, ``group=None`` means the sweep's group (:func:`mmgpt.tracking.sweep_group`), so the
    runs of one sweep (e.g. one ``mmgpt-compare``) sit together.
    """
    from pytorch_lightning.loggers import WandbLogger

    from mmgpt.tracking import sweep_group

    group = group or sweep_group()

    offline = "WANDB_MODE" not in os.environ and "WANDB_API_KEY" not in os.environ
    if offline:
        log.info("wandb: offline mode (set WANDB_MODE=online or WANDB_API_KEY to upload live)")
    os.makedirs(save_dir, exist_ok=True)
    if id is not None:
        kwargs.setdefault("resume", "allow")  # a resumed training run continues its wandb run
    return WandbLogger(project=project, save_dir=save_dir, name=name, group=group, tags=list(tags or []), id=id,
                       offline=offline, log_model=False, **kwargs)
