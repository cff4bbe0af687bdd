"""MMSA's weights in mmgpt's networks, and MMSA's initial weights for a seed.

:func:`copy_mmsa_weights` loads the parameters and BatchNorm statistics of MMSA's TFN, LMF, LF-DNN, EF-LSTM or MulT
into mmgpt's ``experiment=mosi_mmsa_<model>`` network, which then computes MMSA's function
(``tests/test_mmsa_exact.py`` checks it output by output).

:func:`init_like_mmsa` (``model.init={peer: mmsa, model: <model>, seed: ...}``, set by the ``mosi_mmsa_*``
experiments) starts such a network from the weights MMSA's model has when MMSA builds it right after seeding torch
with ``seed`` (MMSA's ``setup_seed``): it builds a stand-in with MMSA's layers, in MMSA's order, drawing from a
generator seeded alike, and copies it in. The two runs of a seed then start from the same point; MMSA itself is not
needed (the test against MMSA's own model is in ``tests/test_mmsa_exact.py``).

Two orders differ and are mapped: mmgpt sorts its modalities (acoustic, language, visual; MMSA concatenates audio,
video, text, or text, audio, video in its EF-LSTM), and mmgpt appends each vector's constant 1 after it where MMSA
puts it first (TFN's outer product, LMF's factors). MulT's concatenations follow MMSA's order in mmgpt too
(``order: [language, acoustic, visual]``); its packed attention projections (``in_proj_weight``: query, key, value
rows) are split into mmgpt's query and key/value projections.
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


# --- MMSA's initial weights -----------------------------------------------------------------------------------------
# Each stand-in below builds the layers of MMSA's model that draw random numbers, in the order MMSA's constructor
# builds them, under the attribute names :func:`copy_mmsa_weights` reads; layers without parameters (dropout) and
# parameters MMSA never draws (TFN's fixed output range) are left out. PyTorch's layers draw in their constructors,
# so building the same layers in the same order from the same generator state gives the same tensors. The sizes are
# read from mmgpt's network, which has MMSA's architecture (``experiment=mosi_mmsa_<model>``).


def _linear_like(layer: nn.Linear) -> nn.Linear:
    return nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)


def _lstm_like(rnn: nn.LSTM) -> nn.LSTM:
    return nn.LSTM(rnn.input_size, rnn.hidden_size, num_layers=rnn.num_layers, batch_first=True)


def _subnet_like(ours: nn.Module) -> nn.Module:
    """MMSA's ``SubNet``: BatchNorm1d, then three Linear layers (mmgpt's :class:`~mmgpt.encoders.MLPSubNet`)."""
    net = nn.Module()
    net.norm = nn.BatchNorm1d(ours.norm.num_features)
    linears = [m for m in ours.layers if isinstance(m, nn.Linear)]
    if len(linears) != 3:
        raise ValueError(f"MMSA's SubNet has 3 Linear layers; this encoder has {len(linears)}")
    for i, layer in enumerate(linears, start=1):
        setattr(net, f"linear_{i}", _linear_like(layer))
    return net


def _text_subnet_like(ours: nn.Module) -> nn.Module:
    """MMSA's ``TextSubNet``: an LSTM, then a Linear (mmgpt's :class:`~mmgpt.encoders.LSTMEncoder`)."""
    net = nn.Module()
    net.rnn = _lstm_like(ours.rnn)
    net.linear_1 = _linear_like(ours.proj)
    return net


def _subnets_like(ours: nn.Module) -> nn.Module:
    """The three sub-networks of MMSA's TFN, LMF and LF-DNN, built as MMSA builds them: audio, video, text."""
    model = nn.Module()
    model.audio_subnet = _subnet_like(ours.encoders["acoustic"])
    model.video_subnet = _subnet_like(ours.encoders["visual"])
    model.text_subnet = _text_subnet_like(ours.encoders["language"])
    return model


def _post_fusion_like(model: nn.Module, head: nn.Module) -> nn.Module:
    """TFN's and LF-DNN's three post-fusion Linear layers (mmgpt's head ``net[1]``, ``net[4]``, ``net[7]``)."""
    for i, index in enumerate((1, 4, 7), start=1):
        setattr(model, f"post_fusion_layer_{i}", _linear_like(head.net[index]))
    return model


def _lmf_like(ours: nn.Module) -> nn.Module:
    model = _subnets_like(ours)
    factors = ours.fusion.factors
    for mine, peer in (("acoustic", "audio"), ("visual", "video"), ("language", "text")):  # MMSA's order
        setattr(model, f"{peer}_factor", nn.Parameter(torch.empty_like(factors[mine])))
    model.fusion_weights = nn.Parameter(torch.empty_like(ours.fusion.rank_weights))
    model.fusion_bias = nn.Parameter(torch.zeros(1, ours.fusion.bias.numel()))
    for name in ("audio_factor", "video_factor", "text_factor", "fusion_weights"):
        nn.init.xavier_normal_(getattr(model, name))
    return model


