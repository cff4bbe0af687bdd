"""Pretrained backbone layers under ``model.activation_checkpointing`` and FSDP2: each backbone layer (here
``BertLayer``, found from the encoder's ``layers()``) is recomputed / sharded as its own unit, frozen, LoRA-adapted
and unfrozen layers alike, with the same results as the plain network."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from mmgpt.cli.train import apply_speedups
from mmgpt.layers import Block
from mmgpt.registry import build_network
from mmgpt.training.backbone_checkpoints import unchanged_keys
from mmgpt.training.distributed import layer_classes, shard_module
from tests.helpers.bert_double import bert_spec, save_tiny_bert

LAYERS, BATCH, STEPS, LR = 3, 4, 2, 0.5
TUNING = {"unfreeze_last": 1, "lora": {"r": 2, "target_modules": ["query", "value"]}}


def _batch(step: int, rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    x = torch.randint(0, 256, (BATCH, 9), generator=g)
    mask = torch.ones(BATCH, 9, dtype=torch.bool)
    mask[1, 5:] = False
    y = torch.randint(0, 3, (BATCH,), generator=g)
    return x[rows], mask[rows], y[rows]


def _loss(net: nn.Module, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    from mmgpt.batch import MultimodalBatch

    batch = MultimodalBatch(inputs={"text": x}, masks={"text": mask}, labels=y, ids=list(range(len(y))))
    return nn.functional.cross_entropy(net(batch).logits, y)


def _net(bert: Path) -> nn.Module:
    torch.manual_seed(0)
    return build_network(bert_spec(bert, **TUNING), 3)


def test_activation_checkpointing_wraps_backbone_layers_with_the_same_gradients(tmp_path):
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    bert = save_tiny_bert(tmp_path / "bert", num_layers=LAYERS)
    plain, wrapped = _net(bert), _net(bert)
    apply_speedups(wrapped, compile=False, activation_checkpointing=True)
    inner = [type(m._checkpoint_wrapped_module).__name__ for m in wrapped.modules()
             if isinstance(m, CheckpointWrapper)]
    assert inner.count("BertLayer") == LAYERS and inner.count("Block") == sum(
        isinstance(m, Block) for m in plain.modules())
    assert set(plain.state_dict()) == set(wrapped.state_dict())
    # slim checkpoints still see the frozen tensors under their (unwrapped) names
    assert unchanged_keys("net.encoders.text", wrapped.encoders["text"]) == unchanged_keys(
        "net.encoders.text", plain.encoders["text"])
    for net in (plain, wrapped):
        net.train()
        torch.manual_seed(1)  # the same dropout draws (the recomputation replays them)
        _loss(net, *_batch(0)).backward()
    grads = {n: p.grad for n, p in plain.named_parameters() if p.grad is not None}
    assert any("lora_B" in n for n in grads) and any("layer.2.output" in n for n in grads)
    for (name, p), q in zip(plain.named_parameters(), wrapped.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)


def _train(net: nn.Module, rank: int | None) -> dict[str, torch.Tensor]:
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=LR)
    net.train()
    for step in range(STEPS):
        opt.zero_grad()
        rows = slice(None) if rank is None else slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
        _loss(net, *_batch(step, rows)).backward()
        opt.step()
    return net.state_dict()


def _worker(rank: int, init_file: str, bert: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        from torch.distributed.tensor import DTensor

        net = _net(Path(bert))
        units = shard_module(net)
        blocks = sum(isinstance(m, Block) for m in net.modules())
        assert units == blocks + LAYERS, (units, blocks)
        assert all(isinstance(p, DTensor) for p in net.parameters())
        state = _train(net, rank)
        full = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in state.items()}
        if rank == 0:
            torch.save(full, Path(out_dir) / "sharded.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp_shards_backbone_layers_and_trains_like_one_process(tmp_path):
    bert = save_tiny_bert(tmp_path / "bert", num_layers=LAYERS)
    # dropout would draw differently in 2 processes: a BERT without it (the LoRA backbone trains in train mode)
    from transformers import BertConfig

    config = BertConfig.from_pretrained(bert)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    config.save_pretrained(bert)
    init_file = tempfile.mktemp(dir=tmp_path)
    mp.start_processes(_worker, args=(init_file, str(bert), str(tmp_path)), nprocs=2, start_method="spawn",
                       join=True)
    sharded = torch.load(tmp_path / "sharded.pt", weights_only=True)
    net = _net(bert)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    reference = _train(net, None)
    assert set(sharded) == set(reference)
    moved = [k for k in reference if not torch.equal(reference[k], before[k])]
    assert any("lora_B" in k for k in moved) and any("layer.2." in k and "lora" not in k for k in moved)
    for k, v in sharded.items():
        torch.testing.assert_close(v, reference[k], atol=2e-5, rtol=1e-4, msg=k)
        if k.startswith("encoders.text.backbone.") and k not in moved:
            assert torch.equal(v, before[k]), f"frozen {k} changed under FSDP"


def test_layer_classes_include_backbone_layers(tmp_path):
    net = _net(save_tiny_bert(tmp_path / "bert", num_layers=LAYERS))
    names = [c.__name__ for c in layer_classes(net)]
    assert names[:1] == ["Block"] and "BertLayer" in names


@pytest.mark.slow
def test_fsdp_sim_trains_a_lora_backbone_and_evaluates_on_one_process(tmp_path, compose_cfg):
    """``trainer=fsdp_sim`` (Lightning's ModelParallelStrategy, 2 CPU processes) end to end with a LoRA-tuned
    backbone placed from the command line; its sharded best checkpoint (written whole: sharded state is not
    slimmed) evaluates on one process to the validation metric of the run."""
    import json
    import os
    import subprocess
    import sys

    from omegaconf import open_dict

    from mmgpt.cli.evaluate import evaluate
    from mmgpt.training.distributed import is_sharded_checkpoint

    bert = save_tiny_bert(tmp_path / "bert", num_layers=LAYERS)
    enc = "{type:test_bert,name_or_path:'%s',dim:32,tuning:{unfreeze_last:1,lora:{r:2,target_modules:[query]}}}" % bert
    run_dir = tmp_path / "run"
    args = ["experiment=smoke", "logger=csv", "test=false", "trainer=fsdp_sim", "plugins=[tests.helpers.bert_double]",
            "model.modalities=[text]", "model/fusion=late", "~model.net.encoders.image", "~model.net.encoders.audio",
            "~model.net.encoders.text", f"+model.net.encoders.text={enc}", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "MMGPT_LOG_DIR": str(tmp_path), "CI": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", "mmgpt.cli.train", *args], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == 2 and results["params_by_part"]["encoders.text"]["adapters"] == LAYERS * 2 * 64
    assert is_sharded_checkpoint(results["best_ckpt"])
    eval_cfg = compose_cfg([f"ckpt_path={results['best_ckpt']}", "plugins=[tests.helpers.bert_double]"],
                           config_name="eval")
    with open_dict(eval_cfg):
        eval_cfg.paths.output_dir = str(tmp_path / "eval")
    out = evaluate(eval_cfg)
    assert out["metrics"]["val/acc"] == pytest.approx(results["val"]["val/acc"], abs=1e-6)
