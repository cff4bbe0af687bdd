"""The comparison's cost measurement on CUDA (``make test-gpu``; skipped without CUDA): the allocator's peak for a
training step, bounding the live-tensor count the CPU path uses on the same step (unrun on the CPU machine)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmgpt.cli.cost import interleaved_speed, peak_tensor_bytes, step_memory
from tests.conftest import make_batch
from tests.helpers.tiny import tiny_net

pytestmark = pytest.mark.gpu


def _ce(out, batch):
    return nn.functional.cross_entropy(out.logits, batch.labels)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_step_memory_on_cuda_is_the_allocator_peak_and_matches_live_tensor_tracking() -> None:
    net = tiny_net("early", decoder=False).cuda()
    batch = make_batch(batch_size=32).to("cuda")
    cuda_peak = step_memory(net, batch, _ce)
    params = sum(p.numel() * p.element_size() for p in net.parameters())
    assert cuda_peak > 2 * params

    def step() -> None:
        _ce(net(batch), batch).backward()

    tensors = [*net.parameters(), *net.buffers(), *batch.inputs.values(), *batch.masks.values(), batch.labels]
    tracked = peak_tensor_bytes(step, tensors)
    net.zero_grad(set_to_none=True)
    # the allocator holds at least every live tensor (it rounds blocks up and adds cuBLAS workspace on top)
    assert 2 * params < tracked <= cuda_peak
    speed = interleaved_speed({"early": net}, batch, _ce, rounds=2, large_batch=32)
    assert speed["early"].latency_b1_ms > 0 and speed["early"].train_samples_per_sec > 0
