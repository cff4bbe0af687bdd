"""``experiment=mosi_mmsa_<model>`` builds MMSA's own network: MMSA's weights copied into it give MMSA's outputs
(on sequences without padding, where the two differ by design), and the trainable parameter count of each equals
that of MMSA's model built from MMSA's own config (``get_config_regression``) on the same feature sizes, part by
part where the parts line up (sub-networks, fusion + post-fusion layers).

Needs the ``mmsa`` package (the dev extra); importing it and building TFN's 9M-parameter layer takes seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from bench.common import compose_train_config
from bench.mmsa_data import Shape, mmsa_args, write_pickle
from mmgpt.batch import MultimodalBatch
from mmgpt.cli.train import build_module

pytest.importorskip("MMSA")
pytestmark = pytest.mark.slow

SHAPE = Shape({"train": 64, "valid": 16, "test": 16}, {"text": 24, "audio": 5, "vision": 20}, (10, 12, 8))


def _trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _trained_by_mmsa(model: str, net: torch.nn.Module) -> int:
    """What MMSA's trainer hands its optimizer: LMF's trainer slices the parameter list ([:3] + [5:]), leaving the
    rank weights and the bias at their initial values; the other trainers take every parameter."""
    params = list(net.parameters())
    if model == "lmf":
        params = params[:3] + params[5:]
    return sum(p.numel() for p in params if p.requires_grad)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mmsa_exact")
    return {kind: write_pickle(root / f"{kind}_50.pkl", aligned=kind == "aligned", shape=SHAPE)
            for kind in ("aligned", "unaligned")}


def _ours(model: str, path: Path) -> torch.nn.Module:
    extra = [f"model.fusion.steps={SHAPE.steps[0]}"] if model == "ef_lstm" else []
    cfg = compose_train_config([f"experiment=mosi_mmsa_{model}", f"data.root={path}", *extra])
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    return build_module(cfg, datamodule).net


def _theirs(model: str, path: Path) -> torch.nn.Module:
    from MMSA.models import AMIO

    args = mmsa_args(model, path)
    args.feature_dims = [SHAPE.dims["text"], SHAPE.dims["audio"], SHAPE.dims["vision"]]
    args.seq_lens = [SHAPE.steps[0]] * 3 if model == "ef_lstm" else list(SHAPE.steps)
    return AMIO(args).Model


@pytest.mark.parametrize("model", ["tfn", "lmf", "lf_dnn", "ef_lstm"])
def test_the_experiment_builds_mmsas_network(files, model):
    path = files["aligned" if model == "ef_lstm" else "unaligned"]
    ours, theirs = _ours(model, path), _theirs(model, path)
    assert _trainable(ours) == _trained_by_mmsa(model, theirs)
    if model != "ef_lstm":  # sub-network by sub-network (MMSA: audio, video, text)
        for mine, peer in (("acoustic", "audio_subnet"), ("visual", "video_subnet"), ("language", "text_subnet")):
            assert _trainable(ours.encoders[mine]) == _trainable(getattr(theirs, peer)), mine
    # BatchNorm running statistics (buffers) too
    assert sorted(b.numel() for n, b in ours.named_buffers() if "running" in n) == \
        sorted(b.numel() for n, b in theirs.named_buffers() if "running" in n)


def test_tfn_output_range_is_mmsas(files):
    ours = _ours("tfn", files["unaligned"])
    assert ours.head.output_range == (-3.0, 3.0)  # MMSA: sigmoid(x) * output_range (6) + output_shift (-3)
    batch = next(iter(_loader(files["unaligned"])))
    ours.eval()
    with torch.no_grad():
        y = ours(batch).logits
    assert y.shape == (batch.batch_size, 1) and bool(((y > -3) & (y < 3)).all())


def _loader(path: Path):
    cfg = compose_train_config(["experiment=mosi_mmsa_tfn", f"data.root={path}"])
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    return datamodule.train_dataloader()


# --- Same weights, same function -------------------------------------------------------------------------------------
# MMSA's weights copied into mmgpt's network give MMSA's outputs, on sequences without padding (where the two
# differ by design: mmgpt averages and reads the LSTM state over the real steps only). Orders that differ are mapped:
# mmgpt sorts its modalities (acoustic, language, visual; MMSA: audio, video, text, or text, audio, video for the
# EF-LSTM) and appends each vector's constant 1 after it (MMSA: before).

#: mmgpt modality -> MMSA sub-network
SUBNETS = {"acoustic": "audio_subnet", "visual": "video_subnet", "language": "text_subnet"}


def _copy_subnets(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    for mine, peer in SUBNETS.items():
        src = getattr(theirs, peer).state_dict()
        if mine == "language":  # TextSubNet: rnn, dropout, linear_1 -> LSTMEncoder: rnn, drop, proj
            mapped = {k.replace("linear_1.", "proj."): v for k, v in src.items()}
        else:  # SubNet: norm, drop, linear_1..3 -> MLPSubNet: norm, drop, layers.{0,2,4}
            mapped = {k.replace("linear_1.", "layers.0.").replace("linear_2.", "layers.2.")
                      .replace("linear_3.", "layers.4."): v for k, v in src.items()}
        ours.encoders[mine].load_state_dict(mapped, strict=True)


def _one_last(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """MMSA's ``[1; h]`` index order -> mmgpt's ``[h; 1]`` along each of ``dims``."""
    for d in dims:
        t = torch.roll(t, shifts=-1, dims=d)
    return t


def _copy_linear(dst: torch.nn.Linear, src: torch.nn.Linear, weight: torch.Tensor | None = None) -> None:
    dst.load_state_dict({"weight": src.weight if weight is None else weight, "bias": src.bias})


def _copy_weights(model: str, ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    with torch.no_grad():
        if model == "ef_lstm":
            ours.fusion.norm.load_state_dict(theirs.norm.state_dict())
            lstm = dict(theirs.lstm.state_dict())
            t, a, v = SHAPE.dims["text"], SHAPE.dims["audio"], SHAPE.dims["vision"]
            w = lstm["weight_ih_l0"]  # columns: text, audio, video -> acoustic, language, visual
            lstm["weight_ih_l0"] = torch.cat([w[:, t:t + a], w[:, :t], w[:, t + a:t + a + v]], dim=1)
            ours.fusion.rnn.load_state_dict(lstm)
            _copy_linear(ours.head.net[1], theirs.linear)
            _copy_linear(ours.head.net[4], theirs.out)
            return
        _copy_subnets(ours, theirs)
        a, v, t = theirs.audio_subnet.linear_1.out_features, theirs.video_subnet.linear_1.out_features, \
            theirs.text_subnet.linear_1.out_features
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
        elif model == "lf_dnn":  # columns audio, video, text -> acoustic, language, visual
            w = theirs.post_fusion_layer_1.weight
            _copy_linear(ours.head.net[1], theirs.post_fusion_layer_1,
                         torch.cat([w[:, :a], w[:, a + v:], w[:, a:a + v]], dim=1))
            _copy_linear(ours.head.net[4], theirs.post_fusion_layer_2)
            _copy_linear(ours.head.net[7], theirs.post_fusion_layer_3)


@pytest.mark.parametrize("model", ["tfn", "lmf", "lf_dnn", "ef_lstm"])
def test_mmsas_weights_give_mmsas_outputs(files, model):
    path = files["aligned" if model == "ef_lstm" else "unaligned"]
    ours, theirs = _ours(model, path), _theirs(model, path)
    torch.manual_seed(0)
    for name, buf in theirs.named_buffers():  # BatchNorm statistics away from (0, 1), so that they count
        if name.endswith("running_mean"):
            buf.copy_(torch.randn_like(buf) * 0.3)
        elif name.endswith("running_var"):
            buf.copy_(torch.rand_like(buf) + 0.5)
    for p in theirs.parameters():  # LMF's zero bias and the rest: every weight must land in its place
        if p.requires_grad:
            p.data.add_(torch.randn_like(p) * 0.05)
    _copy_weights(model, ours, theirs)
    ours.eval(), theirs.eval()
    B = 6
    steps = (SHAPE.steps[0],) * 3 if model == "ef_lstm" else SHAPE.steps
    text, audio, vision = (torch.randn(B, n, SHAPE.dims[k]) for n, k in zip(steps, ("text", "audio", "vision")))
    inputs = {"language": text, "acoustic": audio, "visual": vision}
    batch = MultimodalBatch(inputs=inputs, masks={m: torch.ones(x.shape[:2], dtype=torch.bool)
                                                  for m, x in inputs.items()},
                            present={m: torch.ones(B, dtype=torch.bool) for m in inputs})
    if model != "ef_lstm":  # MMSA's loader hands these models audio and vision averaged over the steps
        audio, vision = audio.mean(dim=1, keepdim=True), vision.mean(dim=1, keepdim=True)
    with torch.no_grad():
        expected = theirs(text, audio, vision)["M"]
        got = ours(batch).logits
    assert got.shape == expected.shape == (B, 1)
    assert expected.std() > 1e-3  # not a constant output that any weights would match
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
