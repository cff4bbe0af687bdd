"""A test double of a pretrained backbone encoder: a tiny BERT from a ``transformers`` config, saved with
``save_pretrained`` and loaded back by path, as a user's download would be. Registered as ``test_bert`` (text:
byte-token ids go straight into BERT's embedding table, so the synthetic data trains it).

Legend: B batch, T text tokens, H hidden size, D model dim.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from mmgpt import registry
from mmgpt.encoders.backbone import BackboneEncoder, BackboneIdentity
from mmgpt.encoders.base import EncoderOutput
from mmgpt.encoders.tuning import Tuning

#: The byte tokenizer's vocabulary (256 bytes + 5 specials) and a text length above the synthetic questions'.
VOCAB, MAX_POSITIONS = 261, 128


def save_tiny_bert(path: Path, *, hidden_size: int = 32, num_layers: int = 3, seed: int = 0,
                   intermediate_size: int | None = None, num_heads: int = 2) -> Path:
    """A randomly initialised BERT saved with ``save_pretrained`` into ``path``; returns ``path``."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=hidden_size, num_hidden_layers=num_layers,
                        num_attention_heads=num_heads, intermediate_size=intermediate_size or 2 * hidden_size,
                        max_position_embeddings=MAX_POSITIONS, hidden_dropout_prob=0.1,
                        attention_probs_dropout_prob=0.1)
    BertModel(config, add_pooling_layer=False).save_pretrained(path)
    return path


def folder_sha256(path: Path) -> str:
    """A content hash of every file of a ``save_pretrained`` folder (names and bytes, in sorted order)."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


class TinyBertEncoder(BackboneEncoder):
    """A BERT read from ``name_or_path`` (a local ``save_pretrained`` folder) + a projection to ``dim``."""

    def __init__(self, *, name_or_path: str, dim: int, tuning: Tuning | Mapping[str, Any] | None = None) -> None:
        from transformers import BertModel

        backbone = BertModel.from_pretrained(name_or_path, add_pooling_layer=False)
        super().__init__(backbone=backbone, hidden_size=backbone.config.hidden_size, dim=dim,
                         identity=BackboneIdentity(str(name_or_path), folder_sha256(Path(name_or_path))),
                         tuning=tuning)

    def hidden(self, x: Tensor, mask: Tensor | None = None) -> EncoderOutput:
        mask = (x != 256) if mask is None else mask  # byte tokenizer's PAD
        out = self.backbone(input_ids=x, attention_mask=mask.long())
        return EncoderOutput(out.last_hidden_state, mask)  # (B, T, H)

    def layers(self) -> list[nn.Module]:
        return list(self.backbone.encoder.layer)


registry.register("test_bert", "encoder", TinyBertEncoder, replace=True)


def bert_spec(path: Path, dim: int = 16, **tuning: Any) -> dict[str, Any]:
    """A text-only network spec (late fusion) with the tiny BERT of ``path`` as text encoder."""
    return {
        "encoders": {"text": {"type": "test_bert", "name_or_path": str(path), "dim": dim, "tuning": tuning}},
        "fusion": {"type": "late", "modalities": ["text"], "dim": dim, "num_layers": 1, "num_heads": 2,
                   "combiner": {"type": "concat_mlp", "modalities": ["text"], "dim": dim}},
        "head": {"type": "classification_head", "dim": dim},
        "decoder": None,
    }


def bert_run_cfg(compose_cfg: Any, path: Path, tuning: Mapping[str, Any], *overrides: str, dim: int = 16) -> Any:
    """A short ``mmgpt-train`` config (smoke sizes, 2 epochs of 4 steps, text only) with the tiny BERT of ``path``
    as the text encoder, for :func:`mmgpt.cli.train.train`; ``overrides`` are Hydra overrides."""
    from omegaconf import OmegaConf, open_dict

    cfg = compose_cfg(["experiment=smoke", "logger=csv", "data.num_train=64", "data.num_val=16", "data.num_test=16",
                       "data.batch_size=16", "trainer.max_epochs=2", "plugins=[tests.helpers.bert_double]",
                       *overrides])
    with open_dict(cfg):
        cfg.model.net = OmegaConf.create(bert_spec(path, dim=dim, **tuning))
        cfg.model.fusion = cfg.model.net.fusion
    return cfg
