"""Backbone fine-tuning on a GPU at BERT-base size (random weights from a config, saved and loaded by path): peak
memory of a frozen backbone vs LoRA vs LoRA with activation checkpointing of the backbone layers; frozen weights
bit-identical after bf16 steps and still recognised as unchanged for slim checkpoints; ``trainer=fsdp`` sharding a
LoRA-tuned backbone per layer end to end.

Run by bench/gpu.sh (section backbone-tuning, its figures printed into backbone_tuning.log); skipped without CUDA.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")
LORA = {"r": 8, "alpha": 16, "target_modules": ["query", "value"]}


@pytest.fixture(scope="module")
def bert_base(tmp_path_factory):
    from tests.helpers.bert_double import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("bert") / "bert-base-sized", hidden_size=768, num_layers=12,
                          intermediate_size=3072, num_heads=12)


def _peak_and_check(bert: Path, activation_checkpointing: bool, **tuning) -> float:
    from mmgpt.batch import MultimodalBatch
    from mmgpt.cli.train import apply_speedups
    from mmgpt.objectives import Classification
    from mmgpt.registry import build_network
    from tests.helpers.bert_double import bert_spec

    torch.cuda.empty_cache()
    net = build_network(bert_spec(bert, dim=256, **tuning), 15)
    apply_speedups(net, compile=False, activation_checkpointing=activation_checkpointing)
    net = net.to(CUDA).train()
    frozen = {n: p.detach().clone() for n, p in net.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3, fused=True)
    g = torch.Generator(device=CUDA).manual_seed(0)
    x = torch.randint(0, 256, (32, 128), device=CUDA, generator=g)
    batch = MultimodalBatch(inputs={"text": x}, masks={"text": torch.ones_like(x, dtype=torch.bool)},
                            labels=torch.randint(0, 15, (32,), device=CUDA, generator=g), ids=list(range(32)))
    torch.cuda.reset_peak_memory_stats()
    for _ in range(3):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = Classification(15)(net, batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30
    assert torch.isfinite(loss)
    for n, p in net.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen {n} changed"
    # slim checkpoints: the fingerprints noted on the CPU at load time still match on the GPU after training
    from mmgpt.encoders.tuning import frozen_state
    from mmgpt.training.backbone_checkpoints import unchanged_keys

    encoder = net.encoders["text"]
    assert len(unchanged_keys("net.encoders.text", encoder)) == len(frozen_state(encoder)) > 0
    return peak


def test_frozen_lora_and_checkpointed_lora_memory_at_bert_base_size(bert_base):
    peaks = {"frozen": _peak_and_check(bert_base, False),
             "lora": _peak_and_check(bert_base, False, lora=LORA),
             "lora+activation_checkpointing": _peak_and_check(bert_base, True, lora=LORA)}
    print("backbone peak GiB (BERT-base size, batch 32 x 128 tokens, bf16 autocast):", json.dumps(peaks))
    assert peaks["frozen"] < peaks["lora"]  # no_grad: no backbone activations kept
    assert peaks["lora+activation_checkpointing"] < peaks["lora"]  # backbone layers recomputed


def test_fsdp_shards_a_lora_tuned_backbone(tmp_path, bert_base):
    enc = ("{type:test_bert,name_or_path:'%s',dim:64,tuning:{unfreeze_last:1,lora:{r:8,target_modules:[query,value]}}}"
           % bert_base)
    run_dir = tmp_path / "run"
    args = ["experiment=smoke", "logger=csv", "test=false", "trainer=fsdp",
            f"trainer.devices={torch.cuda.device_count()}", "plugins=[tests.helpers.bert_double]",
            "model.modalities=[text]", "model/fusion=late", "~model.net.encoders.image", "~model.net.encoders.audio",
            "~model.net.encoders.text", f"+model.net.encoders.text={enc}", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "MMGPT_LOG_DIR": str(tmp_path), "CI": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", "mmgpt.cli.train", *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FSDP2: " in proc.stderr and "layer units" in proc.stderr
    results = json.loads((run_dir / "results.json").read_text())
    part = results["params_by_part"]["encoders.text"]
    assert results["global_step"] > 0 and part["adapters"] == 12 * 2 * 8 * (768 + 768)
