"""Opening a checkpoint is as safe as opening a data file: the reader and checks behind the one loader every
command goes through (:meth:`mmgpt.training.lit_module.MultimodalModule.load_from_checkpoint`).

A checkpoint is read with ``torch.load(weights_only=True)`` (unpickling runs no code), and what it stores is then
only *described*, never imported: the network, objectives, optimizer and schedule are typed specs of parts that
mmgpt registered (:mod:`mmgpt.registry`), and the stored data config may name only mmgpt's own datamodules. Before
anything is built, every spec is checked; a checkpoint that names anything else is refused with one line naming the
key and the target, and nothing is imported or called. Checkpoints written before the typed spec (``_target_``
import paths) are translated from a fixed table of mmgpt's own class paths; any other path is refused.

Arguments are covered too: ``trust_remote_code`` is refused (forced off for backbone encoders), parts that would
fetch pretrained weights get their ``checkpoint_overrides`` (the checkpoint's state dict supplies the weights), and
data settings that write files (the decode cache, the data report) are pointed into the current run directory.

A user's own registered parts (``mmgpt.registry.register``) load when the user imports their plugin modules
explicitly (``plugins=[...]`` on the command line); a checkpoint never imports anything by itself.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmgpt import registry, stored_config
from mmgpt.errors import CheckpointError
from mmgpt.registry import SpecError
from mmgpt.training.checkpoint_file import read_checkpoint_file
from mmgpt.training.distributed import check_sharded_checkpoint, is_sharded_checkpoint

log = logging.getLogger(__name__)

#: The datamodules a stored data config may name, and the paths older checkpoints stored for them.
DATAMODULES: dict[str, str] = {
    "mmgpt.datamodules.synthetic.SyntheticDataModule": "mmgpt.datamodules.synthetic.SyntheticDataModule",
    "mmgpt.datamodules.manifest.ManifestDataModule": "mmgpt.datamodules.manifest.ManifestDataModule",
    "mmgpt.datamodules.shards.ShardDataModule": "mmgpt.datamodules.shards.ShardDataModule",
    "mmgpt.datamodules.hf.HFDataModule": "mmgpt.datamodules.hf.HFDataModule",
    **{f"mmgpt.datamodules.benchmarks.{name}": f"mmgpt.datamodules.benchmarks.{name}" for name in (
        "MMSADataModule", "AVMNISTDataModule", "MMIMDbDataModule", "HatefulMemesDataModule")},
    "datamodules.synthetic.SyntheticDataModule": "mmgpt.datamodules.synthetic.SyntheticDataModule",
    "datamodules.manifest.ManifestDataModule": "mmgpt.datamodules.manifest.ManifestDataModule",
    "datamodules.shards.ShardDataModule": "mmgpt.datamodules.shards.ShardDataModule",
}

#: Data settings that name places the datamodule writes to; rebuilt from a checkpoint they point into the run dir.
_WRITING_DATA_KEYS = {"cache_dir": "cache", "report_dir": "."}

#: The network class that checkpoints written before the typed spec named at the top of ``net``.
_LEGACY_NETWORK = "mmgpt.model.MultimodalTransformer"

#: The hyperparameters of :class:`~mmgpt.training.lit_module.MultimodalModule` and the kind of spec each holds.
_MODULE_SPECS = {"optimizer": "optimizer", "scheduler": "scheduler"}
_MODULE_PLAIN = {"num_classes", "label_smoothing", "class_names", "eval_generation_batches", "freeze", "lora",
                 "clip_value_each_backward", "drop_incomplete_accumulation", "loss_mean_over", "init"}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load ``path`` with ``weights_only=True``; a missing, non-checkpoint or damaged file is one clear error.

    A folder is a sharded checkpoint (trainer=fsdp): its index and byte entries are checked as data, then its
    ``meta.pt`` is read (loading consolidates the weights)."""
    path = Path(path)
    if path.is_dir():
        if not is_sharded_checkpoint(path):
            found = sorted(path.glob("*.ckpt")) or sorted(path.glob("checkpoints/*.ckpt"))  # a run directory
            found = [p for p in found if p.name.startswith("best")] or found
            hint = f"; a checkpoint file in it: {found[0]}" if found else ""
            raise CheckpointError(f"{path}: a folder, but not a complete sharded checkpoint (.metadata and meta.pt)"
                                  f"{hint}")
        check_sharded_checkpoint(path)
        path = path / "meta.pt"
    return read_checkpoint_file(path)


