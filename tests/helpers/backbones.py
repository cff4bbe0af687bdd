"""Tiny randomly initialised backbones, saved with ``save_pretrained`` into a folder and loaded by path, exactly as a
user's download would be (nothing is fetched: tokenizers are built from tiny vocabularies here).

Each factory ``make_<family>(root) -> Path`` writes the model and its processor / tokenizer into ``root/<family>``
and returns that folder. :data:`FAMILIES` maps a family to (factory, modality kind, encoder type). Shared by the
backbone, tuning, feature-cache and decoder tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

WORDS = ("the a red green blue square circle triangle big small dog cat sound image text of in on is and "
         "loud quiet high low note tone").split()
TEXTS = ["the red square is big", "a small blue circle", "loud high note", "the cat is on the green triangle"]
SAMPLE_RATE = 16000


def _seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)


def make_bert(root: Path) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = root / "bert"
    out.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *"abcdefghijklmnopqrstuvwxyz"]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, model_max_length=64).save_pretrained(out)
    _seeded(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).eval().save_pretrained(out)
    return out


def make_gpt2(root: Path) -> Path:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2Model, GPT2TokenizerFast

    out = root / "gpt2"
    out.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXTS * 4, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    bpe.save_model(str(out))
    merges = [tuple(m.split()) for m in (out / "merges.txt").read_text().splitlines()[1:] if m.strip()]
    tok = GPT2TokenizerFast(vocab=json.loads((out / "vocab.json").read_text()), merges=merges, model_max_length=64)
    tok.save_pretrained(out)
    _seeded(1)
    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    GPT2Model(config).eval().save_pretrained(out)
    return out


def make_vit(root: Path) -> Path:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    out = root / "vit"
    _seeded(2)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64)
    ViTModel(config).eval().save_pretrained(out)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6],
                      image_std=[0.2, 0.25, 0.3]).save_pretrained(out)
    return out


def make_clip(root: Path) -> Path:
    """A whole (dual-tower) CLIP model: the image encoder must pick its vision tower."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    out = root / "clip"
    _seeded(3)
    config = CLIPConfig(
        text_config={"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "intermediate_size": 64, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 1},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "intermediate_size": 64},
        projection_dim=16)
    CLIPModel(config).eval().save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def make_siglip(root: Path) -> Path:
    """A whole (dual-tower) SigLIP model: the image encoder loads its SiglipVisionModel."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    out = root / "siglip"
    _seeded(7)
    config = SiglipConfig(
        text_config={"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "intermediate_size": 64, "max_position_embeddings": 16},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "intermediate_size": 64})
    SiglipModel(config).eval().save_pretrained(out)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def make_convnext(root: Path) -> Path:
    """A two-stage ConvNeXt: its (B, 16, 4, 4) feature map becomes 16 tokens; its processor resizes the shortest
    edge to 32 / crop_pct and centre-crops 32."""
    from transformers import ConvNextConfig, ConvNextImageProcessor, ConvNextModel

    out = root / "convnext"
    _seeded(8)
    config = ConvNextConfig(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=32)
    ConvNextModel(config).eval().save_pretrained(out)
    ConvNextImageProcessor(size={"shortest_edge": 32}).save_pretrained(out)
    return out


def make_ast(root: Path) -> Path:
    """An Audio Spectrogram Transformer on a fixed 100-frame, 16-bin filterbank (its tokens are all valid)."""
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

    out = root / "ast"
    _seeded(9)
    config = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       max_length=100, num_mel_bins=16, frequency_stride=10, time_stride=10)
    ASTModel(config).eval().save_pretrained(out)
    ASTFeatureExtractor(num_mel_bins=16, max_length=100, sampling_rate=SAMPLE_RATE).save_pretrained(out)
    return out


def make_wav2vec2(root: Path) -> Path:
    """wav2vec 2.0 with a layer-norm feature extractor (the variant that takes an attention mask)."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    out = root / "wav2vec2"
    _seeded(4)
    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            conv_dim=(16, 16, 16), conv_stride=(5, 4, 2), conv_kernel=(10, 8, 4),
                            feat_extract_norm="layer", num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                            do_stable_layer_norm=True, mask_time_prob=0.0)
    Wav2Vec2Model(config).eval().save_pretrained(out)
    Wav2Vec2FeatureExtractor(sampling_rate=SAMPLE_RATE, do_normalize=True, return_attention_mask=True,
                             feature_size=1, padding_value=0.0).save_pretrained(out)
    return out


def make_whisper(root: Path) -> Path:
    """Whisper with a 1 s window (16 mel bins, 100 frames -> 50 encoder positions) instead of 30 s."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    out = root / "whisper"
    _seeded(5)
    config = WhisperConfig(vocab_size=64, d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=16,
                           max_source_positions=50, max_target_positions=16, pad_token_id=0, bos_token_id=1,
                           eos_token_id=2, decoder_start_token_id=1)
    WhisperModel(config).eval().save_pretrained(out)
    WhisperFeatureExtractor(feature_size=16, sampling_rate=SAMPLE_RATE, hop_length=160, chunk_length=1,
                            n_fft=400).save_pretrained(out)
    return out


def make_timm(root: Path) -> Path:
    """A tiny timm ViT (``pretrained=False``) whose state dict is saved to ``root/timm/model.safetensors``; the
    keyword arguments to rebuild it are :data:`TIMM_KWARGS`."""
    import timm
    from safetensors.torch import save_file

    out = root / "timm"
    out.mkdir(parents=True, exist_ok=True)
    _seeded(6)
    model = timm.create_model(TIMM_MODEL, pretrained=False, **TIMM_KWARGS)
    save_file(model.state_dict(), str(out / "model.safetensors"))
    return out / "model.safetensors"


TIMM_MODEL = "vit_tiny_patch16_224"
TIMM_KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 0}

#: family -> (factory, modality kind, registered encoder type)
FAMILIES: dict[str, tuple[Callable[[Path], Path], str, str]] = {
    "bert": (make_bert, "text", "hf_text"),
    "gpt2": (make_gpt2, "text", "hf_text"),
    "vit": (make_vit, "image", "hf_image"),
    "clip": (make_clip, "image", "hf_image"),
    "siglip": (make_siglip, "image", "hf_image"),
    "convnext": (make_convnext, "image", "hf_image"),
    "ast": (make_ast, "audio", "hf_audio"),
    "wav2vec2": (make_wav2vec2, "audio", "hf_audio"),
    "whisper": (make_whisper, "audio", "hf_audio"),
    "timm": (make_timm, "image", "timm_image"),
}


def encoder_spec(family: str, path: Path, dim: int = 16, **extra) -> dict:
    """The encoder spec (as YAML writes it) of a backbone made by :data:`FAMILIES`."""
    kind_type = FAMILIES[family][2]
    if kind_type == "timm_image":
        return {"type": "timm_image", "model_name": TIMM_MODEL, "checkpoint_path": str(path), "dim": dim,
                "model_kwargs": dict(TIMM_KWARGS), **extra}
    return {"type": kind_type, "name_or_path": str(path), "dim": dim, **extra}
