"""Command-line entry points: thin Hydra apps around plain functions.

The edge of the library: the only place Hydra composes configs and ``instantiate`` runs (on the user's own data,
trainer, callbacks and loggers). They wire ``mmgpt.datamodules``, the network (through :mod:`mmgpt.registry`) and
``mmgpt.training`` together; nothing imports from here except the tests.
"""

import logging
import os
import warnings
from datetime import datetime

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from mmgpt.cli.slurm import register_resolvers as register_slurm_resolvers
from mmgpt.config import CONFIG_DIR, register_schemas


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


class _NoAdverts(logging.Filter):
    """Drops Lightning's "Tip: try installing <product>" lines from run output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).lstrip().startswith("\N{ELECTRIC LIGHT BULB} Tip:")


def quiet_lightning() -> None:
    """Run output without Lightning's advert lines and its known deprecation notice (not ours to fix)."""
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)  # where Lightning's rank_zero_info records are made
        if not any(isinstance(f, _NoAdverts) for f in logger.filters):
            logger.addFilter(_NoAdverts())
    # pytorch_lightning/utilities/_pytree.py on torch >= 2.10; fixed upstream, harmless here
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")


def with_baselines(fusions: str, baselines: bool, modalities: list[str]) -> str:
    """``mmgpt-compare``'s sweep of ``model/fusion``: the fusions, plus ``unimodal_<m>`` per modality if asked.

    A modality without its own ``conf/model/fusion/unimodal_<m>.yaml`` (any name a data set declares) gets one
    in Hydra's config store, so the sweep's jobs (composed in this process) find it.
    """
    extra = [f"unimodal_{m}" for m in sorted(modalities)] if baselines else []
    for m in sorted(modalities) if baselines else []:
        if not (CONFIG_DIR / "model" / "fusion" / f"unimodal_{m}.yaml").is_file():
            ConfigStore.instance().store(group="model/fusion", name=f"unimodal_{m}",
                                         node={"type": "unimodal", "modalities": [m], "dim": "${model.dim}"})
    return ",".join([*fusions.split(","), *(b for b in extra if b not in fusions.split(","))])


OmegaConf.register_new_resolver("mmgpt_run_id", run_id, use_cache=True, replace=True)
OmegaConf.register_new_resolver("mmgpt_with_baselines", with_baselines, replace=True)
register_schemas()
register_slurm_resolvers()  # conf/hydra/launcher/slurm*.yaml: the job's resources from the trainer
quiet_lightning()
