"""Compute cost of a network: FLOPs per sample (forward and training step) and parameters.

FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode`. In the torch versions used here it knows
the CUDA attention kernels but counts 0 for the CPU one (``_scaled_dot_product_flash_attention_for_cpu``), which
every attention call in mmgpt uses on CPU; :data:`CPU_ATTENTION_FLOPS` registers the same formula for it
(``2 * B * H * L * S * (E + Ev)`` forward: Q K^T and the weighted sum of V; backward is twice that), so CPU and
GPU counts agree. A multiply-add counts as 2 FLOPs, as torch counts matmuls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from mmgpt.batch import MultimodalBatch


def _cpu_attention_forward(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward(grad_out: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None,
                            **kwargs: Any) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


#: The CPU attention kernels and their FLOP formulas (the ones torch registers for its CUDA kernels).
CPU_ATTENTION_FLOPS: dict[Any, Callable[..., int]] = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_forward,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
}


def count_flops(fn: Callable[[], Any]) -> int:
    """Total FLOPs of running ``fn()`` (attention on CPU included)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        fn()
    return int(counter.get_total_flops())


@dataclass
class Cost:
    """Attributes:
    params: parameters of the network.
    forward_flops: FLOPs of one forward pass per sample.
    train_step_flops: FLOPs of forward + backward per sample (optimizer update excluded).
    """

    params: int
    forward_flops: float
    train_step_flops: float


def network_cost(net: nn.Module, batch: MultimodalBatch, loss: Callable[[Any, MultimodalBatch], Tensor]) -> Cost:
    """FLOPs per sample of ``net`` on ``batch`` (forward, and forward + backward of ``loss(net(batch), batch)``)."""
    was_training = net.training
    net.eval()
    with torch.no_grad():
        forward = count_flops(lambda: net(batch))
    net.train(was_training)

    def step() -> None:
        loss(net(batch), batch).backward()

    train = count_flops(step)
    net.zero_grad(set_to_none=True)
    n = batch.batch_size
    return Cost(params=sum(p.numel() for p in net.parameters()), forward_flops=forward / n, train_step_flops=train / n)
