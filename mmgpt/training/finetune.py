"""Fine-tuning helpers: partial loading from a checkpoint with a report, freezing named parts, parameter counts.

The two-step recipe (pre-train without labels, then fine-tune a classifier on few labels)::

    # 1. pre-train: causal LM on captions + contrastive + matching (labels unused)
    mmgpt-train task=pretrain hydra.run.dir=runs/pretrain
    # 2. fine-tune: classification on 200 labelled samples, encoders frozen (or LoRA on attention projections)
    mmgpt-train task=finetune init_from=runs/pretrain/checkpoints/last.ckpt data.num_train=200 \\
        model.freeze=[encoders]                   # or: model.lora={rank:4,alpha:8,parts:[fusion]}
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor, nn

from mmgpt.layers import unwrapped_names
from mmgpt.training.checkpoint_file import read_state_dict

log = logging.getLogger(__name__)


@dataclass
class LoadReport:
    """What :func:`load_partial` did.

    Attributes:
        loaded: keys copied into the model.
        missing: model keys the checkpoint does not have (left as initialised).
        unexpected: checkpoint keys the model does not have (ignored).
        mismatched: keys present in both with different shapes (left as initialised), with both shapes.
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    def summary(self) -> str:
        def show(keys: Sequence[str]) -> str:
            return ", ".join(keys[:8]) + (f", ... (+{len(keys) - 8})" if len(keys) > 8 else "")

        lines = [f"loaded {len(self.loaded)} tensors"]
        if self.missing:
            lines.append(f"missing (kept initialised) {len(self.missing)}: {show(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected (ignored) {len(self.unexpected)}: {show(self.unexpected)}")
        if self.mismatched:
            lines.append("shape mismatch (kept initialised): "
                         + ", ".join(f"{k} {a}->{b}" for k, (a, b) in self.mismatched.items()))
        return "; ".join(lines)


def load_partial(model: nn.Module, state: Mapping[str, Tensor], prefix: str = "") -> LoadReport:
    """Copy the tensors of ``state`` whose names (minus ``prefix``) and shapes match ``model``'s.

    Keys of layers wrapped by LoRA (``x.base.weight``) also accept the unwrapped name (``x.weight``), and learned
    tokens the name they had as bare parameters (``fusion.cls`` for ``fusion.cls.weight``).
    """
    own = model.state_dict()
    alias = {k.replace(".base.", ".", 1): k for k in own if ".base." in k}
    alias |= unwrapped_names(model)  # learned tokens saved before they were LearnedTokens (``fusion.cls``)
    report = LoadReport()
    new: dict[str, Tensor] = {}
    for key, value in state.items():
        if prefix and not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        target = name if name in own else alias.get(name)
        if target is None:
            report.unexpected.append(name)
        elif own[target].shape != value.shape:
            report.mismatched[target] = (tuple(value.shape), tuple(own[target].shape))
        else:
            new[target] = value
            report.loaded.append(target)
    report.missing = [k for k in own if k not in new and k not in report.mismatched]
    model.load_state_dict(new, strict=False)  # only what is loaded is written (slim checkpoints see the rest untouched)
    return report


def freeze(model: nn.Module, parts: Sequence[str]) -> list[str]:
    """Stop gradients for every parameter under the named parts (``encoders.image``, ``fusion``...), or for a
    single named parameter (``fusion.rank_weights``: MMSA's LMF trainer leaves its rank weights and bias out of
    its optimizer).

    Returns:
        the names of the frozen parameters.
    Raises:
        AttributeError: a part that the model does not have (neither a submodule nor a parameter).
    """
    frozen: list[str] = []
    for part in parts:
        try:
            params = [(f"{part}.{name}", p) for name, p in model.get_submodule(part).named_parameters()]
        except AttributeError:
            try:
                params = [(part, model.get_parameter(part))]
            except AttributeError:
                raise AttributeError(f"freeze: the network has no part or parameter {part!r}") from None
        for name, p in params:
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of parameters."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def trainable_by_part(net: nn.Module) -> dict[str, dict[str, int]]:
    """Trainable and frozen parameter counts of each encoder, the fusion, the head and the decoder of ``net``.

    A pretrained backbone encoder also reports its LoRA ``adapters`` and ``backbone_trainable`` (the parameters
    its ``lr_mult`` scales).
    """
    from mmgpt.encoders.backbone import BackboneEncoder
    from mmgpt.encoders.tuning import counts

    parts: dict[str, nn.Module] = {f"encoders.{m}": e for m, e in net.encoders.items()}
    parts.update({name: getattr(net, name) for name in ("fusion", "head", "decoder") if getattr(net, name, None)})
    out: dict[str, dict[str, int]] = {}
    for name, module in parts.items():
        trainable, total = parameter_counts(module)
        out[name] = {"trainable": trainable, "frozen": total - trainable}
        if isinstance(module, BackboneEncoder):
            c = counts(module)
            out[name].update(adapters=c.adapters, backbone_trainable=c.backbone_trainable)
    return out


def init_from_checkpoint(net: nn.Module, path: str | Path) -> LoadReport:
    """Initialise ``net`` from a checkpoint: a Lightning one (keys under ``net.``) or a plain network state dict."""
    from mmgpt.training.backbone_checkpoints import CKPT_KEY, check_identities
    from mmgpt.training.distributed import consolidate, is_sharded_checkpoint
    from mmgpt.training.safe_load import CheckpointError, read_checkpoint

    entries = None
    if is_sharded_checkpoint(path):  # trainer=fsdp's folder: read as data (index, byte entries, meta.pt)
        state = consolidate(path)["state_dict"]
    elif Path(path).suffix == ".safetensors" or not Path(path).is_file():
        state = read_state_dict(path)
    else:  # read once: a slim checkpoint's backbone identities come with its tensors
        obj = read_checkpoint(path)  # weights_only; a pickle that is not a checkpoint is one line naming the file
        state = obj.get("state_dict", obj)
        entries = obj.get(CKPT_KEY)
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"init_from={path}: not a checkpoint or state dict of tensors")
    if entries:  # the backbones it left out must be the ones net read (they stay as read)
        check_identities(entries, net, path, prefix="net.")
    prefix = "net." if any(k.startswith("net.") for k in state) else ""
    report = load_partial(net, state, prefix)
    log.info("init_from %s: %s", path, report.summary())
    return report
