"""Fine-tuning: partial loading with a report, frozen weights stay bit-identical, LoRA adapters, counts."""

import pytest
import torch

from mmgpt.cli.train import train
from mmgpt.lora import LoRALinear, add_lora
from mmgpt.training.finetune import freeze, init_from_checkpoint, load_partial, parameter_counts, read_state_dict
from tests.conftest import make_batch
from tests.helpers.tiny import tiny_net


def test_load_partial_reports_missing_unexpected_and_mismatched(tmp_path):
    src = tiny_net("early", num_classes=5, decoder=True)
    dst = tiny_net("early", num_classes=3, decoder=False)
    torch.save({"state_dict": {f"net.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "pre.ckpt")
    report = init_from_checkpoint(dst, tmp_path / "pre.ckpt")
    assert set(report.mismatched) == {"head.net.2.weight", "head.net.2.bias"}
    assert report.unexpected and all(k.startswith("decoder.") for k in report.unexpected)
    assert report.missing == []
    for k, v in dst.state_dict().items():
        if k not in report.mismatched:
            assert torch.equal(v, src.state_dict()[k]), k
    assert "shape mismatch" in report.summary()


def test_freeze_then_train_leaves_frozen_weights_bit_identical(compose_cfg, tmp_path):
    cfg = compose_cfg(["experiment=smoke", "model/fusion=late", "logger=csv", "model.freeze=[encoders.image,fusion]",
                       "trainer.max_steps=3", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"])
    # Start from a known checkpoint, so the frozen values to compare against are on disk.
    from mmgpt.cli.train import build_module
    from mmgpt.datamodules.synthetic import SyntheticDataModule

    dm = SyntheticDataModule(num_train=8, num_val=8, num_test=8)
    net = build_module(cfg, dm).net
    start = net.state_dict()
    params = {n for n, _ in net.named_parameters()}  # perturb weights only (not mel filterbank buffers)
    torch.manual_seed(123)
    start = {k: v + 0.01 * torch.randn_like(v) if k in params else v for k, v in start.items()}
    torch.save(start, tmp_path / "start.pt")
    cfg.init_from = str(tmp_path / "start.pt")
    results = train(cfg)
    assert results["init_from"]["loaded"] == len(start) and results["init_from"]["missing"] == []
    assert 0 < results["params_trainable"] < results["params"]["total"]
    trained = {k[4:]: v for k, v in read_state_dict(tmp_path / "run" / "checkpoints" / "last.ckpt").items()
               if k.startswith("net.")}
    frozen = [k for k in start if k.startswith(("encoders.image.", "fusion."))]
    assert frozen and all(torch.equal(trained[k], start[k]) for k in frozen)
    moved = [k for k in start if k.startswith("encoders.text.") and not torch.equal(trained[k], start[k])]
    assert moved, "the unfrozen text encoder should have been trained"


def test_freeze_unknown_part_fails():
    with pytest.raises(AttributeError, match="encoders.video"):
        freeze(tiny_net("early", decoder=False), ["encoders.video"])


def test_freeze_a_single_parameter_leaves_its_siblings_trainable():
    from mmgpt.fusion.tensor import LowRankFusion

    net = torch.nn.ModuleDict({"fusion": LowRankFusion(modalities=["audio", "text"], dim=4, rank=2)})
    assert freeze(net, ["fusion.rank_weights", "fusion.bias"]) == ["fusion.rank_weights", "fusion.bias"]
    fusion = net.get_submodule("fusion")
    assert not fusion.rank_weights.requires_grad and not fusion.bias.requires_grad
    assert all(p.requires_grad for p in fusion.factors.parameters())


@pytest.mark.parametrize("fusion", ["early", "cross_attention"])
def test_lora_starts_as_the_base_model_and_trains_only_adapters(fusion):
    torch.manual_seed(0)
    net = tiny_net(fusion, decoder=False).eval()
    batch = make_batch(2)
    before = net(batch).logits
    base_state = net.state_dict()
    freeze(net, ["encoders", "fusion"])
    adapted = add_lora(net, parts=["fusion"], rank=2)
    assert adapted and all(isinstance(net.get_submodule(n), LoRALinear) for n in adapted)
    torch.testing.assert_close(net(batch).logits, before)  # B = 0: identical at the start
    trainable, total = parameter_counts(net)
    lora_params = sum(p.numel() for n, p in net.named_parameters() if "lora_" in n)
    head_params = sum(p.numel() for p in net.head.parameters())
    assert trainable == lora_params + head_params and trainable < total
    net(batch).logits.sum().backward()
    assert all(p.grad is not None for n, p in net.named_parameters() if "lora_b" in n)
    # A plain (pre-LoRA) state dict loads into the adapted network through the base.* aliases.
    report = load_partial(net, base_state)
    assert not report.unexpected and all("lora_" in k for k in report.missing)


def test_lora_through_the_module_config(compose_cfg):
    cfg = compose_cfg(["experiment=smoke", "debug=fdr", "logger=csv", "model.freeze=[encoders,fusion]",
                       "model.lora={rank:2,alpha:4,parts:[fusion]}"])
    results = train(cfg)
    assert results["params_trainable"] < results["params"]["total"] / 4
    assert isinstance(results["val"]["val/acc"], float)


@pytest.mark.parametrize("content", ["call", "list", "text", "safetensors"])
def test_init_from_a_file_that_is_not_a_checkpoint_is_one_line_and_runs_nothing(tmp_path, content):
    """init_from is read as data, like ckpt_path: a pickled call, a pickle of something else, a text file or a
    damaged .safetensors file each end in one line naming the file (nothing is run)."""
    import os

    from mmgpt.errors import UserError

    marker = tmp_path / "ran"

    class Call:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / ("weights.safetensors" if content == "safetensors" else "weights.pt")
    if content == "call":
        torch.save({"state_dict": {"w": Call()}}, path)
    elif content == "list":
        torch.save([torch.zeros(2)], path)
    else:
        path.write_text("not weights\n")
    with pytest.raises(UserError) as refused:
        init_from_checkpoint(tiny_net("late"), path)
    message = str(refused.value)
    assert str(path) in message and "\n" not in message and not marker.exists()
    if content == "call":
        assert "GLOBAL posix.system" in message


def test_init_from_a_sharded_checkpoint_folder(tmp_path):
    """trainer=fsdp's checkpoint folder initialises a network as its consolidated file would (read as data)."""
    import torch.distributed.checkpoint as dcp

    src, dst = tiny_net("late", decoder=False), tiny_net("late", decoder=False)
    folder = tmp_path / "last.ckpt"
    with pytest.warns(UserWarning, match="single process"):
        dcp.save({"state_dict": {f"net.{k}": v for k, v in src.state_dict().items()}}, checkpoint_id=folder,
                 no_dist=True)
    torch.save({"global_step": 1}, folder / "meta.pt")
    report = init_from_checkpoint(dst, folder)
    assert report.missing == [] and report.mismatched == {}
    for k, v in dst.state_dict().items():
        assert torch.equal(v, src.state_dict()[k]), k
