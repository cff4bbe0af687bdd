"""LoRA (Hu et al., 2021): low-rank adapters added to frozen linear layers (here: attention projections).

For mmgpt's own layers (``model.lora``). Pretrained backbones use peft instead (``tuning.lora``,
:mod:`mmgpt.encoders.tuning`); both compute the same function, and why both exist is in docs/tuning.md.

Legend: B batch, N tokens, I in features, O out features, R rank.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


class LoRALinear(nn.Module):
    """``base(x) + (alpha / rank) * B(A(dropout(x)))`` with ``base`` frozen, A random and B zero (starts as base).

    Args:
        base: the linear layer to adapt (its weights are frozen).
        rank: adapter rank R.
        alpha: scaling numerator.
        dropout: dropout on the adapter's input.
    """

    def __init__(self, base: nn.Linear, rank: int = 4, alpha: float = 8.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))  # (R, I)
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))  # (O, R)
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scale = alpha / rank
        self.drop = nn.Dropout(dropout)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scale * (self.drop(x) @ self.lora_a.t() @ self.lora_b.t())  # (..., O)


def add_lora(
    net: nn.Module,
    parts: Sequence[str] = ("",),
    targets: Sequence[str] = ("attn.q", "attn.kv", "attn.proj"),
    rank: int = 4,
    alpha: float = 8.0,
    dropout: float = 0.0,
) -> list[str]:
    """Wrap every ``nn.Linear`` whose name ends with one of ``targets`` inside ``parts`` in a :class:`LoRALinear`.

    Args:
        net: the network, changed in place.
        parts: module paths to search (``""`` = everywhere), e.g. ``["fusion", "decoder"]``.
        targets: name suffixes of the linear layers to adapt (the attention projections by default).
        rank: adapter rank.
        alpha: adapter scaling numerator.
        dropout: adapter input dropout.
    Returns:
        the qualified names of the adapted layers.
    """
    adapted: list[str] = []
    for part in parts:
        root = net.get_submodule(part) if part else net
        for name, module in list(root.named_modules()):
            if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
                parent_name, _, attr = name.rpartition(".")
                parent = root.get_submodule(parent_name) if parent_name else root
                setattr(parent, attr, LoRALinear(module, rank, alpha, dropout))
                adapted.append(f"{part}.{name}" if part else name)
    if not adapted:
        raise ValueError(f"LoRA: no linear layer named *{list(targets)} under {list(parts)}")
    log.info("LoRA rank %d on %d layers", rank, len(adapted))
    return adapted
