"""The hf_decoder on a GPU (marked ``gpu``; part of ``bench/gpu.sh`` section 3): KV-cached generation equals
uncached generation on CUDA, and a bf16 captioning step with a tiny GPT-2 gives a finite loss and gradients for
the new cross-attention layers."""

from __future__ import annotations

import pytest
import torch

from mmgpt.generation import GenerationConfig, generate
from mmgpt.objectives.lm import CausalLM
from mmgpt.registry import build_network
from tests.conftest import make_batch
from tests.helpers.tiny import DIM, tiny_hf_lm, tiny_spec

pytestmark = pytest.mark.gpu
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2")
    tiny_hf_lm(path)
    return path


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fusion", ["early", "cross_attention"])
def test_hf_decoder_on_cuda_generates_the_same_with_the_cache_and_trains_in_bf16(gpt2_dir, fusion):
    spec = tiny_spec(fusion)
    spec["decoder"] = {"type": "hf_decoder", "name_or_path": str(gpt2_dir), "dim": DIM, "max_length": 40}
    net = build_network(spec, 5).cuda().eval()
    batch = make_batch().to("cuda")
    batch.captions = ["2 red circles; 1 low beep", "1 blue square; 3 high chirps", "3 green triangles; 2 mid beeps"]
    outs = [generate(net, batch, ["2", "", "1 blue"], GenerationConfig(max_new_tokens=10, use_cache=c))
            for c in (True, False)]
    assert outs[0].tokens.tolist() == outs[1].tokens.tolist()
    net.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = CausalLM(max_length=40)(net, batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for n, p in net.decoder.named_parameters() if p.requires_grad]
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    assert net.decoder.media_proj.weight.grad is not None or fusion == "cross_attention"  # zero-init outputs
