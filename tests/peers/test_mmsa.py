"""``model.init={peer, model, seed}`` (:func:`mmgpt.peers.init_like`): a network of MMSA's architecture starts from
the weights MMSA's own model draws at the seed. That they are MMSA's, tensor for tensor, is checked against MMSA
itself in ``tests/test_mmsa_exact.py`` (slow, needs the ``mmsa`` package); here: the experiments ask for it with
the run's seed, the draw leaves the run's random state alone, and bad specs are refused by key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from bench.common import compose_train_config
from bench.mmsa_data import Shape, write_pickle
from mmgpt.cli.train import build_module
from mmgpt.peers import init_like

SHAPE = Shape({"train": 16, "valid": 8, "test": 8}, {"text": 12, "audio": 5, "vision": 7}, (6, 8, 5))
MODELS = ["tfn", "lmf", "lf_dnn", "ef_lstm", "mult"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("peer_init")
    return {kind: write_pickle(root / f"{kind}_50.pkl", aligned=kind == "aligned", shape=SHAPE)
            for kind in ("aligned", "unaligned")}


def _net(files: dict[str, Path], model: str, *overrides: str) -> torch.nn.Module:
    path = files["aligned" if model == "ef_lstm" else "unaligned"]
    extra = [f"model.fusion.steps={SHAPE.steps[0]}"] if model == "ef_lstm" else []
    cfg = compose_train_config([f"experiment=mosi_mmsa_{model}", f"data.root={path}", *extra, *overrides])
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    return build_module(cfg, datamodule).net


def _same(a: torch.nn.Module, b: torch.nn.Module) -> list[str]:
    """The names of the tensors (parameters and buffers) in which ``a`` and ``b`` differ."""
    sb = b.state_dict()
    return [k for k, v in a.state_dict().items() if not torch.equal(v, sb[k])]


@pytest.mark.parametrize("model", MODELS)
def test_the_experiment_draws_its_start_from_the_run_seed_alone(files, model):
    torch.manual_seed(1)
    first = _net(files, model, "seed=1113")
    torch.manual_seed(2)  # whatever the random state before building: the same start for the same seed
    again = _net(files, model, "seed=1113")
    assert _same(first, again) == []
    other = _net(files, model, "seed=1114")
    differ = _same(first, other)
    drawn = [n for n, p in first.named_parameters() if p.unique().numel() > 1]  # not a constant (zeros, ones)
    assert drawn and set(drawn) <= set(differ)
    plain = _net(files, model, "seed=1113", "model.init=null")  # mmgpt's own initialisation
    assert set(drawn) <= set(_same(first, plain))


def test_the_draw_leaves_the_runs_random_state_alone(files):
    net = _net(files, "lmf", "model.init=null")
    torch.manual_seed(123)
    state = torch.get_rng_state()
    init_like(net, {"peer": "mmsa", "model": "lmf", "seed": 7})
    assert torch.equal(torch.get_rng_state(), state)


def test_the_spec_equals_calling_init_like(files):
    net = _net(files, "lmf", "seed=31")
    direct = _net(files, "lmf", "model.init=null")
    init_like(direct, {"peer": "mmsa", "model": "lmf", "seed": 31})
    assert _same(net, direct) == []


@pytest.mark.parametrize(("spec", "message"), [
    ({"peer": "mmsa", "model": "lmf"}, r"model.init: needs exactly peer, model and seed \(missing seed\)"),
    ({"peer": "mmsa", "model": "lmf", "seed": 1, "rank": 3}, r"\(unknown rank\)"),
    ({"peer": "multibench", "model": "lmf", "seed": 1}, r"model.init.peer: 'multibench' is not one of \['mmsa'\]"),
    ({"peer": "mmsa", "model": "misa", "seed": 1}, r"model.init.model: 'misa' is not one of"),
    ({"peer": "mmsa", "model": "lmf", "seed": "1111"}, r"model.init.seed: '1111' is not an integer"),
    ({"peer": "mmsa", "model": "lmf", "seed": True}, r"model.init.seed: True is not an integer"),
])
def test_a_bad_spec_is_refused_by_key(files, spec, message):
    net = _net(files, "lmf", "model.init=null")
    with pytest.raises(ValueError, match=message):
        init_like(net, spec)


def test_another_models_weights_do_not_fit(files):
    """LMF's draws into TFN's network: refused, naming the key, not half copied silently."""
    net = _net(files, "tfn", "model.init=null")
    with pytest.raises(ValueError, match=r"model.init: MMSA's lmf initial weights do not fit this network"):
        init_like(net, {"peer": "mmsa", "model": "lmf", "seed": 1})


def test_the_init_of_a_checkpoint_is_read_back(files, tmp_path):
    """A checkpoint of a run that started from MMSA's weights loads through the safe loader (``init`` is one of
    the module's plain arguments) and gives back the trained weights, not a fresh draw."""
    from mmgpt.training.lit_module import MultimodalModule

    path = files["unaligned"]
    cfg = compose_train_config(["experiment=mosi_mmsa_lmf", f"data.root={path}", "seed=5"])
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    module = build_module(cfg, datamodule)
    with torch.no_grad():
        for p in module.net.parameters():
            p.add_(0.5)  # "trained": away from the seed's draw
    ckpt = tmp_path / "m.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": "2.5.0"}, ckpt)
    loaded = MultimodalModule.load_from_checkpoint(ckpt)
    assert loaded.hparams["init"] == {"peer": "mmsa", "model": "lmf", "seed": 5}
    assert _same(loaded.net, module.net) == []
