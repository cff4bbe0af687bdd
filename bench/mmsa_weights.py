"""MMSA's weights in mmgpt's networks: :func:`copy_mmsa_weights` loads the parameters and BatchNorm statistics of
MMSA's TFN, LMF, LF-DNN, EF-LSTM or MulT into mmgpt's ``experiment=mosi_mmsa_<model>`` network, which then computes
MMSA's function (``tests/test_mmsa_exact.py`` checks it output by output).

Two orders differ and are mapped: mmgpt sorts its modalities (acoustic, language, visual; MMSA concatenates audio,
video, text, or text, audio, video in its EF-LSTM), and mmgpt appends each vector's constant 1 after it where MMSA
puts it first (TFN's outer product, LMF's factors). MulT's concatenations follow MMSA's order in mmgpt too
(``order: [language, acoustic, visual]``); its packed attention projections (``in_proj_weight``: query, key, value
rows) are split into mmgpt's query and key/value projections.

``bench.peer_mmsa --from-mmsa-init`` starts each mmgpt run from the initial weights of MMSA's run of the same seed,
so that the two runs differ only in what happens during training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: mmgpt modality -> MMSA sub-network
SUBNETS = {"acoustic": "audio_subnet", "visual": "video_subnet", "language": "text_subnet"}
#: MMSA's SubNet layer -> mmgpt's MLPSubNet layer (state-dict key prefixes); TextSubNet's ``linear_1`` is ``proj``
SUBNET_LAYERS = {"linear_1.": "layers.0.", "linear_2.": "layers.2.", "linear_3.": "layers.4."}
TEXT_LAYERS = {"linear_1.": "proj."}


def renamed(state: dict[str, torch.Tensor], names: dict[str, str]) -> dict[str, torch.Tensor]:
    """``state`` with each key's prefix in ``names`` replaced by its value (one direction of the tables above)."""
    out = {}
    for key, value in state.items():
        prefix = next((p for p in names if key.startswith(p)), None)
        out[key if prefix is None else names[prefix] + key[len(prefix):]] = value
    return out
#: MMSA's MulT modality letter -> mmgpt modality
MULT_LETTERS = {"l": "language", "a": "acoustic", "v": "visual"}
#: the models whose architecture mmgpt builds exactly (``experiment=mosi_mmsa_<model>``)
EXACT_MODELS = ("tfn", "lmf", "lf_dnn", "ef_lstm", "mult")


def _copy_subnets(ours: nn.Module, theirs: nn.Module) -> None:
    for mine, peer in SUBNETS.items():
        names = TEXT_LAYERS if mine == "language" else SUBNET_LAYERS
        ours.encoders[mine].load_state_dict(renamed(getattr(theirs, peer).state_dict(), names), strict=True)