def module_hparams(ckpt: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """The checkpoint's LightningModule arguments, checked: only registered parts, no unknown keys.

    Raises:
        CheckpointError: naming the key (and the target, for import paths) of the first thing refused.
    """
    hparams = ckpt.get("hyper_parameters")
    if not isinstance(hparams, Mapping) or "net" not in hparams:
        raise CheckpointError(f"{path}: not an mmgpt training checkpoint (no hyper_parameters.net)")
    stored_config.checkpoint_hparams(ckpt, path, error=CheckpointError)  # no interpolation is ever resolved
    out: dict[str, Any] = {}
    try:
        for key, value in hparams.items():
            where = f"hyper_parameters.{key}"
            if key == "net":
                if isinstance(value, Mapping) and value.get("_target_") == _LEGACY_NETWORK:
                    value = {k: v for k, v in value.items() if k != "_target_"}
                spec = registry.NetworkSpec.from_dict(registry.from_legacy(value, where), where)
                spec.check(where)
                out[key] = registry.for_checkpoint(spec.to_dict())
            elif key == "objectives":
                value = registry.from_legacy(value, where)
                for name, obj in (value or {}).items():
                    registry.check_spec(obj, f"{where}.{name}", "objective")
                out[key] = value
            elif key in _MODULE_SPECS:
                value = registry.from_legacy(value, where)
                if value is not None:
                    registry.check_spec(value, where, _MODULE_SPECS[key])
                out[key] = value
            elif key in _MODULE_PLAIN:
                registry.check_spec(value, where)  # no specs or import paths hidden in plain values
                out[key] = value
            else:
                raise SpecError(f"{where}: not an argument of mmgpt's LightningModule; refused")
    except SpecError as e:
        raise CheckpointError(f"{path}: {e}") from e
    return out


def stored_run_config(ckpt: Mapping[str, Any], path: str | Path) -> dict[str, Any] | None:
    """The resolved run config checkpoint ``path`` stores (``checkpoint["mmgpt"]["config"]``), or None; no value
    may be an interpolation (:func:`mmgpt.stored_config.checkpoint_run_config`)."""
    return stored_config.checkpoint_run_config(ckpt, path, error=CheckpointError)


def safe_data_config(data: Mapping[str, Any], source: str | Path, run_dir: str | Path,
                     where: str = "mmgpt.config.data") -> dict[str, Any]:
    """A data config read from a file (a checkpoint, a run directory), checked before it is instantiated.

    Its ``_target_`` must be one of mmgpt's datamodules (:data:`DATAMODULES`, older paths mapped), no other key
    may hold a ``_target_`` or an interpolation, and settings that write files are pointed into ``run_dir``.

    Args:
        data: the stored data config.
        source: the file it was read from, and ``where`` its key there (both named in errors).
        run_dir: where the settings that write files point.
    Raises:
        CheckpointError: naming the file, the key and the target refused.
    """
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{source}: {where}: not a data config")
    target = data.get("_target_")
    if not isinstance(target, str) or target not in DATAMODULES:
        raise CheckpointError(f"{source}: {where}._target_: {target!r} is not one of mmgpt's datamodules; refused "
                              "(nothing was imported or called)")
    out = dict(data)
    out["_target_"] = DATAMODULES[str(target)]
    stored_config.check({k: v for k, v in out.items() if k != "_target_"}, source, where, error=CheckpointError)
    for key, sub in _WRITING_DATA_KEYS.items():
        if out.get(key) is not None:
            out[key] = str(Path(run_dir) / sub)
    return out

