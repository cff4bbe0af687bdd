"""Builder functions for the shipped networks: the network of ``mmgpt-train model/fusion=<name>`` (scratch text,
image and audio encoders, that fusion, a classification head, and for captioning the text decoder), built in
Python without composing any YAML, as TorchMultimodal's ``clip_vit_b16()`` or torchtune's ``gemma_2b()`` are::

    net = early_fusion(num_classes=10)
    net = resampler_fusion(num_classes=10, sizes=Sizes(dim=128), decoder=True)

Each builder writes the same typed spec that ``conf/model/`` composes (a test checks that they agree for every
option of ``conf/model/fusion/``) and builds it with :func:`mmgpt.registry.build_network`; :func:`network_spec`
returns the spec itself. A fusion added as a YAML file gets its builder here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mmgpt.model import MultimodalTransformer
from mmgpt.registry import build_network

Spec = dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class Sizes:
    """The sizes a shipped network is built with: ``conf/model/default.yaml``'s shared sizes, the data's sizes
    (``data=synthetic``'s by default) and the scratch encoders' front ends (``conf/model/encoder/*/scratch.yaml``).

    Attributes:
        dim: width D of every part. num_heads: attention heads. mlp_ratio: MLP hidden width / D.
        dropout: dropout rate. encoder_layers: Transformer blocks per encoder.
        image_size: side of the square images. patch_size: image patch side.
        sample_rate: audio sample rate (Hz). n_mels: mel bins. n_fft: FFT size.
        max_text_length: longest text (tokens) the text encoder and decoder take.
    """

    dim: int = 64
    num_heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    encoder_layers: int = 1
    image_size: int = 32
    patch_size: int = 8
    sample_rate: int = 8000
    n_mels: int = 32
    n_fft: int = 256
    max_text_length: int = 64


MODALITIES = ("text", "image", "audio")


def _block(s: Sizes, num_layers: int) -> Spec:
    """The arguments every Transformer-based part shares."""
    return {"dim": s.dim, "num_layers": num_layers, "num_heads": s.num_heads, "mlp_ratio": s.mlp_ratio,
            "dropout": s.dropout}


def scratch_encoders(s: Sizes) -> dict[str, Spec]:
    """Text, image and audio encoders trained from scratch (``conf/model/encoder/<kind>/scratch.yaml``)."""
    layers = _block(s, s.encoder_layers)
    return {
        "text": {"type": "text_encoder", **layers, "max_length": s.max_text_length, "tokenizer": None,
                 "causal": False},
        "image": {"type": "image_encoder", **layers, "image_size": s.image_size, "patch_size": s.patch_size,
                  "stem": {"type": "conv_stem", "dim": s.dim, "patch_size": s.patch_size}},
        "audio": {"type": "audio_encoder", **layers, "sample_rate": s.sample_rate, "n_mels": s.n_mels,
                  "n_fft": s.n_fft, "hop_length": 80, "max_frames": 256},
    }


def text_decoder(s: Sizes) -> Spec:
    """The GPT text decoder of captioning (``conf/model/decoder/default.yaml``); its conditioning follows the fusion."""
    return {"type": "text_decoder", **_block(s, 2), "max_length": s.max_text_length, "tokenizer": None,
            "gate_init": 0.0}


# One function per option of conf/model/fusion/: (sizes, modalities) -> the fusion's spec.
def early(s: Sizes, modalities: list[str]) -> Spec:
    return {"type": "early", "modalities": modalities, **_block(s, 3)}


def late(s: Sizes, modalities: list[str]) -> Spec:
    combiner = {"type": "concat_mlp", "modalities": modalities, "dim": s.dim, "mlp_ratio": s.mlp_ratio,
                "dropout": s.dropout}
    return {"type": "late", "modalities": modalities, **_block(s, 1), "combiner": combiner}


def cross_attention(s: Sizes, modalities: list[str]) -> Spec:
    return {"type": "cross_attention", "modalities": modalities, **_block(s, 2), "query": "text", "gate_init": None}


def tensor(s: Sizes, modalities: list[str]) -> Spec:
    return {"type": "tensor", "modalities": modalities, "dim": s.dim, "modality_dim": 8, "mlp_ratio": s.mlp_ratio,
            "dropout": s.dropout}


def low_rank(s: Sizes, modalities: list[str]) -> Spec:
    return {"type": "low_rank", "modalities": modalities, "dim": s.dim, "modality_dim": 16, "rank": 4,
            "dropout": s.dropout}


def mult(s: Sizes, modalities: list[str]) -> Spec:
    return {"type": "mult", "modalities": modalities, **_block(s, 1), "self_layers": 1}


def bottleneck(s: Sizes, modalities: list[str]) -> Spec:
    return {"type": "bottleneck", "modalities": modalities, **_block(s, 3), "num_bottlenecks": 4, "fusion_layer": 1}


def resampler(s: Sizes, modalities: list[str]) -> Spec:
    return {"type": "resampler", "modalities": modalities, **_block(s, 2), "num_queries": 8}


def concat(s: Sizes, modalities: list[str]) -> Spec:
    return {"type": "concat", "modalities": modalities, "dim": s.dim, "input_dims": None}


def early_lstm(s: Sizes, modalities: list[str]) -> Spec:
    return {"type": "early_lstm", "modalities": modalities, "input_dims": None, "dim": s.dim, "steps": 50,
            "num_layers": 1, "dropout": s.dropout}


def mult_mmsa(s: Sizes, modalities: list[str]) -> Spec:
    d = s.dropout
    return {"type": "mult_mmsa", "modalities": modalities, "dim": s.dim, "num_heads": s.num_heads, "num_layers": 1,
            "self_layers": 1, "cross_attn_dropout": None, "attn_dropout": d, "relu_dropout": d, "res_dropout": d,
            "embed_dropout": d, "causal": True, "order": None}


def _unimodal(modality: str) -> Callable[[Sizes, list[str]], Spec]:
    def fusion(s: Sizes, modalities: list[str]) -> Spec:
        return {"type": "unimodal", "modalities": [modality], "dim": s.dim}

    fusion.__name__ = f"unimodal_{modality}"
    return fusion


#: Option name (the file name under conf/model/fusion/) -> the function writing that fusion's spec.
FUSIONS: dict[str, Callable[[Sizes, list[str]], Spec]] = {
    "early": early, "late": late, "cross_attention": cross_attention, "tensor": tensor, "low_rank": low_rank,
    "mult": mult, "bottleneck": bottleneck, "resampler": resampler,
    **{f"unimodal_{m}": _unimodal(m) for m in sorted(MODALITIES)},
}


#: The fusions of MMSA's LF-DNN, EF-LSTM and MulT (``experiment=mosi_mmsa_lf_dnn`` / ``_ef_lstm`` / ``_mult``), which
#: the shipped text / image / audio network cannot run as it is: ``concat`` outputs the encoders' widths summed and
#: ``mult_mmsa`` (M - 1) M dim features (the head takes that width, ``model.net.head.dim=null``), ``early_lstm``
#: needs aligned modalities. Their specs, as composed.
FEATURE_FUSIONS: dict[str, Callable[[Sizes, list[str]], Spec]] = {"concat": concat, "early_lstm": early_lstm,
                                                                   "mult_mmsa": mult_mmsa}


def network_spec(fusion: str = "early", sizes: Sizes = Sizes(), *, decoder: bool = False) -> Spec:
    """The spec of the shipped network with ``fusion`` (a key of :data:`FUSIONS`): what
    ``mmgpt-train model/fusion=<fusion>`` composes into ``model.net`` (``task=caption`` adds the decoder)."""
    known = {**FUSIONS, **FEATURE_FUSIONS}
    if fusion not in known:
        raise KeyError(f"no preset {fusion!r} (presets: {', '.join(known)})")
    encoders = scratch_encoders(sizes)
    return {
        "encoders": encoders,
        "fusion": known[fusion](sizes, sorted(encoders)),
        "decoder": text_decoder(sizes) if decoder else None,
        "head": {"type": "classification_head", "dim": sizes.dim, "dropout": sizes.dropout},
    }


def build(fusion: str, num_classes: int, sizes: Sizes = Sizes(), *, decoder: bool = False) -> MultimodalTransformer:
    """The shipped network with ``fusion``, built (weights initialised once, as every network is)."""
    return build_network(network_spec(fusion, sizes, decoder=decoder), num_classes)


def early_fusion(num_classes: int, sizes: Sizes = Sizes(), *, decoder: bool = False) -> MultimodalTransformer:
    """Every modality's tokens concatenated (+ CLS) through one Transformer (``model/fusion=early``)."""
    return build("early", num_classes, sizes, decoder=decoder)


def late_fusion(num_classes: int, sizes: Sizes = Sizes(), *, decoder: bool = False) -> MultimodalTransformer:
    """A Transformer per modality, pooled vectors combined by an MLP (``model/fusion=late``)."""
    return build("late", num_classes, sizes, decoder=decoder)


def cross_attention_fusion(num_classes: int, sizes: Sizes = Sizes(), *,
                           decoder: bool = False) -> MultimodalTransformer:
    """Text tokens cross-attending to the other modalities (``model/fusion=cross_attention``)."""
    return build("cross_attention", num_classes, sizes, decoder=decoder)


def resampler_fusion(num_classes: int, sizes: Sizes = Sizes(), *, decoder: bool = False) -> MultimodalTransformer:
    """Learned queries cross-attending to every modality's tokens (``model/fusion=resampler``)."""
    return build("resampler", num_classes, sizes, decoder=decoder)
