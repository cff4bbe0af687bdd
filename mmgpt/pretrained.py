"""Offline-safe pretrained weights: a GPT-2 checkpoint as mmgpt's text decoder, torchvision backbones as image stems.

Nothing here downloads: GPT-2 weights are read from a local path (a Hugging Face ``transformers`` folder with
``config.json`` and ``model.safetensors`` / ``pytorch_model.bin``, or a single such file), and torchvision
weights are only fetched when the user names them (``weights="DEFAULT"``) and has them cached.

Legend: B batch, D dim (GPT-2's n_embd), L layers, H heads, V vocabulary.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from mmgpt.decoder import Conditioner, NoConditioning, TextDecoder
from mmgpt.finetune import read_state_dict

log = logging.getLogger(__name__)

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def read_gpt2(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """The state dict (HF names, ``transformer.`` prefix removed) and ``config.json`` (or {}) of a GPT-2 checkpoint."""
    path = Path(path)
    config: dict = {}
    if path.is_dir():
        if (path / "config.json").is_file():
            config = json.loads((path / "config.json").read_text())
        files = [path / f for f in _WEIGHT_FILES if (path / f).is_file()]
        if not files:
            raise FileNotFoundError(f"{path}: no {' or '.join(_WEIGHT_FILES)}")
        path = files[0]
    elif (path.parent / "config.json").is_file():
        config = json.loads((path.parent / "config.json").read_text())
    state = read_state_dict(path)
    return {k.removeprefix("transformer."): v for k, v in state.items()}, config


def gpt2_to_decoder(state: dict[str, Tensor], num_layers: int) -> dict[str, Tensor]:
    """Rename and transpose GPT-2 tensors (HF ``Conv1D`` stores (in, out)) into :class:`TextDecoder` names."""
    D = state["wte.weight"].shape[1]
    out = {
        "tok_emb.weight": state["wte.weight"],
        "pos_emb.weight": state["wpe.weight"],
        "norm.weight": state["ln_f.weight"],
        "norm.bias": state["ln_f.bias"],
        "lm_head.weight": state.get("lm_head.weight", state["wte.weight"]),
    }
    for i in range(num_layers):
        h, b = f"h.{i}.", f"blocks.{i}."
        w_attn, b_attn = state[h + "attn.c_attn.weight"], state[h + "attn.c_attn.bias"]  # (D, 3D), (3D,)
        out |= {
            b + "norm1.weight": state[h + "ln_1.weight"], b + "norm1.bias": state[h + "ln_1.bias"],
            b + "attn.q.weight": w_attn[:, :D].t(), b + "attn.q.bias": b_attn[:D],
            b + "attn.kv.weight": w_attn[:, D:].t(), b + "attn.kv.bias": b_attn[D:],  # k then v, as Attention splits
            b + "attn.proj.weight": state[h + "attn.c_proj.weight"].t(), b + "attn.proj.bias": state[h + "attn.c_proj.bias"],
            b + "norm2.weight": state[h + "ln_2.weight"], b + "norm2.bias": state[h + "ln_2.bias"],
            b + "mlp.net.0.weight": state[h + "mlp.c_fc.weight"].t(), b + "mlp.net.0.bias": state[h + "mlp.c_fc.bias"],
            b + "mlp.net.2.weight": state[h + "mlp.c_proj.weight"].t(), b + "mlp.net.2.bias": state[h + "mlp.c_proj.bias"],
        }
    return {k: v.contiguous() for k, v in out.items()}


def gpt2_decoder(
    path: str | Path,
    conditioner: Conditioner | None = None,
    num_heads: int | None = None,
    cross_attention: bool = False,
    gate_init: float | None = 0.0,
    dropout: float = 0.0,
) -> TextDecoder:
    """A :class:`TextDecoder` with GPT-2's sizes and weights (the cross-attention blocks, if any, are new).

    Args:
        path: a local GPT-2 folder or weights file (HF ``transformers`` names).
        conditioner: how the media condition the text (default: none, a plain LM). Its width must be GPT-2's.
        num_heads: heads H; read from ``config.json`` (``n_head``) when not given.
        cross_attention: add gated cross-attention blocks (Flamingo: frozen LM + new gated layers).
        gate_init: initial gate of the new cross-attention blocks (0: the model starts as the plain GPT-2).
        dropout: dropout rate.
    Returns:
        the decoder; its vocabulary is GPT-2's (use a GPT-2 tokenizer with it, not mmgpt's byte tokenizer).
    """
    state, config = read_gpt2(path)
    num_layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"h\.(\d+)\.", k)))
    num_heads = num_heads or config.get("n_head")
    if num_heads is None:
        raise ValueError(f"{path}: no config.json with n_head; pass num_heads")
    V, D = state["wte.weight"].shape
    decoder = TextDecoder(
        conditioner or NoConditioning(), D, num_layers, num_heads, vocab_size=V,
        max_length=state["wpe.weight"].shape[0], cross_attention=cross_attention, gate_init=gate_init,
        mlp_ratio=state["h.0.mlp.c_fc.weight"].shape[1] / D, dropout=dropout, approximate="tanh",
    )
    eps = config.get("layer_norm_epsilon", 1e-5)
    for m in decoder.modules():
        if isinstance(m, nn.LayerNorm):
            m.eps = eps
    missing, unexpected = decoder.load_state_dict(gpt2_to_decoder(state, num_layers), strict=False)
    new = [k for k in missing if not k.startswith(("cross_blocks.", "conditioner."))]
    if new or unexpected:
        raise ValueError(f"GPT-2 weights do not fit the decoder: missing {new}, unexpected {unexpected}")
    log.info("GPT-2 decoder from %s: %d layers, D=%d, H=%d, V=%d", path, num_layers, D, num_heads, V)
    return decoder


class TorchvisionStem(nn.Module):
    """A torchvision ResNet trunk cut at stride ``patch_size`` plus a 1x1 projection to ``dim``: an image stem.

    Drop-in for :class:`mmgpt.encoders.image.ConvStem` (same (B, D, H/p, W/p) token grid).

    Args:
        dim: width D.
        patch_size: total stride, 4, 8, 16 or 32 (where the trunk is cut).
        name: a torchvision ResNet (``resnet18``, ``resnet34``, ``resnet50``...).
        weights: torchvision weights name (``"DEFAULT"``, ``"IMAGENET1K_V1"``) or None for random init
            (the default: nothing is downloaded unless asked for).
        freeze: keep the trunk's weights fixed.
    """

    _CUTS = {4: "layer1", 8: "layer2", 16: "layer3", 32: "layer4"}

    def __init__(self, dim: int, patch_size: int = 8, name: str = "resnet18", weights: str | None = None,
                 freeze: bool = False) -> None:
        super().__init__()
        import torchvision

        if patch_size not in self._CUTS:
            raise ValueError(f"patch_size must be one of {sorted(self._CUTS)}, got {patch_size}")
        resnet = torchvision.models.get_model(name, weights=weights)
        layers: list[nn.Module] = []
        for child_name, child in resnet.named_children():
            layers.append(child)
            if child_name == self._CUTS[patch_size]:
                break
        self.trunk = nn.Sequential(*layers)
        with torch.no_grad():
            channels = self.trunk(torch.zeros(1, 3, 2 * patch_size, 2 * patch_size)).shape[1]
        self.proj = nn.Conv2d(channels, dim, kernel_size=1)
        self.patch_size = patch_size
        if freeze:
            for p in self.trunk.parameters():
                p.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.trunk(x))  # (B, D, H/p, W/p)
