"""Modality encoders: raw input -> tokens (B, N, D) + padding mask (B, N)."""

from mmgpt.encoders.audio import AudioEncoder
from mmgpt.encoders.base import EncoderOutput
from mmgpt.encoders.image import ImageEncoder
from mmgpt.encoders.text import TextEncoder

__all__ = ["AudioEncoder", "EncoderOutput", "ImageEncoder", "TextEncoder"]
