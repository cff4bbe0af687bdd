"""Small :class:`~mmgpt.encoders.backbone.BackboneEncoder` subclasses over tiny random ``transformers`` models (ViT
for images, BERT over the byte tokenizer's ids for text), saved with ``save_pretrained`` and loaded by path: what the
feature-cache tests and ``bench/feature_cache.py`` build on. Importing this module registers them as the encoders
``cache_vit`` and ``cache_bert`` (usable from a config through ``plugins=[tests.helpers.cache_backbones]``).

Legend: B batch, T text tokens, N tokens, H hidden size, D dim.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmgpt import registry
from mmgpt.encoders.backbone import BackboneEncoder, BackboneIdentity
from mmgpt.encoders.base import EncoderOutput
from mmgpt.encoders.tuning import Tuning
from mmgpt.layers.init import mark_pretrained
from mmgpt.tokenizer import ByteTokenizer


def sha256_of(folder: str | Path) -> str:
    """A content hash of every file of a ``save_pretrained`` folder."""
    h = hashlib.sha256()
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file():
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def save_vit(path: Path, *, image_size: int = 16, hidden_size: int = 32, num_layers: int = 2, seed: int = 0,
             **config: Any) -> Path:
    """A random ViT saved with ``save_pretrained`` (``ViTConfig()`` defaults are ViT-Base at 224 pixels)."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    cfg = ViTConfig(image_size=image_size, patch_size=config.pop("patch_size", 8), hidden_size=hidden_size,
                    num_hidden_layers=num_layers, num_attention_heads=config.pop("num_attention_heads", 2),
                    intermediate_size=config.pop("intermediate_size", 2 * hidden_size), **config)
    ViTModel(cfg, add_pooling_layer=False).save_pretrained(path)
    return path


def save_bert(path: Path, *, hidden_size: int = 32, num_layers: int = 2, seed: int = 0, **config: Any) -> Path:
    """A random BERT over the byte tokenizer's vocabulary, saved with ``save_pretrained``."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=ByteTokenizer.vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                     num_attention_heads=config.pop("num_attention_heads", 2),
                     intermediate_size=config.pop("intermediate_size", 2 * hidden_size),
                     hidden_dropout_prob=config.pop("hidden_dropout_prob", 0.0),
                     attention_probs_dropout_prob=config.pop("attention_probs_dropout_prob", 0.0), **config)
    BertModel(cfg, add_pooling_layer=False).save_pretrained(path)
    return path


class _Backbone(BackboneEncoder):
    """Counts :meth:`hidden` calls (``calls``, per class) so tests can tell when the backbone ran."""

    calls = 0

    def __init__(self, *, model: nn.Module, path: str, dim: int, layer: int,
                 tuning: Tuning | Mapping[str, Any] | None) -> None:
        super().__init__(backbone=mark_pretrained(model), hidden_size=model.config.hidden_size, dim=dim,
                         identity=BackboneIdentity(path, sha256_of(path)), tuning=tuning)
        self.layer = layer  # the builder applies the tuning (mmgpt.encoders.tuning)

    def _states(self, out: Any) -> Tensor:
        type(self).calls += 1
        return out.last_hidden_state if self.layer == -1 else out.hidden_states[self.layer]

    def layers(self) -> list[nn.Module]:  # the blocks' ModuleList, wherever this transformers version puts it
        n = self.backbone.config.num_hidden_layers
        return next(list(m) for m in self.backbone.modules() if isinstance(m, nn.ModuleList) and len(m) == n)


class ViTBackbone(_Backbone):
    """A ViT from a local folder: images (B, 3, S, S) -> patch states (B, 1 + P, H), all valid."""

    def __init__(self, *, path: str, dim: int, layer: int = -1,
                 tuning: Tuning | Mapping[str, Any] | None = None) -> None:
        from transformers import ViTModel

        super().__init__(model=ViTModel.from_pretrained(path, add_pooling_layer=False), path=path, dim=dim,
                         layer=layer, tuning=tuning)

    def hidden(self, x: Tensor, mask: Tensor | None = None) -> EncoderOutput:
        h = self._states(self.backbone(pixel_values=x, output_hidden_states=self.layer != -1))  # (B, N, H)
        return EncoderOutput(h, torch.ones(h.shape[:2], dtype=torch.bool, device=h.device))


class BertBackbone(_Backbone):
    """A BERT from a local folder over byte-token ids (B, T) with their mask -> (B, T, H)."""

    def __init__(self, *, path: str, dim: int, layer: int = -1,
                 tuning: Tuning | Mapping[str, Any] | None = None) -> None:
        from transformers import BertModel

        super().__init__(model=BertModel.from_pretrained(path, add_pooling_layer=False), path=path, dim=dim,
                         layer=layer, tuning=tuning)

    def hidden(self, x: Tensor, mask: Tensor | None = None) -> EncoderOutput:
        mask = torch.ones_like(x, dtype=torch.bool) if mask is None else mask
        out = self.backbone(input_ids=x, attention_mask=mask.long(), output_hidden_states=self.layer != -1)
        return EncoderOutput(self._states(out), mask)  # (B, T, H)


registry.register("cache_vit", "encoder", ViTBackbone, replace=True)
registry.register("cache_bert", "encoder", BertBackbone, replace=True)
