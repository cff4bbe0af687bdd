"""Weight files read without running code (``init_from``: a Lightning checkpoint, a ``.pt``/``.bin`` state dict or
``.safetensors``).

Pretrained text decoders are ``transformers`` causal LMs loaded by :class:`mmgpt.hf_decoder.HFDecoder`
(``model/decoder=hf``; this module's former GPT-2-into-``TextDecoder`` weight mapping was retired in its favour).
Torchvision image stems live with the image encoder (:class:`mmgpt.encoders.image.TorchvisionStem`).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from mmgpt.errors import UserError


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a Lightning checkpoint (``state_dict``), a plain ``.pt``/``.bin`` state dict, or ``.safetensors``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise UserError(f"{path}: not a readable .safetensors file ({str(e).splitlines()[0]})") from e
    from mmgpt.training.safe_load import read_checkpoint

    obj = read_checkpoint(path)  # weights_only; a pickle that is not a checkpoint is one line naming the file
    return obj.get("state_dict", obj)
