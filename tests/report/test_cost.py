"""FLOP counts against hand counts, attention on CPU included."""

import torch
from torch import nn

from mmgpt.layers import Attention, Block
from mmgpt.report.cost import count_flops, network_cost
from tests.conftest import make_batch
from tests.helpers.tiny import tiny_net


def test_linear_layer_flops_by_hand():
    layer = nn.Linear(16, 32)
    x = torch.randn(4, 16)
    assert count_flops(lambda: layer(x)) == 2 * 4 * 16 * 32  # a multiply-add per weight per row


def test_attention_block_flops_by_hand_on_cpu():
    B, N, D, H = 2, 5, 16, 4
    x = torch.randn(B, N, D)
    attn = Attention(dim=D, num_heads=H)
    projections = 2 * B * N * D * D + 2 * B * N * D * (2 * D) + 2 * B * N * D * D  # q, kv, out
    scores_and_values = 2 * B * H * N * N * (D // H) * 2  # Q K^T and weights @ V
    assert count_flops(lambda: attn(x)) == projections + scores_and_values

    block = Block(dim=D, num_heads=H, mlp_ratio=2.0)
    mlp = 2 * B * N * D * (2 * D) * 2
    assert count_flops(lambda: block(x)) == projections + scores_and_values + mlp


def test_attention_is_not_counted_as_free_on_cpu():
    """torch's own counter knows only the CUDA kernels; without mmgpt's formula attention would count 0."""
    from torch.utils.flop_counter import FlopCounterMode

    q = k = v = torch.randn(1, 2, 8, 4)
    with FlopCounterMode(display=False) as plain:
        nn.functional.scaled_dot_product_attention(q, k, v)
    assert count_flops(lambda: nn.functional.scaled_dot_product_attention(q, k, v)) == 2 * 1 * 2 * 8 * 8 * 4 * 2
    assert plain.get_total_flops() in (0, 2 * 1 * 2 * 8 * 8 * 4 * 2)  # 0 where torch lacks the CPU formula


def test_network_cost_per_sample():
    net = tiny_net("early", decoder=False)
    batch = make_batch(batch_size=4)
    cost = network_cost(net, batch, lambda out, b: nn.functional.cross_entropy(out.logits, b.labels))
    assert cost.params == sum(p.numel() for p in net.parameters())
    assert cost.forward_flops > 0 and 2.5 * cost.forward_flops < cost.train_step_flops < 3.5 * cost.forward_flops
