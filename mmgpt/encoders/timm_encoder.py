"""timm image models as mmgpt encoders: ``timm.create_model`` + ``forward_features`` -> tokens + a projection.

``forward_features`` gives (B, N, H) tokens for ViT-style models (class token and patches) or a (B, H, h, w) feature
map for CNNs (ResNet, ConvNeXt, EfficientNet), which becomes h * w tokens; every token is valid. ``timm`` is
imported in the constructor only. Legend: B batch, N tokens, H ``num_features``, D dim.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmgpt.encoders.backbone import BackboneEncoder, BackboneIdentity
from mmgpt.encoders.base import EncoderOutput
from mmgpt.encoders.hf import BackboneNotFound, as_tokens, repeated_blocks, weights_sha256
from mmgpt.encoders.tuning import Tuning
from mmgpt.errors import UserError
from mmgpt.layers import mark_pretrained


def create_timm_model(model_name: str, *, checkpoint_path: str | None = None, pretrained: bool = False,
                      model_kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """``timm.create_model`` with the classifier removed; weights from ``checkpoint_path`` (a state dict file) or,
    with ``pretrained``, timm's own (downloaded unless cached). One :class:`~mmgpt.errors.UserError` line otherwise."""
    import timm

    kwargs = {"num_classes": 0, **dict(model_kwargs or {})}
    if checkpoint_path is not None and not Path(checkpoint_path).is_file():
        raise BackboneNotFound(f"checkpoint_path={checkpoint_path!r}: no such file")
    if checkpoint_path is not None:  # timm reads it with weights-only loading too, but with a traceback
        from mmgpt.encoders.model_folder import check_weights_file

        check_weights_file(checkpoint_path, f"checkpoint_path={checkpoint_path}")
    try:
        return timm.create_model(model_name, pretrained=pretrained, checkpoint_path=checkpoint_path or "", **kwargs)
    except RuntimeError as e:  # unknown model name, or a checkpoint of another shape
        raise UserError(f"timm model {model_name!r}: {str(e).splitlines()[0]}") from e
    except OSError as e:  # pretrained=True without network or cache
        raise BackboneNotFound(f"timm model {model_name!r} (pretrained=true): cannot fetch its weights "
                               f"({str(e).splitlines()[0]}); save them with `torch.save(model.state_dict(), FILE)` "
                               "on a machine with network and set checkpoint_path=FILE, pretrained=false") from e


class TimmImageEncoder(BackboneEncoder):
    """A timm model's ``forward_features`` as image tokens (B, N, H), projected to ``dim``.

    Args:
        model_name: a ``timm.create_model`` name (``timm.list_models()``).
        dim: D, the width of the projected tokens.
        checkpoint_path: a state dict file (``.safetensors``, ``.pth``) to load; its hash is the identity.
        pretrained: load timm's own pretrained weights (needs network or timm's cache); ignored with a checkpoint.
        model_kwargs: more ``timm.create_model`` arguments (e.g. ``img_size``, ``drop_path_rate``).
        data_config: overrides of the model's data config (``input_size``, ``mean``, ``std``, ``crop_pct``,
            ``interpolation``) for its processor; the encoder itself does not use them.
        tuning: fine-tuning controls (default frozen).
    """

    modality_kind = "image"

    def __init__(self, *, model_name: str, dim: int, checkpoint_path: str | None = None, pretrained: bool = False,
                 model_kwargs: Mapping[str, Any] | None = None, data_config: Mapping[str, Any] | None = None,
                 tuning: Tuning | Mapping[str, Any] | None = None) -> None:
        model = create_timm_model(model_name, checkpoint_path=checkpoint_path,
                                  pretrained=pretrained and checkpoint_path is None, model_kwargs=model_kwargs)
        source = checkpoint_path or f"timm:{model_name}" + (":pretrained" if pretrained else ":random")
        sha = weights_sha256(checkpoint_path) if checkpoint_path else "unverified"
        super().__init__(backbone=mark_pretrained(model), hidden_size=model.num_features, dim=dim,
                         identity=BackboneIdentity(name_or_path=source, sha256=sha), tuning=tuning)
        self.model_name = model_name

    def layers(self) -> list[nn.Module]:
        """ViT ``blocks``, ConvNeXt ``stages``...; else the stages timm's ``feature_info`` names (ResNet layer1-4)."""
        blocks = repeated_blocks(self.backbone)
        if len(blocks) < 2:
            info = getattr(self.backbone, "feature_info", None) or []
            blocks = [self.backbone.get_submodule(f["module"]) for f in info if f.get("module")]
            blocks = [b for b in blocks if any(True for _ in b.parameters())]
        return blocks

    def hidden(self, x: Tensor, mask: Tensor | None = None) -> EncoderOutput:
        tokens = as_tokens(self.backbone.forward_features(x))  # (B, N, H)
        return EncoderOutput(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device))
