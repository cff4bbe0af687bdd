"""The field's reference implementations, seen from mmgpt: weights mapped between them and mmgpt's networks.

``model.init={peer: mmsa, model: lmf, seed: 1111}`` starts a network of MMSA's architecture from the weights MMSA's
own model draws for that seed (:func:`init_like`), which the ``mosi_mmsa_*`` experiments do with the run's seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from mmgpt.peers.mmsa import EXACT_MODELS, init_like_mmsa

#: peer -> the models whose initial weights mmgpt can draw as that peer does
PEERS = {"mmsa": EXACT_MODELS}


def init_like(net: nn.Module, spec: Mapping[str, Any], where: str = "model.init") -> None:
    """Overwrite the weights of ``net`` with a peer's initial weights: ``spec`` is ``{peer, model, seed}``.

    Raises:
        ValueError: a missing or unknown key, an unknown peer or model, or a network that is not the peer's
            architecture; the message names the key.
    """
    keys = {"peer", "model", "seed"}
    unknown, missing = sorted(set(spec) - keys), sorted(keys - set(spec))
    if unknown or missing:
        raise ValueError(f"{where}: needs exactly peer, model and seed "
                         f"({'unknown ' + ', '.join(unknown) if unknown else 'missing ' + ', '.join(missing)})")
    peer, model, seed = spec["peer"], str(spec["model"]).lower(), spec["seed"]
    if peer not in PEERS:
        raise ValueError(f"{where}.peer: {peer!r} is not one of {sorted(PEERS)}")
    if model not in PEERS[peer]:
        raise ValueError(f"{where}.model: {model!r} is not one of {list(PEERS[peer])} ({peer})")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"{where}.seed: {seed!r} is not an integer")
    try:
        init_like_mmsa(net, model, seed)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e


__all__ = ["PEERS", "init_like"]
