"""Weight files read without running code (``init_from``: a Lightning checkpoint, a ``.pt``/``.bin`` state dict or
``.safetensors``).

Pretrained text decoders are ``transformers`` causal LMs loaded by :class:`mmgpt.hf_decoder.HFDecoder`
(``model/decoder=hf``; this module's former GPT-2-into-``TextDecoder`` weight mapping was retired in its favour).
Torchvision image stems live with the image encoder (:class:`mmgpt.encoders.image.TorchvisionStem`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a Lightning checkpoint (``state_dict``), a plain ``.pt``/``.bin`` state dict, or ``.safetensors``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return obj.get("state_dict", obj) if isinstance(obj, Mapping) else obj
