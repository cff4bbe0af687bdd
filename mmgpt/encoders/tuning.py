"""Fine-tuning controls of a pretrained backbone: what :meth:`BackboneEncoder.apply_tuning` does.

A :class:`Tuning` is applied once, by the network builder, after the encoder is complete
and before the network's weights are initialised:

- ``freeze`` (the default): every backbone parameter stops taking gradients; the projection always trains. A
  backbone with nothing trainable left runs under ``torch.no_grad`` and stays in eval mode (dropout off, batch-norm
  statistics fixed) whatever ``model.train()`` says, so its weights and buffers are bit-identical after training.
- ``unfreeze_last: N``: the top N of :meth:`~BackboneEncoder.layers` train again; the backbone below them (and its
  embeddings) stays frozen and in eval mode, the N layers follow the module's train/eval mode.
- ``lora``: `peft <https://github.com/huggingface/peft>`_ LoRA adapters on the backbone's modules named in
  ``target_modules`` (any architecture: peft matches module-name suffixes); the base weights stay frozen, the
  adapters train, and the backbone follows the module's mode (its dropout on in training, as peft fine-tuning does).
  ``unfreeze_last`` may be combined with it.
- ``freeze: false``: the whole backbone trains (``unfreeze_last`` and ``lora`` are then refused as meaningless).
- ``lr_mult``: read by the optimizer set-up (:func:`mmgpt.training.optim.param_groups`).
- ``gradient_checkpointing``: the backbone's own switch where it has one (Hugging Face
  ``activation_checkpointing_enable``, timm ``set_grad_checkpointing``), else each block of ``layers()`` is wrapped
  with torch's non-reentrant checkpoint wrapper.

mmgpt's own LoRA (:mod:`mmgpt.lora`, the ``model.lora`` setting for mmgpt's attention layers) is kept beside peft:
it computes the same function (tested against peft's layer), needs no extra package, and keeps the parameter names
of existing fine-tuning checkpoints; importing peft alone costs ~3.5 s (it imports transformers), which the
scratch path must not pay. Backbones, whose modules mmgpt does not define, use peft.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from mmgpt.errors import UserError

if TYPE_CHECKING:
    from mmgpt.encoders.backbone import BackboneEncoder

log = logging.getLogger(__name__)

#: mmgpt's names for LoRA arguments (as ``model.lora`` spells them) -> peft ``LoraConfig`` field names.
LORA_ALIASES = {"rank": "r", "alpha": "lora_alpha", "dropout": "lora_dropout"}


@dataclass(frozen=True)
class Tuning:
    """How a backbone is fine-tuned (the ``tuning:`` key of a backbone encoder's spec).

    Attributes:
        freeze: keep every backbone weight fixed (eval mode, no gradients) unless ``unfreeze_last`` / ``lora``
            say otherwise; the projection always trains.
        unfreeze_last: train the top N of :meth:`BackboneEncoder.layers` (0: none).
        lora: parameter-efficient adapters (``peft`` LoRA arguments, e.g. ``{r: 8, alpha: 16, target_modules:
            [query, value]}``), or None.
        lr_mult: learning-rate multiplier of the backbone's trainable parameters relative to the new ones.
        gradient_checkpointing: recompute the backbone's activations in backward.
    """

    freeze: bool = True
    unfreeze_last: int = 0
    lora: Mapping[str, Any] | None = None
    lr_mult: float = 1.0
    gradient_checkpointing: bool = False


def parse_tuning(fields: Mapping[str, Any]) -> Tuning:
    """A spec's ``tuning:`` mapping -> :class:`Tuning`; an unknown key is a TypeError naming it."""
    known = Tuning.__dataclass_fields__
    for key in fields:
        if key not in known:  # a TypeError: the builder prefixes the encoder's key path
            raise TypeError(f"tuning.{key}: not a tuning setting (settings: {', '.join(known)})")
    return Tuning(**fields)


class TuningError(UserError):
    """A ``tuning`` setting that cannot be applied to its backbone."""


@dataclass(frozen=True)
class TuningCounts:
    """Parameter counts of one backbone encoder after tuning.

    Attributes:
        trainable: parameters that train (projection, unfrozen layers, adapters, or the whole backbone).
        frozen: parameters that do not.
        adapters: the LoRA adapter parameters among ``trainable``.
        backbone_trainable: backbone parameters (adapters included) among ``trainable``: those ``lr_mult`` scales.
    """

    trainable: int
    frozen: int
    adapters: int
    backbone_trainable: int


def check(tuning: Tuning, num_layers: int, where: str = "tuning") -> None:
    """Refuse settings that contradict each other or the backbone (one line naming the key)."""
    if isinstance(tuning.unfreeze_last, bool) or not isinstance(tuning.unfreeze_last, int) or tuning.unfreeze_last < 0:
        raise TuningError(f"{where}.unfreeze_last: expected a number of layers >= 0, got {tuning.unfreeze_last!r}")
    if tuning.unfreeze_last > num_layers:
        raise TuningError(f"{where}.unfreeze_last={tuning.unfreeze_last}: the backbone has only {num_layers} layers")
    if not tuning.lr_mult > 0:
        raise TuningError(f"{where}.lr_mult: expected a positive multiplier, got {tuning.lr_mult!r}")
    if not tuning.freeze and (tuning.unfreeze_last or tuning.lora):
        key = "unfreeze_last" if tuning.unfreeze_last else "lora"
        raise TuningError(f"{where}.{key} with {where}.freeze=false: the whole backbone trains already "
                          f"(set {where}.freeze=true to train only the top layers or adapters)")
    if tuning.lora is not None and not isinstance(tuning.lora, Mapping):
        raise TuningError(f"{where}.lora: expected a mapping of LoRA arguments (r, alpha, target_modules, ...), "
                          f"got {tuning.lora!r}")


def apply(encoder: BackboneEncoder) -> TuningCounts:
    """Apply ``encoder.tuning`` in place (once; a second call does nothing). Returns the resulting counts."""
    if getattr(encoder, "_tuning_applied", False):
        return counts(encoder)
    from mmgpt.layers import mark_pretrained

    tuning = encoder.tuning
    layers = encoder.layers()
    check(tuning, len(layers))
    mark_pretrained(encoder.backbone)  # init_weights leaves the loaded weights (and peft's adapter init) alone
    if tuning.freeze:
        encoder.backbone.requires_grad_(False)
        if tuning.lora:
            add_lora(encoder.backbone, tuning.lora)  # marks only the adapters trainable
        for layer in trainable_layers(encoder):
            layer.requires_grad_(True)
    if tuning.gradient_checkpointing:
        if encoder.frozen:
            log.warning("tuning.gradient_checkpointing on a frozen backbone does nothing (it runs without gradients)")
        else:
            enable_gradient_checkpointing(encoder)
    encoder._tuning_applied = True  # type: ignore[attr-defined]
    encoder.train(encoder.training)  # the frozen part goes to eval mode now
    record_loaded(encoder)
    return counts(encoder)


def record_loaded(encoder: BackboneEncoder) -> None:
    """Note a fingerprint of every frozen backbone tensor now, just after loading (and adding adapters).

    Slim checkpoints (:mod:`mmgpt.training.backbone_checkpoints`) leave out the frozen tensors whose fingerprint
    is still this one, i.e. that still hold what was read from ``identity.name_or_path`` (and not, say, weights an
    ``init_from`` checkpoint loaded over them). Trainable tensors are always stored.
    """
    encoder._loaded_fingerprints = {k: fingerprint(t) for k, t in frozen_state(encoder).items()}  # type: ignore[attr-defined]


def frozen_state(encoder: BackboneEncoder) -> dict[str, Tensor]:
    """The backbone's state-dict entries that training does not update: parameters without gradients, and buffers
    of the part held in eval mode (batch-norm statistics elsewhere do change). Keys relative to the backbone."""
    state = encoder.backbone.state_dict(keep_vars=True)
    trainable = {id(p) for p in encoder.backbone.parameters() if p.requires_grad}
    params = {id(p) for p in encoder.backbone.parameters()}
    held = held_in_eval(encoder)
    live = {id(t) for layer in trainable_layers(encoder) for t in layer.buffers()}
    return {k: t for k, t in state.items() if id(t) not in trainable
            and (id(t) in params or (held and id(t) not in live))}


#: Elements per step of :func:`fingerprint` (bounds its memory); a multiple of 7, so each chunk's ``[::7]``
#: continues the whole tensor's.
FINGERPRINT_CHUNK = 7 << 20


def fingerprint(t: Tensor) -> tuple[int, ...]:
    """Three exact integer sums over the bits of ``t`` (all of them; every 7th element; high x low 16-bit halves).

    Integer sums do not depend on the order of the reduction, so the fingerprint of a tensor is the same on the CPU
    (where it is noted, right after loading) and on a GPU (where a checkpoint is saved); any change to an element's
    bits (an update, a cast, another checkpoint's weights) changes it. Computed where ``t`` lives, in chunks.
    """
    x = t.detach().contiguous().reshape(-1).view(torch.uint8)
    bits = x.view(torch.int32) if x.numel() % 4 == 0 else x.view(torch.int16) if x.numel() % 2 == 0 else x
    total = torch.zeros(3, dtype=torch.int64, device=bits.device)
    for i in range(0, bits.numel(), FINGERPRINT_CHUNK):
        c = bits[i:i + FINGERPRINT_CHUNK].int()  # int32: the halves' product below fits (|x| < 2^16 * 2^15)
        total += torch.stack([c.sum(dtype=torch.int64), c[::7].sum(dtype=torch.int64),
                              ((c & 0xFFFF) * (c >> 16)).sum(dtype=torch.int64)])
    return tuple(total.tolist())


def trainable_layers(encoder: BackboneEncoder) -> list[nn.Module]:
    """The layers ``unfreeze_last`` trains (the top N of ``layers()``), input side first."""
    n = encoder.tuning.unfreeze_last if encoder.tuning.freeze else 0
    return list(encoder.layers())[len(encoder.layers()) - n:] if n else []


def held_in_eval(encoder: BackboneEncoder) -> bool:
    """Whether part of the backbone is held in eval mode in training (frozen, no adapters running through it)."""
    return encoder.tuning.freeze and not encoder.tuning.lora


def set_mode(encoder: BackboneEncoder, mode: bool) -> None:
    """After ``nn.Module.train(mode)``: put the frozen part of the backbone back into eval mode.

    Lightning calls ``model.train()`` at the start of every epoch; without this a frozen backbone's dropout and
    batch-norm statistics would change what it computes (and its buffers) during training.
    """
    if mode and held_in_eval(encoder):
        encoder.backbone.eval()
        for layer in trainable_layers(encoder):
            layer.train(True)


def add_lora(backbone: nn.Module, arguments: Mapping[str, Any], where: str = "tuning.lora") -> None:
    """Inject peft LoRA adapters into ``backbone`` in place (names of ``arguments`` as peft's ``LoraConfig``, or
    mmgpt's ``rank`` / ``alpha`` / ``dropout``). Only the adapters are left trainable."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as e:  # pragma: no cover - the backbones extra installs it
        raise TuningError(f"{where}: LoRA on a backbone needs the `peft` package "
                          "(pip install 'mmgpt[backbones]')") from e
    kwargs = {LORA_ALIASES.get(k, k): (list(v) if isinstance(v, (list, tuple)) else v) for k, v in arguments.items()}
    if "target_modules" not in kwargs:
        raise TuningError(f"{where}.target_modules: missing (the names of the backbone's modules to adapt, e.g. "
                          "[query, value] for BERT, [qkv] for a timm ViT)")
    try:
        config = LoraConfig(**kwargs)
    except (TypeError, ValueError) as e:
        raise TuningError(f"{where}: {e}") from e
    try:
        inject_adapter_in_model(config, backbone)
    except ValueError as e:
        names = sorted({n.rpartition(".")[2] for n, m in backbone.named_modules() if isinstance(m, nn.Linear)})
        raise TuningError(f"{where}.target_modules={kwargs['target_modules']}: {str(e).splitlines()[0]} "
                          f"(linear layers of this backbone are named: {', '.join(names[:20])})") from e


def enable_gradient_checkpointing(encoder: BackboneEncoder) -> str:
    """Recompute the backbone's activations in backward; returns which mechanism was used."""
    backbone = encoder.backbone
    if getattr(backbone, "supports_gradient_checkpointing", False):  # a transformers PreTrainedModel
        kwargs = {"use_reentrant": False}
        if hasattr(backbone, "activation_checkpointing_enable"):  # transformers >= 5 (the old name is deprecated)
            backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        return "transformers"
    if hasattr(backbone, "set_grad_checkpointing"):  # timm models
        backbone.set_grad_checkpointing(True)
        return "timm"
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    blocks = {id(layer) for layer in encoder.layers()}
    apply_activation_checkpointing(backbone, check_fn=lambda m: id(m) in blocks)
    return "torch"


def counts(encoder: BackboneEncoder) -> TuningCounts:
    trainable = frozen = adapters = backbone_trainable = 0
    backbone = {id(p) for p in encoder.backbone.parameters()}
    for name, p in encoder.named_parameters():
        if p.requires_grad:
            trainable += p.numel()
            adapters += p.numel() if "lora_" in name else 0
            backbone_trainable += p.numel() if id(p) in backbone else 0
        else:
            frozen += p.numel()
    return TuningCounts(trainable, frozen, adapters, backbone_trainable)
