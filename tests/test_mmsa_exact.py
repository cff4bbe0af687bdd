"""``experiment=mosi_mmsa_<model>`` builds MMSA's own network: MMSA's weights copied into it give MMSA's outputs
(on sequences without padding, where the two differ by design; for MulT also per sample on a padded batch), and
the trainable parameter count of each equals that of MMSA's model built from MMSA's own config
(``get_config_regression``) on the same feature sizes, part by part where the parts line up (sub-networks, fusion +
post-fusion layers).

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
from mmgpt.peers.mmsa import copy_mmsa_weights

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


def _ours(model: str, path: Path, *overrides: str) -> torch.nn.Module:
    extra = [f"model.fusion.steps={SHAPE.steps[0]}"] if model == "ef_lstm" else []
    cfg = compose_train_config([f"experiment=mosi_mmsa_{model}", f"data.root={path}", *extra, *overrides])
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    return build_module(cfg, datamodule).net


def _theirs(model: str, path: Path, seed: int | None = None) -> torch.nn.Module:
    """MMSA's model; built right after MMSA's ``setup_seed(seed)`` when a seed is given, as ``MMSA_run`` builds it."""
    from MMSA.models import AMIO
    from MMSA.utils import setup_seed

    args = mmsa_args(model, path)
    args.feature_dims = [SHAPE.dims["text"], SHAPE.dims["audio"], SHAPE.dims["vision"]]
    args.seq_lens = [SHAPE.steps[0]] * 3 if model == "ef_lstm" else list(SHAPE.steps)
    if seed is not None:
        setup_seed(seed)
    return AMIO(args).Model


@pytest.mark.parametrize("model", ["tfn", "lmf", "lf_dnn", "ef_lstm", "mult"])
def test_the_experiment_starts_from_mmsas_weights_of_its_seed(files, model):
    """``seed=S`` starts mmgpt's network, tensor for tensor (BatchNorm statistics included), from the weights MMSA's
    own model has when MMSA builds it after ``setup_seed(S)``: the two runs of a seed start at the same point."""
    path = files["aligned" if model == "ef_lstm" else "unaligned"]
    torch.manual_seed(0)
    ours = _ours(model, path, "seed=1113")
    torch.manual_seed(1)  # mmgpt's own draws, other than any above: a tensor MMSA's copy misses stays different
    expected = _ours(model, path, "seed=1113", "model.init=null")
    copy_mmsa_weights(model, expected, _theirs(model, path, seed=1113),
                      [SHAPE.dims[k] for k in ("text", "audio", "vision")])
    want = expected.state_dict()
    assert [k for k, v in ours.state_dict().items() if not torch.equal(v, want[k])] == []


#: mmgpt modality -> MMSA's MulT projection
MULT_PROJECTIONS = {"language": "proj_l", "acoustic": "proj_a", "visual": "proj_v"}


@pytest.mark.parametrize("model", ["tfn", "lmf", "lf_dnn", "ef_lstm", "mult"])
def test_the_experiment_builds_mmsas_network(files, model):
    path = files["aligned" if model == "ef_lstm" else "unaligned"]
    ours, theirs = _ours(model, path), _theirs(model, path)
    assert _trainable(ours) == _trained_by_mmsa(model, theirs)
    if model == "mult":  # projections, cross-modal + memory stacks, residual block + output layer
        for mine, peer in MULT_PROJECTIONS.items():
            assert _trainable(ours.encoders[mine]) == _trainable(getattr(theirs, peer)), mine
        stacks = [m for n, m in theirs.named_children() if n.startswith("trans_")]
        assert _trainable(ours.fusion) == sum(_trainable(m) for m in stacks)
        assert _trainable(ours.head) == sum(_trainable(getattr(theirs, n)) for n in ("proj1", "proj2", "out_layer"))
    elif model != "ef_lstm":  # sub-network by sub-network (MMSA: audio, video, text)
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
# without padding (where the two differ by design: mmgpt averages and reads the LSTM state over the real steps only;
# its MulT masks the padding and reads each target's last real step). MulT takes the whole sequences, as in MMSA.


def _with_mmsas_weights(model: str, path: Path, *overrides: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """mmgpt's and MMSA's networks in eval mode, MMSA's weights perturbed and copied into mmgpt's."""
    ours, theirs = _ours(model, path, *overrides), _theirs(model, path)
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
    return ours.eval(), theirs.eval()


def _full_batch(inputs: dict[str, torch.Tensor]) -> MultimodalBatch:
    B = next(iter(inputs.values())).shape[0]
    return MultimodalBatch(inputs=inputs, masks={m: torch.ones(x.shape[:2], dtype=torch.bool)
                                                 for m, x in inputs.items()},
                           present={m: torch.ones(B, dtype=torch.bool) for m in inputs})


@pytest.mark.parametrize("model", ["tfn", "lmf", "lf_dnn", "ef_lstm", "mult"])
def test_mmsas_weights_give_mmsas_outputs(files, model):
    path = files["aligned" if model == "ef_lstm" else "unaligned"]
    ours, theirs = _with_mmsas_weights(model, path)
    B = 6
    steps = (SHAPE.steps[0],) * 3 if model == "ef_lstm" else SHAPE.steps
    text, audio, vision = (torch.randn(B, n, SHAPE.dims[k]) for n, k in zip(steps, ("text", "audio", "vision")))
    batch = _full_batch({"language": text, "acoustic": audio, "visual": vision})
    if model not in ("ef_lstm", "mult"):  # MMSA's loader hands these models audio and vision averaged over the steps
        audio, vision = audio.mean(dim=1, keepdim=True), vision.mean(dim=1, keepdim=True)
    with torch.no_grad():
        expected = theirs(text, audio, vision)["M"]
        got = ours(batch).logits
    assert got.shape == expected.shape == (B, 1)
    assert expected.std() > 1e-3  # not a constant output that any weights would match
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model", ["tfn", "lmf", "lf_dnn"])
def test_with_stored_steps_a_padded_batch_gives_mmsas_outputs_on_its_stored_tensors(files, model):
    """``stored_steps`` set to the file's steps: on a padded batch (each sequence cut to its length, as mmgpt's
    loader hands it on), mmgpt computes what MMSA computes from the zero-padded tensors its file stores (the text
    LSTM run through the padding, audio and vision averaged over every stored step)."""
    steps = dict(zip(("text", "audio", "vision"), SHAPE.steps))
    ours, theirs = _with_mmsas_weights(model, files["unaligned"], f"model.net.encoders.language.stored_steps="
                                       f"{steps['text']}", f"model.net.encoders.acoustic.stored_steps={steps['audio']}",
                                       f"model.net.encoders.visual.stored_steps={steps['vision']}")
    lengths = {"text": [10, 4, 7, 1], "audio": [12, 3, 9, 12], "vision": [2, 8, 5, 8]}
    stored = {k: torch.zeros(4, steps[k], SHAPE.dims[k]) for k in steps}
    inputs, masks = {}, {}
    for (k, ns), mine in zip(lengths.items(), ("language", "acoustic", "visual")):
        n_max = max(ns)
        x = torch.randn(4, n_max, SHAPE.dims[k]) * 3  # whatever the batch's padding holds
        mask = torch.arange(n_max)[None] < torch.tensor(ns)[:, None]
        for i, n in enumerate(ns):
            stored[k][i, :n] = x[i, :n]
        inputs[mine], masks[mine] = x, mask
    batch = MultimodalBatch(inputs=inputs, masks=masks, present={m: torch.ones(4, dtype=torch.bool) for m in inputs})
    with torch.no_grad():
        expected = theirs(stored["text"], stored["audio"].mean(dim=1, keepdim=True),
                          stored["vision"].mean(dim=1, keepdim=True))["M"]
        got = ours(batch).logits
        real_steps = _with_mmsas_weights(model, files["unaligned"])[0](batch).logits
    assert expected.std() > 1e-3
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(real_steps, expected, rtol=1e-4, atol=1e-5)  # the default (real steps) differs


def test_mult_on_a_padded_batch_gives_mmsas_output_on_each_sample_unpadded(files):
    """Padded steps are masked, the future mask's diagonal follows each sample's lengths and the summary is its last
    real step: each sample of a padded batch gets what MMSA computes on that sample alone (one shorter than the
    kernel included: MMSA's convolution reads it zero-padded to the kernel)."""
    ours, theirs = _with_mmsas_weights("mult", files["unaligned"])
    lengths = {"text": [10, 7, 3], "audio": [12, 9, 12], "vision": [8, 8, 6]}  # text 3 < kernel 5
    seqs = {k: [torch.randn(n, SHAPE.dims[k]) for n in ns] for k, ns in lengths.items()}
    inputs, masks = {}, {}
    for mine, k in (("language", "text"), ("acoustic", "audio"), ("visual", "vision")):
        inputs[mine] = torch.nn.utils.rnn.pad_sequence(seqs[k], batch_first=True, padding_value=7.0)  # not zeros
        masks[mine] = torch.arange(inputs[mine].shape[1])[None, :] < torch.tensor(lengths[k])[:, None]
    batch = MultimodalBatch(inputs=inputs, masks=masks, present={m: torch.ones(3, dtype=torch.bool) for m in inputs})
    with torch.no_grad():
        got = ours(batch).logits
        expected = torch.cat([theirs(*(torch.nn.functional.pad(seqs[k][i], (0, 0, 0, max(0, 5 - lengths[k][i])))[None]
                                       for k in ("text", "audio", "vision")))["M"] for i in range(3)])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
