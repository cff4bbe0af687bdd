"""The one weight initialisation of mmgpt networks, applied once when a network is assembled (as nanoGPT does).

Learned tables (token and position embeddings, CLS / null tokens, modality-type embeddings) are drawn from
N(0, 0.02), as in GPT-2 and ViT. Linear, convolution and LayerNorm layers keep PyTorch's defaults, and gates keep
the value they were built with (a gated block starts as the identity when its gate is 0). Parts that arrive with
weights of their own (a GPT-2 decoder, a pretrained stem) are marked with :func:`mark_pretrained` and skipped.
"""

from __future__ import annotations

from torch import nn

#: Names of the raw parameters that are learned tables (initialised like embeddings), and of the parameter dicts
#: holding one table vector per modality (modality-type embeddings).
TABLE_PARAMETERS = frozenset({"pos_emb", "cls", "null", "queries"})
TABLE_DICTS = frozenset({"table"})


def mark_pretrained(module: nn.Module) -> nn.Module:
    """Mark ``module`` as carrying loaded weights: :func:`init_weights` leaves it and its children alone."""
    module._mmgpt_pretrained = True  # type: ignore[attr-defined]
    return module


def _fresh_modules(module: nn.Module, name: str = ""):
    if getattr(module, "_mmgpt_pretrained", False):
        return
    yield name, module
    for child_name, child in module.named_children():
        yield from _fresh_modules(child, child_name)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """Initialise every learned table under ``module`` from N(0, ``std``); other parameters are left as built.

    Called once by :func:`mmgpt.registry.build_network` on the assembled network.
    """
    for name, sub in _fresh_modules(module):
        if isinstance(sub, nn.Embedding):
            nn.init.normal_(sub.weight, std=std)
        elif isinstance(sub, nn.ParameterDict) and name in TABLE_DICTS:  # one vector per modality
            for p in sub.values():
                nn.init.normal_(p, std=std)
        for name, p in sub.named_parameters(recurse=False):
            if name in TABLE_PARAMETERS:
                nn.init.normal_(p, std=std)
