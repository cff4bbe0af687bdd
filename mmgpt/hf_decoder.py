"""Any Hugging Face ``transformers`` causal LM (GPT-2 family and the like) as mmgpt's text decoder.

:class:`HFDecoder` keeps :class:`~mmgpt.decoder.TextDecoder`'s interface (``conditioner``, ``max_length``,
``tokenizer``, ``new_cache()``, ``forward(ids, cond, mask, positions, cache) -> DecoderOutput``), so the LM
objective, captioning and ``mmgpt-generate`` use it unchanged. The media reach the LM in one of two ways, chosen by
the fusion (:func:`mmgpt.registry.decoder_pairing`):

* a prefix (early fusion: the fused tokens; late fusion: the pooled vectors), projected to the LM's width and
  placed before the text as ``inputs_embeds``; the LM is causal over the whole sequence, so the prefix attends
  causally among itself (LLaVA-style), and the text attends to all of it. The prefix takes positions ``0..P-1``,
  the text ``P..``;
* the LM's own cross-attention (cross-attention fusion): the model is loaded with ``add_cross_attention=True``
  (new, randomly initialised cross-attention layers) and attends to the projected media context. The new layers'
  output projections start at zero, so the decoder starts as the pretrained LM (as mmgpt's closed tanh gates do).

Its tokenizer is the model's own (``AutoTokenizer`` from the same folder): captions, prompts and generated text go
through it. ``transformers`` is imported only when an ``HFDecoder`` is built.

Legend: B batch, T text tokens, P prefix tokens, M context tokens, D mmgpt dim, H the LM's hidden size, V vocabulary.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mmgpt.decoder import Conditioner, Conditioning, DecoderOutput
from mmgpt.errors import UserError
from mmgpt.layers import mark_pretrained
from mmgpt.tokenizer import HFTokenizer

log = logging.getLogger(__name__)

#: Last names of the output projection of an attention module; the new cross-attention layers' ones start at 0.
_OUTPUT_PROJECTIONS = ("c_proj", "o_proj", "out_proj", "dense")


@dataclass
class HFDecoderCache:
    """The LM's own KV cache plus the key padding mask of everything already seen (prefix and text).

    Attributes:
        past: the LM's cache object (``transformers`` ``Cache``), None before the first call.
        key_mask: (B, P + T_seen) bool over cached positions; None before the first call.
        prefix_len: P, the prefix length of the first call (text positions are offset by it).
    """

    past: Any = None
    key_mask: Tensor | None = None
    prefix_len: int = 0

    @property
    def empty(self) -> bool:
        return self.key_mask is None


class HFDecoder(nn.Module):
    """A pretrained ``AutoModelForCausalLM`` conditioned on the media (see the module doc).

    Args:
        conditioner: how the fused media become a prefix or a cross-attention context (width ``dim``).
        name_or_path: a local folder in ``save_pretrained`` format (or a hub id, where the network allows).
        dim: D, the width of the conditioning (``model.dim``); projected to the LM's hidden size H.
        cross_attention: load the LM with new cross-attention layers and attend to the conditioner's context.
        max_length: longest text in tokens (BOS/EOS included); default the LM's position limit.
        load_weights: False builds the architecture from ``config.json`` only (a checkpoint's state dict then
            supplies every weight; set when a checkpoint is rebuilt).
        freeze_lm: keep the pretrained weights fixed (no gradients); the new cross-attention layers and the media
            projection still train (Flamingo's recipe: a frozen LM, new gated layers).
        trust_remote_code: run code shipped with the model folder (refused by the spec check unless set).
    """

    def __init__(
        self,
        *,
        conditioner: Conditioner,
        name_or_path: str,
        dim: int,
        cross_attention: bool = False,
        max_length: int | None = None,
        load_weights: bool = True,
        freeze_lm: bool = False,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModelForCausalLM

        from mmgpt.encoders.hf import load_pretrained, warn_remote_code

        if str(name_or_path) in ("", "???"):
            raise UserError("model.decoder.name_or_path: missing; model/decoder=hf needs the LM's folder "
                            "(model.decoder.name_or_path=DIR, a save_pretrained folder)")
        self.conditioner = conditioner
        self.name_or_path = str(name_or_path)
        self.cross_attention = cross_attention
        warn_remote_code(self.name_or_path, trust_remote_code)
        what = "model.net.decoder.name_or_path"
        extra = {"add_cross_attention": True, "is_decoder": True} if cross_attention else {}
        with _quiet_transformers():  # our own log line below says what was loaded and what is new
            # One loader for every pretrained part (mmgpt.encoders.hf): a local folder, the hub cache, or the hub
            # where the network allows it; otherwise one line naming the id (nothing hangs on a download).
            config = load_pretrained(AutoConfig.from_pretrained, self.name_or_path, what=what,
                                     trust_remote_code=trust_remote_code, **extra)
            if load_weights:
                lm, info = load_pretrained(AutoModelForCausalLM.from_pretrained, self.name_or_path, what=what,
                                           config=config, output_loading_info=True,
                                           trust_remote_code=trust_remote_code)
            else:
                lm, info = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code), None
        if cross_attention and "encoder_hidden_states" not in inspect.signature(lm.forward).parameters:
            raise UserError(f"model.net.decoder: {self.name_or_path} ({config.model_type}) has no cross-attention "
                            "layers; use a prefix fusion (early, late) with this LM")
        self.lm = mark_pretrained(lm.train())  # from_pretrained returns eval mode; follow the network's mode
        # (init_weights leaves the marked LM alone)
        # Parameters the pretrained weights did not have (the new cross-attention layers). Rebuilt from a
        # checkpoint (no weights read), they are told apart by name.
        params = dict(lm.named_parameters())
        new = set(info.get("missing_keys", [])) & set(params) if info is not None else \
            {n for n in params if cross_attention and "cross" in n}
        if cross_attention and info is not None:
            self._zero_new_cross_attention_outputs(sorted(new))
        if freeze_lm:
            for name, p in params.items():
                p.requires_grad_(name in new)
        self.hidden_size = int(lm.get_input_embeddings().weight.shape[1])
        self.n_positions = _position_limit(config)
        self.max_length = int(max_length) if max_length is not None else (self.n_positions or 1024)
        self.media_proj = nn.Linear(dim, self.hidden_size)  # (B, *, D) -> (B, *, H)
        self.vocab_size = int(lm.get_output_embeddings().weight.shape[0])
        self._cache_kw = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
        self._trust_remote_code = trust_remote_code
        _ = self.tokenizer  # loaded now: a folder without tokenizer files fails when the network is built
        log.info("HF decoder %s (%s): H=%d, V=%d, %s", self.name_or_path, config.model_type, self.hidden_size,
                 self.vocab_size, "cross-attention" if cross_attention else "prefix conditioning")

    def _zero_new_cross_attention_outputs(self, missing: list[str]) -> None:
        """Zero the output projections of the cross-attention layers the checkpoint did not have."""
        zeroed = []
        params = dict(self.lm.named_parameters())
        for key in missing:
            parts = key.split(".")
            if key in params and any("cross" in p for p in parts) and len(parts) > 1 \
                    and parts[-2] in _OUTPUT_PROJECTIONS:
                with torch.no_grad():
                    params[key].zero_()
                zeroed.append(key)
        new = [k for k in missing if "cross" in k]
        log.info("new cross-attention parameters: %d tensors (%d output projections start at 0)", len(new), len(zeroed))

    def layers(self) -> list[nn.Module]:
        """The LM's repeated blocks, input side first (``transformer.h``, ``model.layers``...), for activation
        checkpointing and FSDP wrapping."""
        from mmgpt.encoders.hf import repeated_blocks

        return repeated_blocks(self.lm)

    @functools.cached_property
    def tokenizer(self) -> HFTokenizer:
        """The LM's own tokenizer (``AutoTokenizer`` from ``name_or_path``), truncating at ``max_length``."""
        from mmgpt.encoders.hf import load_pretrained

        return load_pretrained(lambda path, **kw: HFTokenizer(path, self.max_length, **kw), self.name_or_path,
                               what="model.net.decoder.name_or_path", vocab_size=self.vocab_size,
                               trust_remote_code=self._trust_remote_code)

    def new_cache(self) -> HFDecoderCache:
        """An empty cache for :meth:`forward` (the LM creates its own cache object on the first call)."""
        return HFDecoderCache()

    def forward(
        self,
        ids: Tensor,
        cond: Conditioning,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        cache: HFDecoderCache | None = None,
    ) -> DecoderOutput:
        """Next-token logits for ``ids``; arguments as :meth:`mmgpt.decoder.TextDecoder.forward`."""
        B, T = ids.shape
        if mask is None:
            mask = torch.ones(B, T, dtype=torch.bool, device=ids.device)
        first = cache is None or cache.empty
        if positions is None:
            start = 0 if first else int(cache.key_mask.shape[1] - cache.prefix_len)  # type: ignore[union-attr]
            positions = torch.arange(start, start + T, device=ids.device).expand(B, T)
        if int(positions.max()) >= self.max_length:
            raise ValueError(f"text position {int(positions.max())} is beyond the decoder's "
                             f"max_length={self.max_length}")
        x = self.lm.get_input_embeddings()(ids)  # (B, T, H)
        P = cache.prefix_len if not first else 0  # type: ignore[union-attr]
        pos = positions
        if first and cond.prefix is not None:
            P = cond.prefix.shape[1]
            x = torch.cat([self.media_proj(cond.prefix).to(x.dtype), x], dim=1)  # (B, P + T, H)
            mask = torch.cat([cond.prefix_mask, mask], dim=1)  # (B, P + T)
            pos = torch.cat([torch.arange(P, device=ids.device).expand(B, P), positions + P], dim=1)
        elif P:
            pos = positions + P
        if self.n_positions is not None and int(pos.max()) >= self.n_positions:
            raise ValueError(f"prefix ({P}) + text position {int(positions.max())} exceed the LM's "
                             f"{self.n_positions} positions")
        key_mask = mask if first else torch.cat([cache.key_mask, mask], dim=1)  # type: ignore[union-attr]
        kwargs: dict[str, Any] = {}
        if self.cross_attention:
            if cond.context is None or cond.context_mask is None:
                raise ValueError("this decoder cross-attends: its conditioner must return a context")
            kwargs["encoder_hidden_states"] = self.media_proj(cond.context).to(x.dtype)  # (B, M, H)
            kwargs["encoder_attention_mask"] = cond.context_mask.long()
        if cache is not None:
            kwargs[self._cache_kw] = cache.past
        out = self.lm(inputs_embeds=x, attention_mask=key_mask.long(), position_ids=pos, use_cache=cache is not None,
                      output_hidden_states=True, return_dict=True, **kwargs)
        if cache is not None:
            past = getattr(out, self._cache_kw, None)
            cache.past = past if past is not None else getattr(out, "past_key_values", None)
            cache.key_mask, cache.prefix_len = key_mask, P
        skip = P if first else 0
        return DecoderOutput(logits=out.logits[:, skip:], hidden=out.hidden_states[-1][:, skip:])


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """``transformers``' own loading report and progress bars off while a decoder loads (restored after)."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _position_limit(config: Any) -> int | None:
    """The LM's number of positions (None when it has no fixed limit we can read)."""
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
