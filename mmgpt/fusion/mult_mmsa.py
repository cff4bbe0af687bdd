"""MulT as the MMSA toolkit builds it (thuiar/MMSA ``models/singleTask/MULT.py`` and its fairseq-derived
``subNets/transformers_encoder``): the reference network of ``experiment=mosi_mmsa_mult``, weight for weight
(``mmgpt/peers/mmsa.py`` maps MMSA's weights onto it, ``tests/test_mmsa_exact.py`` checks the outputs).

Legend: B batch, M modalities, N_t target steps, N_s source steps, D dim, W = (M - 1) D the memory width.

The modality encoders are MMSA's temporal convolutions (``temporal_conv``). For each target t and each source s,
a cross-modal stack (:class:`FairseqEncoder`) lets t's steps attend to s's; t's M - 1 streams are concatenated
(width W) and run through a self-attention stack of that width (MMSA's ``trans_<t>_mem``); each target's
summary is its stack's output at its last real step; the summaries are concatenated (M W) for the head
(MMSA's residual projection and output layer: ``residual_head``).

Unlike mmgpt's own ``mult`` (:mod:`mmgpt.fusion.mult`), there is no null token, no projection after the
concatenation and no learned vector for a missing modality: the reference has none of them. Padded steps are
masked (MMSA attends to its padding), and the future mask's diagonal comes from each sample's real lengths, so a
padded sample gets what MMSA computes on it unpadded. A sample without a modality (MMSA has no such samples)
attends over that modality's padded steps and, as a target, is summarised by its first step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from mmgpt.fusion.base import Fusion, FusionOutput
from mmgpt.layers import Dropout, SharedNormBlock, build_attention_mask, last_step


class FairseqEncoder(nn.Module):
    """MMSA's ``TransformerEncoder`` (fairseq's, without position embeddings: MMSA's MulT builds it without):
    inputs scaled by sqrt(D), embedding dropout, pre-norm :class:`~mmgpt.layers.SharedNormBlock` s, a final
    LayerNorm. With a context it is cross-modal: the keys and the values are the scaled context, each dropped out
    with a mask of its own, and stay the same in every layer.

    Args:
        dim: width D.
        num_heads: attention heads.
        num_layers: blocks.
        attn_dropout: dropout on the attention weights.
        relu_dropout: dropout after each MLP's ReLU.
        res_dropout: dropout on each residual branch.
        embed_dropout: dropout on the scaled inputs.
        causal: the future mask (MMSA's ``attn_mask``) on every attention, cross-attention included.
    """

    def __init__(self, *, dim: int, num_heads: int, num_layers: int, attn_dropout: float = 0.0,
                 relu_dropout: float = 0.0, res_dropout: float = 0.0, embed_dropout: float = 0.0,
                 causal: bool = True) -> None:
        super().__init__()
        self.scale = math.sqrt(dim)
        self.causal = causal
        self.drop = Dropout(embed_dropout)
        self.blocks = nn.ModuleList(
            SharedNormBlock(dim=dim, num_heads=num_heads, attn_dropout=attn_dropout, relu_dropout=relu_dropout,
                            res_dropout=res_dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        for block in self.blocks:
            _fairseq_init(block)

    def forward(self, x: Tensor, mask: Tensor, context: Tensor | None = None,
                context_mask: Tensor | None = None) -> Tensor:
        """x (B, N_t, D) with mask (B, N_t); context (B, N_s, D) with context_mask (B, N_s) -> (B, N_t, D).

        The future mask's diagonal is |n_s - n_t| of each sample's real lengths (0 in self-attention): MMSA's
        ``buffered_future_mask`` on that sample's unpadded sequences.
        """
        h = self.drop(self.scale * x)  # (B, N_t, D)
        if context is None:
            attn_mask = build_attention_mask(mask, x.shape[1], x.shape[1], self.causal, x.device)
            for block in self.blocks:
                h = block(h, attn_mask=attn_mask)
            return self.norm(h)
        if context_mask is None:
            raise ValueError("a context needs its padding mask")
        offset = (context_mask.sum(dim=1) - mask.sum(dim=1)).abs()  # (B,)
        attn_mask = build_attention_mask(context_mask, x.shape[1], context.shape[1], self.causal, x.device,
                                         causal_offset=offset)  # built once: every layer has the same
        keys, values = self.drop(self.scale * context), self.drop(self.scale * context)  # 2 x (B, N_s, D)
        for block in self.blocks:
            h = block(h, attn_mask=attn_mask, context=keys, values=values)
        return self.norm(h)


def _fairseq_init(block: SharedNormBlock) -> None:
    """MMSA's initialisation: Xavier-uniform attention and MLP matrices, zero biases. The query and key/value
    projections are drawn as the one packed (3D, D) matrix MMSA has (``in_proj_weight``), so with its bound."""
    attn = block.attn
    bound = math.sqrt(6.0 / (attn.q.in_features + 3 * attn.q.out_features))
    for linear in (attn.q, attn.kv):
        nn.init.uniform_(linear.weight, -bound, bound)
    for linear in (attn.proj, block.mlp.net[0], block.mlp.net[2]):
        nn.init.xavier_uniform_(linear.weight)
    for linear in (attn.q, attn.kv, attn.proj, block.mlp.net[0], block.mlp.net[2]):
        nn.init.zeros_(linear.bias)


class MMSAMulTFusion(Fusion):
    """MMSA's MulT: cross-modal stacks for every ordered pair, a self-attention stack per target over its
    concatenated streams, each target's last real step, concatenated -> (B, M (M - 1) D).

    Args:
        modalities: modality names (at least two).
        dim: width D of every modality's steps (MMSA: ``dst_feature_dim_nheads[0]``).
        num_heads: attention heads (MMSA: ``dst_feature_dim_nheads[1]``).
        num_layers: layers of each cross-modal stack (MMSA: ``nlevels``).
        self_layers: layers of each self-attention stack (MMSA: ``max(nlevels, 3)``).
        cross_attn_dropout: source modality -> attention-weight dropout of the stacks that attend to it (MMSA
            keys its ``attn_dropout`` / ``attn_dropout_a`` / ``attn_dropout_v`` by the source: text, audio, vision).
        attn_dropout: attention-weight dropout of the self-attention stacks (MMSA: ``attn_dropout``).
        relu_dropout: dropout after each MLP's ReLU.
        res_dropout: dropout on each residual branch.
        embed_dropout: dropout on each stack's scaled inputs.
        causal: the future mask on every attention (MMSA: ``attn_mask``).
        order: the modalities in the order the streams and summaries are concatenated (MMSA: text, audio,
            vision); None: sorted. Fixed at construction, so results never depend on the order of the input dicts.
    """

    decoder_pairing = ("pooled_prefix", False)

    def __init__(self, *, modalities: Sequence[str], dim: int, num_heads: int, num_layers: int, self_layers: int,
                 cross_attn_dropout: Mapping[str, float] | None = None, attn_dropout: float = 0.0,
                 relu_dropout: float = 0.0, res_dropout: float = 0.0, embed_dropout: float = 0.0,
                 causal: bool = True, order: Sequence[str] | None = None) -> None:
        super().__init__(modalities=modalities)
        if len(self.modalities) < 2:
            raise ValueError("mult_mmsa needs at least two modalities")
        self.order = tuple(self.modalities if order is None else order)
        if sorted(self.order) != list(self.modalities):
            raise ValueError(f"mult_mmsa: order {list(self.order)} must name each of {list(self.modalities)} once")
        drops = dict(cross_attn_dropout or {})
        if not set(drops) <= set(self.modalities):
            raise ValueError(f"mult_mmsa: cross_attn_dropout names {sorted(set(drops) - set(self.modalities))}, "
                             f"not among {list(self.modalities)}")
        shared = {"num_heads": num_heads, "relu_dropout": relu_dropout, "res_dropout": res_dropout,
                  "embed_dropout": embed_dropout, "causal": causal}
        self.cross = nn.ModuleDict({
            f"{s}->{t}": FairseqEncoder(dim=dim, num_layers=num_layers, attn_dropout=drops.get(s, 0.0), **shared)
            for t in self.order for s in self.order if s != t
        })
        width = (len(self.order) - 1) * dim
        self.memory = nn.ModuleDict({
            t: FairseqEncoder(dim=width, num_layers=self_layers, attn_dropout=attn_dropout, **shared)
            for t in self.order
        })
        #: the width of the fusion's output (the head's input)
        self.out_dim = len(self.order) * width

    def forward(self, tokens: dict[str, Tensor], masks: dict[str, Tensor]) -> FusionOutput:
        self.check_inputs(tokens)
        summaries = []
        for t in self.order:
            streams = [self.cross[f"{s}->{t}"](tokens[t], masks[t], tokens[s], masks[s])  # (B, N_t, D) each
                       for s in self.order if s != t]
            h = self.memory[t](torch.cat(streams, dim=-1), masks[t])  # (B, N_t, W)
            summaries.append(last_step(h, masks[t]))  # (B, W): MMSA's h[-1] on an unpadded sequence
        return FusionOutput(pooled=torch.cat(summaries, dim=-1))  # (B, M W)
