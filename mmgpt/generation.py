"""Text generation with the decoder of a :class:`~mmgpt.model.MultimodalTransformer`.

Greedy decoding or sampling (temperature, top-k, top-p), batched with left-padded prompts, stopping at the end
token, with a KV cache so each new token costs one decoder step (``use_cache=False`` re-runs the whole
sequence each step; both give the same tokens).

Legend: B batch, T text tokens, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mmgpt.batch import MultimodalBatch
from mmgpt.model import MultimodalTransformer
from mmgpt.tokenizer import Tokenizer


@dataclass
class GenerationConfig:
    """How to pick tokens.

    Attributes:
        max_new_tokens: stop after this many generated tokens.
        temperature: 0 for greedy decoding; otherwise logits are divided by it before sampling.
        top_k: sample among the k most likely tokens only (None: all).
        top_p: sample among the smallest set of tokens whose probability reaches p (nucleus; None: all).
        use_cache: reuse keys/values of earlier positions (one decoder step per token).
    """

    max_new_tokens: int = 48
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    use_cache: bool = True


@dataclass
class GenerationOutput:
    """Attributes:
    tokens: (B, T_new) generated ids; positions after a sample's end token are padding.
    texts: the decoded generated texts (prompt excluded).
    """

    tokens: Tensor
    texts: list[str]


def pick_next(logits: Tensor, config: GenerationConfig, generator: torch.Generator | None = None) -> Tensor:
    """Choose the next token (B,) from logits (B, V) as ``config`` says."""
    if config.temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / config.temperature
    if config.top_k is not None:
        kth = torch.topk(logits, min(config.top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p is not None:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p (the top token always stays).
        drop_sorted = probs.cumsum(dim=-1) - probs >= config.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def encode_prompts(prompts: Sequence[str], tokenizer: Tokenizer, device: torch.device) -> tuple[Tensor, Tensor]:
    """``<bos> + prompt`` per sample, left-padded so every prompt ends at the last column.

    Returns:
        ids (B, T0) and mask (B, T0), True = real token.
    """
    encoded = [[tokenizer.BOS, *tokenizer.encode(p, add_special=False)] for p in prompts]
    T0 = max(len(e) for e in encoded)
    ids = torch.full((len(prompts), T0), tokenizer.PAD, dtype=torch.long, device=device)
    mask = torch.zeros(len(prompts), T0, dtype=torch.bool, device=device)
    for i, e in enumerate(encoded):
        ids[i, T0 - len(e) :] = torch.tensor(e, dtype=torch.long, device=device)
        mask[i, T0 - len(e) :] = True
    return ids, mask


@torch.no_grad()
def generate(
    net: MultimodalTransformer,
    batch: MultimodalBatch,
    prompts: Sequence[str] | None = None,
    config: GenerationConfig | None = None,
    tokenizer: Tokenizer | None = None,
    generator: torch.Generator | None = None,
) -> GenerationOutput:
    """Continue ``prompts`` (default: empty) for every sample of ``batch``, conditioned on its media.

    Args:
        net: a network with a decoder.
        batch: the media to condition on (its text modality is ignored).
        prompts: one prompt per sample (may differ in length), or None for empty prompts.
        config: how to pick tokens.
        tokenizer: the decoder's tokenizer (default: ``net.decoder_tokenizer``, the one that fits the decoder).
        generator: random generator for sampling.
    Returns:
        :class:`GenerationOutput`.
    """
    config = config or GenerationConfig()
    decoder = net._need_decoder()
    tokenizer = tokenizer or net.decoder_tokenizer
    B = batch.batch_size
    prompts = list(prompts) if prompts is not None else [""] * B
    if len(prompts) != B:
        raise ValueError(f"{len(prompts)} prompts for a batch of {B}")
    ids, mask = encode_prompts(prompts, tokenizer, batch.device)  # (B, T0)
    if ids.shape[1] + config.max_new_tokens > decoder.max_length:
        raise ValueError(
            f"prompt ({ids.shape[1]} tokens) + max_new_tokens ({config.max_new_tokens}) exceed the decoder's "
            f"max_length={decoder.max_length}"
        )
    cond = net.condition(batch)
    positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T0): left padding keeps prompts at 0..
    cache = decoder.new_cache() if config.use_cache else None
    out_tokens: list[Tensor] = []
    finished = torch.zeros(B, dtype=torch.bool, device=batch.device)
    step_ids, step_mask, step_pos = ids, mask, positions
    for _ in range(config.max_new_tokens):
        logits = net.decode(batch, step_ids, step_mask, cond=cond, positions=step_pos, cache=cache).logits[:, -1]
        nxt = pick_next(logits, config, generator)  # (B,)
        nxt = torch.where(finished, torch.full_like(nxt, tokenizer.PAD), nxt)
        out_tokens.append(nxt)
        finished |= nxt == tokenizer.EOS
        if finished.all():
            break
        new_pos = positions[:, -1:] + 1  # (B, 1)
        ids = torch.cat([ids, nxt[:, None]], dim=1)  # (B, T + 1)
        mask = torch.cat([mask, torch.ones_like(nxt[:, None], dtype=torch.bool)], dim=1)
        positions = torch.cat([positions, new_pos], dim=1)
        if cache is not None:
            step_ids, step_mask, step_pos = nxt[:, None], mask[:, -1:], new_pos
        else:
            step_ids, step_mask, step_pos = ids, mask, positions
    tokens = torch.stack(out_tokens, dim=1)  # (B, T_new)
    return GenerationOutput(tokens=tokens, texts=[tokenizer.decode(t) for t in tokens])
