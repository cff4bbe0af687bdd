"""Fusion strategies: one interface (:class:`Fusion`), chosen by the ``model/fusion`` config group.

Each strategy is one class here plus one registry line and one YAML under ``conf/model/fusion/``; built from
``layers``, used by :class:`mmgpt.model.MultimodalTransformer`.
"""

from mmgpt.fusion.base import Fusion, FusionOutput, ModalityEmbedding
from mmgpt.fusion.bottleneck import BottleneckFusion
from mmgpt.fusion.concat import ConcatFusion
from mmgpt.fusion.cross_attention import CrossAttentionFusion
from mmgpt.fusion.early import EarlyFusion
from mmgpt.fusion.late import Combiner, ConcatMLP, LateFusion, LogitAverage
from mmgpt.fusion.mult import MulTFusion
from mmgpt.fusion.mult_mmsa import MMSAMulTFusion
from mmgpt.fusion.recurrent import EarlyLSTMFusion
from mmgpt.fusion.resampler import ResamplerFusion
from mmgpt.fusion.tensor import LowRankFusion, TensorFusion
from mmgpt.fusion.unimodal import UnimodalBaseline

__all__ = [
    "BottleneckFusion",
    "Combiner",
    "ConcatFusion",
    "ConcatMLP",
    "CrossAttentionFusion",
    "EarlyFusion",
    "EarlyLSTMFusion",
    "Fusion",
    "FusionOutput",
    "LateFusion",
    "LogitAverage",
    "LowRankFusion",
    "MMSAMulTFusion",
    "ModalityEmbedding",
    "MulTFusion",
    "ResamplerFusion",
    "TensorFusion",
    "UnimodalBaseline",
]
