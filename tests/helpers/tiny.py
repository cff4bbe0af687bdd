"""Tiny networks for the decoder, objective and fine-tuning tests (dim 16, one layer each)."""

from __future__ import annotations

from mmgpt.decoder import FusedPrefix, MediaContext, PooledPrefix, TextDecoder
from mmgpt.encoders import AudioEncoder, ImageEncoder, TextEncoder
from mmgpt.fusion import ConcatMLP, CrossAttentionFusion, EarlyFusion, LateFusion, LogitAverage
from mmgpt.model import ClassificationHead, MultimodalTransformer

DIM, HEADS, IMAGE_SIZE = 16, 2, 16
MODS = ("audio", "image", "text")
FUSIONS = ["early", "late", "late_logit_average", "cross_attention"]


def tiny_net(fusion: str = "early", num_classes: int = 5, decoder: bool = True, max_length: int = 48) -> MultimodalTransformer:
    """encoders + the named fusion + head (+ the decoder that matches the fusion)."""
    enc = {
        "text": TextEncoder(DIM, 1, HEADS, max_length=max_length),
        "image": ImageEncoder(DIM, 1, HEADS, image_size=IMAGE_SIZE, patch_size=8),
        "audio": AudioEncoder(DIM, 1, HEADS, n_mels=16, n_fft=128, hop_length=80),
    }
    if fusion == "early":
        fus, cond, cross = EarlyFusion(MODS, DIM, 1, HEADS), FusedPrefix(DIM), False
    elif fusion == "late":
        fus, cond, cross = LateFusion(MODS, DIM, 1, HEADS, ConcatMLP(MODS, DIM)), PooledPrefix(DIM), False
    elif fusion == "late_logit_average":
        fus, cond, cross = LateFusion(MODS, DIM, 1, HEADS, LogitAverage()), PooledPrefix(DIM), False
    elif fusion == "cross_attention":
        fus, cond, cross = CrossAttentionFusion(MODS, DIM, 1, HEADS, gate_init=0.0), MediaContext(DIM), True
    else:
        raise ValueError(fusion)
    dec = TextDecoder(cond, DIM, 1, HEADS, max_length=max_length, cross_attention=cross, gate_init=0.5) if decoder else None
    return MultimodalTransformer(enc, fus, ClassificationHead(DIM, num_classes), decoder=dec)