def _one_last(t: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """MMSA's ``[1; h]`` index order -> mmgpt's ``[h; 1]`` along each of ``dims``."""
    for d in dims:
        t = torch.roll(t, shifts=-1, dims=d)
    return t


def _copy_linear(dst: nn.Module, src: nn.Linear, weight: torch.Tensor | None = None) -> None:
    dst.load_state_dict({"weight": src.weight if weight is None else weight, "bias": src.bias})


def _fairseq_layer(layer: nn.Module) -> dict[str, torch.Tensor]:
    """MMSA's ``TransformerEncoderLayer`` state -> mmgpt's :class:`~mmgpt.layers.SharedNormBlock` state."""
    attn, d = layer.self_attn, layer.self_attn.embed_dim
    w, b = attn.in_proj_weight, attn.in_proj_bias  # rows: query, key, value
    state = {"attn.q.weight": w[:d], "attn.q.bias": b[:d], "attn.kv.weight": w[d:], "attn.kv.bias": b[d:],
             "attn.proj.weight": attn.out_proj.weight, "attn.proj.bias": attn.out_proj.bias}
    for mine, peer in (("mlp.net.0", layer.fc1), ("mlp.net.2", layer.fc2),
                       ("norm1", layer.layer_norms[0]), ("norm2", layer.layer_norms[1])):
        state |= {f"{mine}.weight": peer.weight, f"{mine}.bias": peer.bias}
    return state


def _copy_fairseq_encoder(ours: nn.Module, theirs: nn.Module) -> None:
    """MMSA's ``TransformerEncoder`` -> mmgpt's :class:`~mmgpt.fusion.mult_mmsa.FairseqEncoder`."""
    state = {f"blocks.{i}.{k}": v for i, layer in enumerate(theirs.layers) for k, v in _fairseq_layer(layer).items()}
    state |= {f"norm.{k}": v for k, v in theirs.layer_norm.state_dict().items()}
    ours.load_state_dict(state, strict=True)


def _copy_mult(ours: nn.Module, theirs: nn.Module) -> None:
    for letter, mine in MULT_LETTERS.items():
        ours.encoders[mine].conv.load_state_dict(getattr(theirs, f"proj_{letter}").state_dict(), strict=True)
        _copy_fairseq_encoder(ours.fusion.memory[mine], getattr(theirs, f"trans_{letter}_mem"))
        for source, other in MULT_LETTERS.items():  # trans_<target>_with_<source>
            if source != letter:
                _copy_fairseq_encoder(ours.fusion.cross[f"{other}->{mine}"],
                                      getattr(theirs, f"trans_{letter}_with_{source}"))
    for mine, peer in (("proj1", theirs.proj1), ("proj2", theirs.proj2), ("out", theirs.out_layer)):
        _copy_linear(getattr(ours.head, mine), peer)


def copy_mmsa_weights(model: str, ours: nn.Module, theirs: nn.Module, feature_dims: Sequence[int]) -> None:
    """Load MMSA's ``theirs`` (``AMIO(args).Model``) into mmgpt's network ``ours`` of ``experiment=mosi_mmsa_<model>``.

    Args:
        model: ``tfn``, ``lmf``, ``lf_dnn``, ``ef_lstm`` or ``mult``.
        ours: mmgpt's network (``MultimodalTransformer``).
        theirs: MMSA's model.
        feature_dims: the feature sizes (text, audio, vision), MMSA's ``args.feature_dims``.
    """
    model = model.lower()
    if model not in EXACT_MODELS:
        raise ValueError(f"{model}: mmgpt builds MMSA's architecture for {list(EXACT_MODELS)} only")
    with torch.no_grad():
        if model == "mult":
            _copy_mult(ours, theirs)
            return
        if model == "ef_lstm":
            ours.fusion.norm.load_state_dict(theirs.norm.state_dict())
            lstm = dict(theirs.lstm.state_dict())
            t, a, v = (int(d) for d in feature_dims)
            w = lstm["weight_ih_l0"]  # columns: text, audio, video -> acoustic, language, visual
            lstm["weight_ih_l0"] = torch.cat([w[:, t:t + a], w[:, :t], w[:, t + a:t + a + v]], dim=1)
            ours.fusion.rnn.load_state_dict(lstm)
            _copy_linear(ours.head.net[1], theirs.linear)
            _copy_linear(ours.head.net[4], theirs.out)
            return
        _copy_subnets(ours, theirs)
        a, v, t = (getattr(theirs, f"{m}_subnet").linear_1.out_features for m in ("audio", "video", "text"))
        if model == "tfn":  # columns (audio, video, text), 1 first -> (acoustic, language, visual), 1 last
            w = theirs.post_fusion_layer_1.weight.view(-1, a + 1, v + 1, t + 1)
            w = _one_last(w, (1, 2, 3)).permute(0, 1, 3, 2).reshape(w.shape[0], -1)
            _copy_linear(ours.head.net[1], theirs.post_fusion_layer_1, w)
            _copy_linear(ours.head.net[4], theirs.post_fusion_layer_2)
            _copy_linear(ours.head.net[7], theirs.post_fusion_layer_3)
        elif model == "lmf":
            for mine, peer in (("acoustic", "audio"), ("visual", "video"), ("language", "text")):
                ours.fusion.factors[mine].copy_(_one_last(getattr(theirs, f"{peer}_factor"), (1,)))
            ours.fusion.rank_weights.copy_(theirs.fusion_weights)
            ours.fusion.bias.copy_(theirs.fusion_bias.view(-1))
        else:  # lf_dnn: columns audio, video, text -> acoustic, language, visual
            w = theirs.post_fusion_layer_1.weight
            _copy_linear(ours.head.net[1], theirs.post_fusion_layer_1,
                         torch.cat([w[:, :a], w[:, a + v:], w[:, a:a + v]], dim=1))
            _copy_linear(ours.head.net[4], theirs.post_fusion_layer_2)
            _copy_linear(ours.head.net[7], theirs.post_fusion_layer_3)
