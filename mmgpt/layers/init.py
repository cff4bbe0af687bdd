"""The one weight initialisation of mmgpt networks, applied once when a network is assembled (as nanoGPT does).

Chosen by module type, never by attribute name: embedding tables (:class:`torch.nn.Embedding`) and learned
tokens (:class:`~mmgpt.layers.tokens.LearnedTokens`: CLS / null / query tokens, position and modality-type
embeddings) are drawn from N(0, 0.02), as in GPT-2 and ViT. Linear, convolution and LayerNorm layers keep
PyTorch's defaults, and gates keep the value they were built with (a gated block starts as the identity when its
gate is 0). Parts that arrive with weights of their own (a GPT-2 decoder, a pretrained stem) are marked with
:func:`mark_pretrained` and skipped.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from mmgpt.layers.tokens import LearnedTokens


def mark_pretrained(module: nn.Module) -> nn.Module:
    """Mark ``module`` as carrying loaded weights: :func:`init_weights` leaves it and its children alone."""
    module._mmgpt_pretrained = True  # type: ignore[attr-defined]
    return module


def _fresh_modules(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` and its sub-modules not marked pretrained; a module's own learned tokens come right after it,
    before its other sub-modules (the order of the draws when they were bare parameters: a seed still gives the
    weights it gave then)."""
    if getattr(module, "_mmgpt_pretrained", False):
        return
    yield module
    children = list(module.children())
    for child in children:
        if isinstance(child, LearnedTokens):
            yield from _fresh_modules(child)
    for child in children:
        if not isinstance(child, LearnedTokens):
            yield from _fresh_modules(child)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """Initialise every embedding table and learned token under ``module`` from N(0, ``std``) (a
    :class:`LearnedTokens` with a ``std`` of its own uses that); other parameters are left as built.

    Called once by :func:`mmgpt.registry.build_network` on the assembled network.
    """
    for sub in _fresh_modules(module):
        if isinstance(sub, nn.Embedding):
            nn.init.normal_(sub.weight, std=std)
        elif isinstance(sub, LearnedTokens):
            own = std if sub.std is None else sub.std
            if own > 0:
                nn.init.normal_(sub.weight, std=own)
            else:
                nn.init.zeros_(sub.weight)
