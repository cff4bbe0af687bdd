"""Slim checkpoints: a pretrained backbone's unchanged weights are not written, its identity is.

A checkpoint of a network with a frozen (or LoRA-tuned, or partly unfrozen) backbone would otherwise carry the
whole backbone every time it is saved. Instead, every backbone tensor that is still exactly what was read from the
backbone's ``name_or_path`` is left out of ``state_dict``, and ``checkpoint["backbones"]`` records, per backbone
encoder, the identity it was read from (``name_or_path``, ``sha256``) and the names of the tensors left out::

    {"net.encoders.text": {"name_or_path": "bert-base-uncased", "sha256": "9f2c...", "omitted": ["net.enc...", ...]}}

"Still exactly what was read" means: a tensor training does not update (a parameter without gradients, a buffer
of the part held in eval mode) whose fingerprint (:func:`mmgpt.encoders.tuning.fingerprint`, exact integer sums
of its bits, the same on CPU and GPU) is the one noted right after loading. So frozen weights, LoRA base weights
and the frozen layers below ``unfreeze_last`` are left out; projections, adapters and unfrozen layers are stored,
and so are frozen weights changed since loading (an ``init_from`` checkpoint loaded over the backbone). Optimizer
version counters cannot decide it: fused optimizers update parameters without bumping them.

Loading (:func:`restore`: resume through Lightning, ``mmgpt-eval`` / ``mmgpt-generate``
through :mod:`mmgpt.training.safe_load`) rebuilds the network, whose encoders re-read their backbones, checks each
backbone's hash against the recorded one (refusing a different one, naming it), and loads the stored tensors over
the re-read ones: the module is then exactly the one that was saved, so resuming is exact.

A backbone whose identity has no content hash (timm's own pretrained or random weights, ``sha256: unverified``) is
written whole: there is nothing to check a re-read against. Sharded (FSDP2) checkpoints are written whole too:
they are already split per rank, and torch.distributed.checkpoint loads into the full set of keys.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

from torch import nn

from mmgpt.encoders.backbone import BackboneEncoder
from mmgpt.encoders.tuning import fingerprint, frozen_state
from mmgpt.errors import CheckpointError

log = logging.getLogger(__name__)

#: The checkpoint key holding each slimmed backbone's identity and omitted tensor names.
CKPT_KEY = "backbones"


def backbone_encoders(module: nn.Module) -> dict[str, BackboneEncoder]:
    """Qualified name -> backbone encoder, for every :class:`BackboneEncoder` under ``module``."""
    return {name: m for name, m in module.named_modules() if isinstance(m, BackboneEncoder)}


def unchanged_keys(name: str, encoder: BackboneEncoder) -> list[str]:
    """State-dict keys (qualified by ``name``) of the frozen backbone tensors that still hold what was read from
    the backbone's files (the fingerprints :func:`mmgpt.encoders.tuning.record_loaded` noted)."""
    loaded: Mapping[str, tuple[int, ...]] = getattr(encoder, "_loaded_fingerprints", {})
    return [f"{name}.backbone.{k}" for k, t in frozen_state(encoder).items()
            if k in loaded and fingerprint(t) == loaded[k]]


def verifiable(encoder: BackboneEncoder) -> bool:
    """Whether the backbone's weights can be re-read and checked: its identity carries a sha256 of its files."""
    return re.fullmatch(r"[0-9a-f]{64}", encoder.identity.sha256 or "") is not None


def slim(checkpoint: MutableMapping[str, Any], module: nn.Module) -> int:
    """Remove the unchanged backbone tensors from ``checkpoint["state_dict"]`` and record what was removed.

    Returns:
        The number of tensors left out.
    """
    from torch.distributed.tensor import DTensor

    state = checkpoint.get("state_dict")
    if not isinstance(state, MutableMapping):
        return 0
    entries: dict[str, Any] = {}
    for name, encoder in backbone_encoders(module).items():
        if any(isinstance(p, DTensor) for p in encoder.backbone.parameters()):
            log.debug("sharded parameters: the checkpoint keeps %s's backbone", name)
            return 0
        if not verifiable(encoder):
            continue  # e.g. timm's own pretrained or random weights: nothing to re-read them from and check
        keys = [k for k in unchanged_keys(name, encoder) if k in state]
        if not keys:
            continue
        for k in keys:
            del state[k]
        entries[name] = {"name_or_path": encoder.identity.name_or_path, "sha256": encoder.identity.sha256,
                         "omitted": keys}
    if entries:
        checkpoint[CKPT_KEY] = entries
    return sum(len(e["omitted"]) for e in entries.values())


def check_identities(entries: Mapping[str, Any], module: nn.Module, source: str | Path, prefix: str = "") -> set[str]:
    """Each backbone a slim checkpoint left out must be in ``module`` and hash as recorded; returns the omitted keys.

    Args:
        entries: the checkpoint's ``backbones`` record (encoder name -> identity and omitted keys).
        module: the network (or LightningModule) the checkpoint is loaded into.
        source: the checkpoint, for messages.
        prefix: removed from the recorded encoder names (``"net."`` when ``module`` is the bare network).
    """
    encoders = backbone_encoders(module)
    omitted: set[str] = set()
    for name, entry in entries.items():
        encoder = encoders.get(name.removeprefix(prefix))
        if encoder is None:
            raise CheckpointError(f"{source}: the backbone weights of {name} are not stored in it (a slim "
                                  "checkpoint), and the network it goes into has no backbone encoder there")
        if encoder.identity.sha256 != entry.get("sha256"):
            raise CheckpointError(
                f"{source}: {name}: the backbone read from {encoder.identity.name_or_path} (sha256 "
                f"{encoder.identity.sha256[:16]}) is not the one this checkpoint was trained on "
                f"({entry.get('name_or_path')}, sha256 {str(entry.get('sha256'))[:16]}); refused. Point "
                f"name_or_path at the original weights")
        if encoder.identity.name_or_path != entry.get("name_or_path"):
            log.info("%s: backbone read from %s (trained from %s; same sha256)", name,
                     encoder.identity.name_or_path, entry.get("name_or_path"))
        omitted.update(entry.get("omitted", ()))
    return omitted


def restore(checkpoint: Mapping[str, Any], module: nn.Module, source: str | Path) -> set[str]:
    """Check a slim checkpoint against ``module`` (built, backbones re-read): each backbone's hash must be the one
    recorded, and the stored tensors plus the omitted ones must be exactly the module's state.

    Returns:
        The omitted keys (the module's re-read tensors stand for them): load the stored ``state_dict`` with
        ``strict=False`` when it is not empty, which this check makes as strict as a full load.

    Raises:
        CheckpointError: a backbone whose hash differs (naming it and both paths), a backbone the network lacks,
            or keys that fit neither.
    """
    entries = checkpoint.get(CKPT_KEY) or {}
    if not entries:
        return set()
    if not isinstance(entries, Mapping):
        raise CheckpointError(f"{source}: `{CKPT_KEY}` is not a mapping of backbone identities")
    omitted = check_identities(entries, module, source)
    state = checkpoint.get("state_dict") or {}
    own = set(module.state_dict())
    missing, unexpected = sorted(own - set(state) - omitted), sorted(set(state) - own)
    wrong = sorted(omitted - own)
    if missing or unexpected or wrong:
        shown = ", ".join((missing + unexpected + wrong)[:5])
        raise CheckpointError(f"{source}: its weights do not fit the network it describes ({len(missing)} missing, "
                              f"{len(unexpected) + len(wrong)} unexpected: {shown})")
    return omitted
