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
from bench.mmsa_weights import copy_mmsa_weights
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


# --- Same weights, same function: MMSA's weights copied into mmgpt's network give MMSA's outputs, on sequences
# without padding (where the two differ by design: mmgpt averages and reads the LSTM state over the real steps only).


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
    copy_mmsa_weights(model, ours, theirs, [SHAPE.dims[k] for k in ("text", "audio", "vision")])
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
