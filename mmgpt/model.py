"""The multimodal Transformer: encoders -> fusion -> head, all injected.

Legend: B batch, K ensemble members, D dim, C classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from mmgpt.batch import MultimodalBatch
from mmgpt.encoders import EncoderOutput
from mmgpt.fusion import Fusion, FusionOutput


class ClassificationHead(nn.Module):
    """LayerNorm -> Dropout -> Linear, applied on the last dimension (works on (B, D) and (B, K, D))."""

    def __init__(self, dim: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Dropout(dropout), nn.Linear(dim, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@dataclass
class ModelOutput:
    """Attributes:
    logits: (B, C) class scores.
    fusion: the fusion output (pooled features, fused tokens).
    encoded: per-modality encoder outputs, masks already combined with sample presence.
    """

    logits: Tensor
    fusion: FusionOutput
    encoded: dict[str, EncoderOutput]


class MultimodalTransformer(nn.Module):
    """Encoders (one per modality) feed a fusion strategy whose pooled output feeds a head.

    Every encoder runs on every batch, also for samples that lack its modality (their tokens are masked out),
    so all parameters take part in every step and DDP needs no ``find_unused_parameters``.

    Args:
        encoders: modality name -> encoder module returning :class:`EncoderOutput`.
        fusion: the fusion strategy; it must have been built for the same modality names.
        head: maps pooled features (..., D) to logits (..., C).
    """

    def __init__(self, encoders: Mapping[str, nn.Module], fusion: Fusion, head: nn.Module) -> None:
        super().__init__()
        if set(encoders) != set(fusion.modalities):
            raise ValueError(f"encoders {sorted(encoders)} do not match fusion modalities {list(fusion.modalities)}")
        self.encoders = nn.ModuleDict({m: encoders[m] for m in sorted(encoders)})
        self.fusion = fusion
        self.head = head

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.encoders.keys())

    def encode(self, batch: MultimodalBatch) -> dict[str, EncoderOutput]:
        out: dict[str, EncoderOutput] = {}
        for m, encoder in self.encoders.items():
            enc = encoder(batch.inputs[m], batch.masks.get(m))
            out[m] = EncoderOutput(enc.tokens, enc.mask & batch.presence(m)[:, None])
        return out

    def forward(self, batch: MultimodalBatch) -> ModelOutput:
        encoded = self.encode(batch)
        fused = self.fusion({m: e.tokens for m, e in encoded.items()}, {m: e.mask for m, e in encoded.items()})
        logits = self.head(fused.pooled)  # (B, C) or (B, K, C)
        if fused.member_mask is not None:
            w = fused.member_mask.to(logits.dtype).unsqueeze(-1)  # (B, K, 1)
            logits = (logits * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)  # (B, C)
        return ModelOutput(logits=logits, fusion=fused, encoded=encoded)

    def param_counts(self) -> dict[str, int]:
        """Parameter count per part: each encoder, the fusion, the head, and the total."""
        counts = {f"encoders.{m}": _count(e) for m, e in self.encoders.items()}
        counts["fusion"] = _count(self.fusion)
        counts["head"] = _count(self.head)
        counts["total"] = _count(self)
        return counts


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
