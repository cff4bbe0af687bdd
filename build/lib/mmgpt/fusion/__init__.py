"""Fusion strategies: one interface (:class:`Fusion`), swapped by Hydra's ``model/fusion`` group."""

from mmgpt.fusion.base import Fusion, FusionOutput, ModalityEmbedding
from mmgpt.fusion.cross_attention import CrossAttentionFusion
from mmgpt.fusion.early import EarlyFusion
from mmgpt.fusion.late import Combiner, ConcatMLP, LateFusion, LogitAverage

__all__ = [
    "Combiner",
    "ConcatMLP",
    "CrossAttentionFusion",
    "EarlyFusion",
    "Fusion",
    "FusionOutput",
    "LateFusion",
    "LogitAverage",
    "ModalityEmbedding",
]
