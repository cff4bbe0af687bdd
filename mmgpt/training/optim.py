"""Optimisation helpers: parameter groups, the warm-up + cosine schedule and the plateau schedule."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from mmgpt.training.distributed import local


def param_groups(model: nn.Module, weight_decay: float, lr: float | None = None) -> list[dict]:
    """Weight decay on matrices only; biases, norms, embeddings tables of rank < 2 are not decayed.

    The trainable parameters of each pretrained backbone whose ``tuning.lr_mult`` is not 1 (unfrozen layers, LoRA
    adapters, or the whole backbone; not its projection) form groups of their own with learning rate
    ``lr * lr_mult`` (same weight-decay rule). Schedules scale every group by the same factor, so the ratio holds.

    Args:
        model: the module whose trainable parameters are grouped.
        weight_decay: decay of the matrices.
        lr: the optimizer's base learning rate; needed only when some backbone has ``lr_mult != 1``.
    """
    from mmgpt.encoders.backbone import BackboneEncoder

    scaled: dict[float, list[nn.Parameter]] = {}
    taken: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, BackboneEncoder) and module.tuning.lr_mult != 1.0:
            if lr is None:
                raise ValueError(f"{name}.tuning.lr_mult={module.tuning.lr_mult}: the optimizer spec needs an "
                                 "explicit lr to scale (model.module.optimizer.lr)")
            params = [p for p in module.backbone.parameters() if p.requires_grad and id(p) not in taken]
            scaled.setdefault(float(module.tuning.lr_mult), []).extend(params)
            taken.update(id(p) for p in params)

    def split(params: list[nn.Parameter]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        return [p for p in params if p.ndim >= 2], [p for p in params if p.ndim < 2]

    decay, no_decay = split([p for p in model.parameters() if p.requires_grad and id(p) not in taken])
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    for mult, params in sorted(scaled.items()):
        for part, wd in zip(split(params), (weight_decay, 0.0)):
            if part:
                groups.append({"params": part, "weight_decay": wd, "lr": lr * mult})
    return groups


def grad_norm(trainer: Any, optimizer: Optimizer) -> Tensor:
    """Total 2-norm of the gradients of ``optimizer``'s parameters at this step, on their device: one reduction.

    Computed once per optimizer step and kept on the optimizer for the step: gradient clipping
    (``MultimodalModule.configure_gradient_clipping``) and ``NonFiniteGuard`` both use it, whichever asks first
    computes it. Nothing is read back to the host.
    """
    cached = optimizer.__dict__.get("_mmgpt_grad_norm")
    if cached is not None and cached[0] == trainer.global_step:
        return cached[1]
    # this rank's shards under FSDP2 (the guard then combines the ranks' flags; sharded clipping has its own norm)
    grads = [local(p.grad) for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
    optimizer.__dict__["_mmgpt_grad_norm"] = (trainer.global_step, norm)
    return norm


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_steps: int | float = 0.05, min_lr_ratio: float = 0.05
) -> LambdaLR:
    """Linear warm-up to the base learning rate, then cosine decay to ``min_lr_ratio`` of it.

    Args:
        optimizer: the optimizer.
        total_steps: optimizer steps in the whole run.
        warmup_steps: warm-up length in steps, or as a fraction of ``total_steps`` when < 1.
        min_lr_ratio: final learning rate / base learning rate.
    """
    warmup = int(warmup_steps * total_steps) if warmup_steps < 1 else int(warmup_steps)
    warmup = max(1, min(warmup, total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def constant(optimizer: Optimizer, total_steps: int) -> LambdaLR:
    """The base learning rate throughout (``total_steps`` is accepted for a uniform schedule signature)."""
    return LambdaLR(optimizer, lambda step: 1.0)


class Plateau(ReduceLROnPlateau):
    """torch's ``ReduceLROnPlateau``, stepped once per epoch on the validation metric ``monitor`` (the
    LightningModule hands it to Lightning with ``interval: epoch`` and that monitor): the rate times ``factor``
    after ``patience`` epochs without an improvement. MMSA's MulT trainer: ``mode="min", factor=0.1, patience=5``
    on the validation loss.

    Args:
        optimizer: the optimizer.
        total_steps: accepted for the schedules' common signature; unused.
        monitor: the logged metric it watches (``val/loss``, ``val/mae``...).
        mode: ``min`` or ``max``.
        factor: the rate's factor at a plateau.
        patience: epochs without an improvement before the rate drops.
        threshold: the relative change that counts as an improvement (torch's default).
    """

    def __init__(self, optimizer: Optimizer, total_steps: int, *, monitor: str = "val/loss", mode: str = "min",
                 factor: float = 0.1, patience: int = 10, threshold: float = 1e-4) -> None:
        super().__init__(optimizer, mode=mode, factor=factor, patience=patience, threshold=threshold)
        self.monitor = monitor