def _ef_lstm_like(ours: nn.Module) -> nn.Module:
    model = nn.Module()
    model.norm = nn.BatchNorm1d(ours.fusion.norm.num_features)
    model.lstm = _lstm_like(ours.fusion.rnn)
    model.linear = _linear_like(ours.head.net[1])
    model.out = _linear_like(ours.head.net[4])
    return model


def _fairseq_linear(n_in: int, n_out: int) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _fairseq_encoder_like(ours: nn.Module) -> nn.Module:
    """MMSA's (fairseq's) ``TransformerEncoder``: per layer, the attention's output Linear (drawn by nn.Linear, then
    redrawn), its packed projection and the output weight xavier-uniform, zero biases; then fc1 and fc2, each an
    nn.Linear redrawn xavier-uniform with a zero bias; LayerNorms draw nothing."""
    dim = ours.norm.normalized_shape[0]
    encoder = nn.Module()
    encoder.layers = nn.ModuleList()
    for _ in ours.blocks:
        layer = nn.Module()
        attn = layer.self_attn = nn.Module()
        attn.embed_dim = dim
        attn.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        attn.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        attn.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(attn.in_proj_weight)
        nn.init.xavier_uniform_(attn.out_proj.weight)
        nn.init.zeros_(attn.out_proj.bias)
        layer.fc1 = _fairseq_linear(dim, 4 * dim)
        layer.fc2 = _fairseq_linear(4 * dim, dim)
        layer.layer_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(2))
        encoder.layers.append(layer)
    encoder.layer_norm = nn.LayerNorm(dim)
    return encoder


def _mult_like(ours: nn.Module) -> nn.Module:
    model = nn.Module()
    for letter, mine in MULT_LETTERS.items():  # l, a, v
        conv = ours.encoders[mine].conv
        setattr(model, f"proj_{letter}", nn.Conv1d(conv.in_channels, conv.out_channels, conv.kernel_size[0],
                                                   padding=0, bias=False))
    for target, source in ("la", "lv", "al", "av", "vl", "va"):  # trans_<target>_with_<source>, MMSA's order
        setattr(model, f"trans_{target}_with_{source}",
                _fairseq_encoder_like(ours.fusion.cross[f"{MULT_LETTERS[source]}->{MULT_LETTERS[target]}"]))
    for letter, mine in MULT_LETTERS.items():
        setattr(model, f"trans_{letter}_mem", _fairseq_encoder_like(ours.fusion.memory[mine]))
    model.proj1, model.proj2 = _linear_like(ours.head.proj1), _linear_like(ours.head.proj2)
    model.out_layer = _linear_like(ours.head.out)
    return model


def _subnets_then_post_fusion_like(ours: nn.Module) -> nn.Module:
    """TFN and LF-DNN: the three sub-networks, then the three post-fusion layers (their fusions draw nothing)."""
    return _post_fusion_like(_subnets_like(ours), ours.head)


_LIKE = {"tfn": _subnets_then_post_fusion_like, "lmf": _lmf_like, "lf_dnn": _subnets_then_post_fusion_like,
         "ef_lstm": _ef_lstm_like, "mult": _mult_like}
assert tuple(_LIKE) == EXACT_MODELS


def _feature_dims(model: str, ours: nn.Module) -> list[int]:
    """MMSA's ``feature_dims`` (text, audio, vision); only EF-LSTM's mapping reads them."""
    if model != "ef_lstm":
        return []
    return [int(ours.encoders[m].input_dim) for m in ("language", "acoustic", "visual")]


def mmsa_initial_weights(model: str, ours: nn.Module, seed: int) -> nn.Module:
    """A stand-in for MMSA's ``model`` with the weights MMSA's constructor draws right after
    ``torch.manual_seed(seed)``, sized like ``ours``. Draws from a forked generator: the caller's random state is
    left as it was."""
    model = model.lower()
    if model not in _LIKE:
        raise ValueError(f"{model!r}: mmgpt builds MMSA's architecture for {list(EXACT_MODELS)} only")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return _LIKE[model](ours)


def init_like_mmsa(net: nn.Module, model: str, seed: int) -> None:
    """Overwrite the weights of ``net`` (built by ``experiment=mosi_mmsa_<model>``) with those MMSA's ``model``
    starts from at ``seed``. Raises ValueError (naming the part) when ``net`` is not MMSA's architecture."""
    try:
        theirs = mmsa_initial_weights(model, net, seed)
        copy_mmsa_weights(model, net, theirs, _feature_dims(model.lower(), net))
    except (AttributeError, KeyError, RuntimeError, TypeError, IndexError) as e:
        raise ValueError(f"MMSA's {model} initial weights do not fit this network ({type(e).__name__}: {e}); "
                         f"model.init.model must name the architecture experiment=mosi_mmsa_<model> builds") from e
