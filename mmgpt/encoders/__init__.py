"""Modality encoders: raw input -> tokens (B, N, D) + padding mask (B, N). Image stems live with the image encoder.

Built from ``layers``; registered by name in :mod:`mmgpt.registry` (``text_encoder``, ``image_encoder``, ...).
"""

from mmgpt.encoders.audio import AudioEncoder
from mmgpt.encoders.base import EncoderOutput
from mmgpt.encoders.features import FeaturesEncoder
from mmgpt.encoders.image import ImageEncoder
from mmgpt.encoders.subnets import LSTMEncoder, MLPSubNet, RawFeatures, TemporalConv
from mmgpt.encoders.text import TextEncoder

__all__ = ["AudioEncoder", "EncoderOutput", "FeaturesEncoder", "ImageEncoder", "LSTMEncoder", "MLPSubNet",
           "RawFeatures", "TemporalConv", "TextEncoder"]
