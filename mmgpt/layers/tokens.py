"""Learned tokens: every table of learned vectors a network adds to its inputs (CLS, null and query tokens,
position and modality-type embeddings, missing-modality vectors) is a :class:`LearnedTokens`, so that
:func:`mmgpt.layers.init_weights` finds it by its type, whatever the attribute is called.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class LearnedTokens(nn.Module):
    """A learned table of vectors: one parameter ``weight`` of shape ``shape`` (e.g. ``(1, N, D)``).

    It holds zeros until :func:`~mmgpt.layers.init_weights` draws it from N(0, ``std``), once, when the network is
    assembled.

    Args:
        shape: the table's shape.
        std: standard deviation of its initial values; None: the network's (``init_weights``' ``std``, 0.02);
            0: it starts at zero (e.g. a missing-modality vector that starts as "no information").
    """

    def __init__(self, *shape: int, std: float | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(*shape))
        self.std = std

    def forward(self) -> Tensor:
        return self.weight

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}" + (f", std={self.std}" if self.std is not None else "")


def unwrapped_names(module: nn.Module) -> dict[str, str]:
    """Old state-dict key -> current key of every learned table under ``module``: before the tables were
    :class:`LearnedTokens` they were bare parameters (``fusion.cls``, now ``fusion.cls.weight``)."""
    return {name: f"{name}.weight" for name, sub in module.named_modules() if isinstance(sub, LearnedTokens) and name}


def accept_unwrapped_names(module: nn.Module) -> None:
    """Let ``module.load_state_dict`` (directly, or as part of a larger module) read state dicts written before
    the learned tables were :class:`LearnedTokens` (checkpoints whose keys are ``fusion.cls``, not
    ``fusion.cls.weight``)."""

    def rename(mod: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
        for old, new in unwrapped_names(mod).items():
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)

    module.register_load_state_dict_pre_hook(rename)
