"""The multimodal Transformer: encoders -> fusion -> head (classification) and, optionally, a text decoder (GPT).

Legend: B batch, K ensemble members, T text tokens, D dim, C classes, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmgpt.batch import MultimodalBatch
from mmgpt.decoder import Conditioning, DecoderCache, DecoderOutput, TextDecoder
from mmgpt.encoders import EncoderOutput
from mmgpt.errors import UserError
from mmgpt.fusion import Fusion, FusionOutput
from mmgpt.layers import Dropout, accept_unwrapped_names
from mmgpt.tokenizer import ByteTokenizer, Tokenizer


class ClassificationHead(nn.Module):
    """LayerNorm -> Dropout -> Linear, applied on the last dimension (works on (B, D) and (B, K, D))."""

    def __init__(self, *, dim: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), Dropout(dropout), nn.Linear(dim, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MLPHead(nn.Module):
    """Dropout -> [Linear -> ReLU -> Dropout] per hidden width -> Linear, optionally squashed into an output range.

    The post-fusion layers of MMSA's TFN and LF-DNN (``dropout`` on the fused vector, ReLU layers of
    ``hidden_dims``) and of its EF-LSTM (``hidden_dropout`` after the hidden layer too). With ``output_range``
    ``(low, high)`` the outputs are ``low + (high - low) * sigmoid(x)``: MMSA's TFN keeps its regression in
    (-3, 3) so (``sigmoid(x) * 6 - 3``).

    Args:
        dim: input width D (the fusion's output width).
        num_classes: outputs C.
        hidden_dims: widths of the hidden ReLU layers, in order.
        dropout: dropout on the input.
        hidden_dropout: dropout after each hidden layer.
        output_range: (low, high) bounds of a sigmoid on the outputs, or None for raw outputs.
    """

    def __init__(self, *, dim: int, num_classes: int, hidden_dims: Sequence[int] = (), dropout: float = 0.0,
                 hidden_dropout: float = 0.0, output_range: Sequence[float] | None = None) -> None:
        super().__init__()
        widths = [dim, *hidden_dims]
        layers: list[nn.Module] = [Dropout(dropout)]
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU(), Dropout(hidden_dropout)]
        self.net = nn.Sequential(*layers, nn.Linear(widths[-1], num_classes))
        if output_range is not None and (len(output_range) != 2 or output_range[0] >= output_range[1]):
            raise ValueError(f"mlp_head: output_range={list(output_range)} must be [low, high] with low < high")
        self.output_range = None if output_range is None else (float(output_range[0]), float(output_range[1]))

    def forward(self, x: Tensor) -> Tensor:
        y = self.net(x)  # (..., C)
        if self.output_range is None:
            return y
        low, high = self.output_range
        return low + (high - low) * torch.sigmoid(y)


class ResidualHead(nn.Module):
    """A residual block, then a Linear: ``out(x + proj2(Dropout(ReLU(proj1(x)))))`` (MMSA's MulT after its fusion:
    ``proj1``, ``proj2``, ``out_layer``, ``output_dropout``).

    Args:
        dim: input width D (the fusion's output width), kept through the block.
        num_classes: outputs C.
        dropout: dropout after the ReLU.
    """

    def __init__(self, *, dim: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.proj1 = nn.Linear(dim, dim)
        self.proj2 = nn.Linear(dim, dim)
        self.drop = Dropout(dropout)
        self.out = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = x + self.proj2(self.drop(torch.relu(self.proj1(x))))  # (..., D)
        return self.out(h)  # (..., C)


class IdentityHead(nn.Module):
    """No parameters: the fusion's output already is the prediction (MMSA's LMF fuses straight to its one output).

    Args:
        dim: the fusion's output width; must equal ``num_classes``.
        num_classes: outputs C.
        dropout: must be 0 (accepted so that the head slot's shared ``dropout`` key can be set to 0, not removed).
    """

    def __init__(self, *, dim: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim != num_classes:
            raise ValueError(f"identity_head: the fusion's output width {dim} must equal the outputs ({num_classes})")
        if dropout:
            raise ValueError(f"identity_head: dropout={dropout}; it has no layers to drop from (give 0)")

    def forward(self, x: Tensor) -> Tensor:
        return x


@dataclass
class ModelOutput:
    """Attributes:
    logits: (B, C) class scores.
    fusion: the fusion output (pooled features, fused tokens).
    encoded: per-modality encoder outputs, masks already combined with sample presence.
    """

    logits: Tensor
    fusion: FusionOutput
    encoded: dict[str, EncoderOutput]


class MultimodalTransformer(nn.Module):
    """Encoders (one per modality) feed a fusion strategy whose pooled output feeds a head.

    Every encoder runs on every batch, also for samples that lack its modality (their tokens are masked out),
    so all parameters take part in every step and DDP needs no ``find_unused_parameters``.

    With a ``decoder``, the network also writes text: the fusion runs on the media with the text marked absent,
    and the decoder's conditioner turns its output into a prefix or a cross-attention context (:meth:`decode`).

    Args:
        encoders: modality name -> encoder module returning :class:`EncoderOutput`.
        fusion: the fusion strategy; it must have been built for the same modality names.
        head: maps pooled features (..., D) to logits (..., C).
        decoder: optional causal text decoder (captioning, language modelling, generation): a
            :class:`~mmgpt.decoder.TextDecoder` or any module with its interface (``mmgpt.hf_decoder.HFDecoder``).
        text_modality: the modality the decoder writes; it is hidden from the conditioning.
    """

    def __init__(
        self,
        *,
        encoders: Mapping[str, nn.Module],
        fusion: Fusion,
        head: nn.Module,
        decoder: TextDecoder | nn.Module | None = None,
        text_modality: str = "text",
    ) -> None:
        super().__init__()
        if set(encoders) != set(fusion.modalities):
            raise ValueError(f"encoders {sorted(encoders)} do not match fusion modalities {list(fusion.modalities)}")
        self.encoders = nn.ModuleDict({m: encoders[m] for m in sorted(encoders)})
        self.fusion = fusion
        self.head = head
        self.decoder = decoder
        self.text_modality = text_modality
        accept_unwrapped_names(self)  # checkpoints written when learned tokens were bare parameters still load

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.encoders.keys())

    def encode(self, batch: MultimodalBatch) -> dict[str, EncoderOutput]:
        out: dict[str, EncoderOutput] = {}
        for m, encoder in self.encoders.items():
            if m in batch.precomputed:  # cached backbone hidden states (B, N, H): only the projection runs
                hidden = batch.inputs[m].to(encoder.proj.weight.dtype)
                enc = encoder.project(EncoderOutput(hidden, batch.masks[m]))
            else:
                enc = encoder(batch.inputs[m], batch.masks.get(m))
            out[m] = EncoderOutput(enc.tokens, enc.mask & batch.presence(m)[:, None])
        return out

    def fuse(self, encoded: dict[str, EncoderOutput]) -> FusionOutput:
        """Run the fusion on encoder outputs (masks already combined with presence)."""
        return self.fusion({m: e.tokens for m, e in encoded.items()}, {m: e.mask for m, e in encoded.items()})

    def classify(self, fused: FusionOutput) -> Tensor:
        """Head logits (B, C) from a fusion output; per-member logits are averaged over present members."""
        return fused.average_members(self.head(fused.pooled))  # (B, C) from (B, C) or (B, K, C)

    def forward(self, batch: MultimodalBatch) -> ModelOutput:
        encoded = self.encode(batch)
        fused = self.fuse(encoded)
        return ModelOutput(logits=self.classify(fused), fusion=fused, encoded=encoded)

    def condition(self, batch: MultimodalBatch) -> Conditioning:
        """The decoder's conditioning: the media fused with the text modality marked absent (no answer leaks)."""
        decoder = self._need_decoder()
        media = batch.with_modalities(set(self.modalities) - {self.text_modality})
        encoded = self.encode(media)
        return decoder.conditioner(self.fuse(encoded), encoded)

    def decode(
        self,
        batch: MultimodalBatch,
        ids: Tensor,
        mask: Tensor | None = None,
        cond: Conditioning | None = None,
        positions: Tensor | None = None,
        cache: DecoderCache | None = None,
    ) -> DecoderOutput:
        """Next-token logits (B, T, V) for text ``ids`` (B, T) conditioned on the batch's media.

        ``cond`` may be passed to reuse a conditioning (generation computes it once); see
        :meth:`mmgpt.decoder.TextDecoder.forward` for ``mask``, ``positions`` and ``cache``.
        """
        decoder = self._need_decoder()
        cond = self.condition(batch) if cond is None else cond
        return decoder(ids, cond, mask=mask, positions=positions, cache=cache)

    @property
    def encoder_tokenizer(self) -> Tokenizer:
        """The tokenizer of the text modality's encoder input (its ``tokenizer``; bytes when it has none)."""
        from mmgpt.encoders.backbone import BackboneEncoder

        encoder = self.encoders[self.text_modality] if self.text_modality in self.encoders else None
        tokenizer = getattr(encoder, "tokenizer", None)
        if isinstance(tokenizer, Tokenizer):
            return tokenizer
        if isinstance(encoder, BackboneEncoder):  # its processor tokenizes; bytes would be silently wrong here
            raise UserError(f"the {self.text_modality} encoder ({type(encoder).__name__}) has no mmgpt tokenizer: "
                            "objectives that tokenize text in the model (captions as the text input, target=text) "
                            "need the scratch text encoder")
        return ByteTokenizer()

    @property
    def decoder_tokenizer(self) -> Tokenizer:
        """The tokenizer of the texts the decoder reads and writes: the one place captions and prompts are
        tokenized and generated ids decoded (the decoder's own: bytes, a trained BPE, or a pretrained LM's)."""
        return self._need_decoder().tokenizer

    def _need_decoder(self) -> TextDecoder:
        if self.decoder is None:
            raise RuntimeError("this network has no text decoder: build it with model.net.decoder (task=caption)")
        return self.decoder

    def param_counts(self) -> dict[str, int]:
        """Parameter count per part: each encoder, the fusion, the head, the decoder if any, and the total."""
        counts = {f"encoders.{m}": _count(e) for m, e in self.encoders.items()}
        counts["fusion"] = _count(self.fusion)
        counts["head"] = _count(self.head)
        if self.decoder is not None:
            counts["decoder"] = _count(self.decoder)
        counts["total"] = _count(self)
        return counts


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
