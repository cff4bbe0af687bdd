"""Tiny networks for the decoder, objective and fine-tuning tests (dim 16, one layer each), built from typed specs
through :func:`mmgpt.registry.build_network`, as the YAML and the LightningModule build them."""

from __future__ import annotations

from typing import Any

from mmgpt.model import MultimodalTransformer
from mmgpt.registry import build_network

DIM, HEADS, IMAGE_SIZE = 16, 2, 16
MODS = ("audio", "image", "text")
FUSIONS = ["early", "late", "late_logit_average", "cross_attention"]


def tiny_spec(fusion: str = "early", decoder: bool = True, max_length: int = 48) -> dict[str, Any]:
    """The network spec of a tiny network with the named fusion (+ a decoder, paired with it by the registry)."""
    sizes = {"dim": DIM, "num_layers": 1, "num_heads": HEADS}
    fusions = {
        "early": {"type": "early", **sizes},
        "late": {"type": "late", **sizes, "combiner": {"type": "concat_mlp", "modalities": list(MODS), "dim": DIM}},
        "late_logit_average": {"type": "late", **sizes, "combiner": {"type": "logit_average"}},
        "cross_attention": {"type": "cross_attention", **sizes, "gate_init": 0.0},
    }
    return {
        "encoders": {
            "text": {"type": "text_encoder", **sizes, "max_length": max_length},
            "image": {"type": "image_encoder", **sizes, "image_size": IMAGE_SIZE, "patch_size": 8},
            "audio": {"type": "audio_encoder", **sizes, "n_mels": 16, "n_fft": 128, "hop_length": 80},
        },
        "fusion": {**fusions[fusion], "modalities": list(MODS)},
        "head": {"type": "classification_head", "dim": DIM},
        "decoder": {"type": "text_decoder", **sizes, "max_length": max_length, "gate_init": 0.5} if decoder else None,
    }


def tiny_net(
    fusion: str = "early", num_classes: int = 5, decoder: bool = True, max_length: int = 48
) -> MultimodalTransformer:
    """encoders + the named fusion + head (+ the decoder that matches the fusion)."""
    return build_network(tiny_spec(fusion, decoder, max_length), num_classes)


#: Texts the tiny pretrained-LM tokenizers are trained on (the synthetic set's caption words).
CAPTION_WORDS = ("1 2 3 red green blue circle circles square squares triangle triangles low mid high beep beeps "
                 "chirp chirps; ")


def tiny_hf_lm(path, *, n_embd: int = 32, n_layer: int = 2, n_head: int = 2, n_positions: int = 256, seed: int = 0):
    """A tiny random GPT-2 (``GPT2LMHeadModel``) with its own byte-level BPE tokenizer, saved with
    ``save_pretrained`` into ``path`` exactly as a downloaded model folder is laid out; returns the model."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CAPTION_WORDS] * 20, trainer=trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                                eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.save_pretrained(path)
    cfg = transformers.GPT2Config(n_embd=n_embd, n_layer=n_layer, n_head=n_head, vocab_size=len(fast),
                                  n_positions=n_positions, bos_token_id=fast.bos_token_id,
                                  eos_token_id=fast.eos_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(path)
    return model
