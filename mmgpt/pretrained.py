"""Offline-safe pretrained weights: a GPT-2 checkpoint as mmgpt's text decoder, weight files read without running code.

Nothing here downloads: GPT-2 weights are read from a local path (a Hugging Face ``transformers`` folder with
``config.json`` and ``model.safetensors`` / ``pytorch_model.bin``, or a single such file). Torchvision image stems
live with the image encoder (:class:`mmgpt.encoders.image.TorchvisionStem`).

Legend: B batch, D dim (GPT-2's n_embd), L layers, H heads, V vocabulary.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from mmgpt.decoder import Conditioner, NoConditioning, TextDecoder
from mmgpt.layers import mark_pretrained

log = logging.getLogger(__name__)

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


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
            b + "attn.proj.weight": state[h + "attn.c_proj.weight"].t(),
            b + "attn.proj.bias": state[h + "attn.c_proj.bias"],
            b + "norm2.weight": state[h + "ln_2.weight"], b + "norm2.bias": state[h + "ln_2.bias"],
            b + "mlp.net.0.weight": state[h + "mlp.c_fc.weight"].t(), b + "mlp.net.0.bias": state[h + "mlp.c_fc.bias"],
            b + "mlp.net.2.weight": state[h + "mlp.c_proj.weight"].t(),
            b + "mlp.net.2.bias": state[h + "mlp.c_proj.bias"],
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
        conditioner=conditioner or NoConditioning(), dim=D, num_layers=num_layers, num_heads=num_heads, vocab_size=V,
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
    return mark_pretrained(decoder)
