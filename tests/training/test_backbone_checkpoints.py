"""Slim checkpoints of networks with pretrained backbones: only trained tensors + the backbone's identity are
written; loading re-reads the backbone, refuses one whose hash differs, and gives back the saved module exactly
(evaluation reproduces the run, resuming is exact); frozen weights changed since loading are kept."""

from __future__ import annotations

import shutil

import pytest
import torch
from omegaconf import open_dict

from mmgpt.cli.evaluate import evaluate
from mmgpt.cli.train import train
from mmgpt.errors import CheckpointError
from mmgpt.training.backbone_checkpoints import CKPT_KEY
from mmgpt.training.lit_module import MultimodalModule
from tests.helpers.bert_double import bert_run_cfg, folder_sha256, save_tiny_bert

#: LoRA on query/value + the top layer unfrozen, dropout on: adapters, a trained layer and frozen layers at once.
TUNING = {"unfreeze_last": 1, "lora": {"r": 2, "alpha": 4, "target_modules": ["query", "value"]}, "lr_mult": 0.5}
PREFIX = "net.encoders.text.backbone."


@pytest.fixture
def bert(tmp_path):
    return save_tiny_bert(tmp_path / "tiny-bert", hidden_size=32, num_layers=3)


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_slim_checkpoint_stores_trained_tensors_and_loads_back_exactly(bert, compose_cfg, tmp_path):
    cfg = bert_run_cfg(compose_cfg, bert, TUNING)
    results = train(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = _state(last)
    entry = ckpt[CKPT_KEY]["net.encoders.text"]
    assert entry["name_or_path"] == str(bert) and entry["sha256"] == folder_sha256(bert)
    stored = {k for k in ckpt["state_dict"] if k.startswith(PREFIX)}
    # stored: the adapters and the whole top layer; omitted: everything else of the backbone
    assert stored == {k for k in stored if "lora_" in k or k.startswith(PREFIX + "encoder.layer.2.")}
    assert any("lora_B" in k and "layer.0." in k for k in stored)
    assert all(k.startswith(PREFIX) and "lora_" not in k and "layer.2." not in k for k in entry["omitted"])
    assert len(entry["omitted"]) > len(stored)

    module = MultimodalModule.load_from_checkpoint(last)  # the one loader mmgpt-eval and mmgpt-generate use
    full = module.state_dict()
    assert set(full) == set(ckpt["state_dict"]) | set(entry["omitted"])
    for k, v in ckpt["state_dict"].items():
        assert torch.equal(full[k], v), k

    eval_cfg = compose_cfg([f"ckpt_path={results['best_ckpt']}", "plugins=[tests.helpers.bert_double]"],
                           config_name="eval")
    with open_dict(eval_cfg):
        eval_cfg.paths.output_dir = str(tmp_path / "eval")
    out = evaluate(eval_cfg)
    assert out["metrics"]["val/acc"] == pytest.approx(results["val"]["val/acc"], abs=1e-6)
    assert out["metrics"]["val/loss"] == pytest.approx(results["val"]["val/loss"], rel=1e-5)


def test_a_backbone_with_another_hash_is_refused_naming_it(bert, compose_cfg, tmp_path):
    train(bert_run_cfg(compose_cfg, bert, TUNING, "trainer.max_epochs=1", "test=false"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    trained_on = folder_sha256(bert)
    shutil.rmtree(bert)
    save_tiny_bert(bert, hidden_size=32, num_layers=3, seed=1)  # same architecture, other weights
    with pytest.raises(CheckpointError) as e:
        MultimodalModule.load_from_checkpoint(last)
    message = str(e.value)
    assert "\n" not in message and "net.encoders.text" in message and str(bert) in message
    assert trained_on[:16] in message and folder_sha256(bert)[:16] in message and "refused" in message


def test_resume_from_a_slim_checkpoint_is_exact(bert, compose_cfg, tmp_path):
    # no schedule: the first part stops at max_steps=3, which would otherwise change the schedule's length
    tuning_args = ("model.dropout=0.1", "test=false", "callbacks.step_checkpoint.every_n_train_steps=1",
                   "model.module.scheduler=null")
    whole = train(bert_run_cfg(compose_cfg, bert, TUNING, *tuning_args, "hydra.run.dir=unused"))
    reference = _state(tmp_path / "run" / "checkpoints" / "last.ckpt")
    shutil.move(tmp_path / "run", tmp_path / "whole")

    first = bert_run_cfg(compose_cfg, bert, TUNING, *tuning_args, "trainer.max_steps=3")
    train(first)
    step3 = tmp_path / "run" / "checkpoints" / "step0000003.ckpt"
    assert CKPT_KEY in _state(step3)  # mid-epoch, slim
    shutil.move(tmp_path / "run", tmp_path / "first")
    second = bert_run_cfg(compose_cfg, bert, TUNING, *tuning_args,
                          f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'step0000003.ckpt'}")
    resumed = train(second)
    assert resumed["global_step"] == whole["global_step"] == 8
    final = _state(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert final[CKPT_KEY] == reference[CKPT_KEY]
    assert final["state_dict"].keys() == reference["state_dict"].keys()
    for k, v in reference["state_dict"].items():
        assert torch.equal(final["state_dict"][k], v), k


def test_frozen_weights_changed_by_init_from_are_kept(bert, compose_cfg, tmp_path):
    from mmgpt.registry import build_network
    from tests.helpers.bert_double import bert_spec

    net = build_network(bert_spec(bert), 3)
    start = {f"net.{k}": v + 0.01 if k.startswith("encoders.text.backbone.encoder.layer.0.") else v
             for k, v in net.state_dict().items()}
    torch.save({"state_dict": start}, tmp_path / "start.ckpt")
    cfg = bert_run_cfg(compose_cfg, bert, {}, "trainer.max_epochs=1", "test=false",
                       f"init_from={tmp_path / 'start.ckpt'}")
    train(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = _state(last)
    layer0 = {k for k in start if k.startswith(PREFIX + "encoder.layer.0.")}
    assert layer0 and layer0 <= set(ckpt["state_dict"])  # changed since loading: stored
    assert not set(ckpt[CKPT_KEY]["net.encoders.text"]["omitted"]) & layer0
    module = MultimodalModule.load_from_checkpoint(last).state_dict()
    for k in layer0:
        assert torch.equal(module[k], start[k]), k


def test_a_backbone_without_a_content_hash_is_written_whole(bert):
    from mmgpt.encoders.backbone import BackboneIdentity
    from mmgpt.registry import build_network
    from mmgpt.training.backbone_checkpoints import slim
    from tests.helpers.bert_double import bert_spec

    net = build_network(bert_spec(bert), 3)
    ckpt = {"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}
    wrapper = torch.nn.Module()
    wrapper.net = net
    assert slim(dict(ckpt, state_dict=dict(ckpt["state_dict"])), wrapper) > 0
    net.encoders["text"].identity = BackboneIdentity("timm:vit_tiny:pretrained", "unverified")
    whole = dict(ckpt, state_dict=dict(ckpt["state_dict"]))
    assert slim(whole, wrapper) == 0 and CKPT_KEY not in whole and whole["state_dict"].keys() == ckpt[
        "state_dict"].keys()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64, torch.int64, torch.bool])
def test_fingerprint_sees_a_one_bit_change_and_not_the_reduction_order(dtype, monkeypatch):
    from mmgpt.encoders import tuning
    from mmgpt.encoders.tuning import fingerprint

    monkeypatch.setattr(tuning, "FINGERPRINT_CHUNK", 7 * 1000)
    t = (torch.randn(20_005, generator=torch.Generator().manual_seed(0)) * 100).to(dtype)  # 3 chunks
    assert fingerprint(t) == fingerprint(t.clone()) == fingerprint(t.reshape(-1, 1).t().t())
    changed = t.clone().view(-1)
    flipped = changed.view(torch.uint8)
    flipped[12345 * changed.element_size()] ^= 1  # the lowest bit of one element
    assert fingerprint(changed) != fingerprint(t)
    if dtype == torch.float32:  # position-sensitive (every 7th element), not only a sum of values
        assert fingerprint(t[:-1]) != fingerprint(t[:-1].flip(0))


def test_init_from_a_slim_checkpoint_checks_its_backbones(bert, compose_cfg, tmp_path):
    from mmgpt.registry import build_network
    from mmgpt.training.finetune import init_from_checkpoint
    from tests.helpers.bert_double import bert_spec

    train(bert_run_cfg(compose_cfg, bert, TUNING, "trainer.max_epochs=1", "test=false"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    torch.manual_seed(1)
    net = build_network(bert_spec(bert, **TUNING), 15)
    report = init_from_checkpoint(net, last)
    omitted = {k.removeprefix("net.") for k in _state(last)[CKPT_KEY]["net.encoders.text"]["omitted"]}
    assert set(report.missing) == omitted  # left as read from the same (checked) backbone folder
    other = save_tiny_bert(tmp_path / "other-bert", hidden_size=32, num_layers=3, seed=1)
    with pytest.raises(CheckpointError, match=r"net\.encoders\.text: the backbone read from .*other-bert"):
        init_from_checkpoint(build_network(bert_spec(other, **TUNING), 15), last)
