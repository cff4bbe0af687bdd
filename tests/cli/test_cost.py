"""The cost measurement of ``mmgpt-compare`` (mmgpt/cli/cost.py): FLOP counts against hand counts, attention on CPU
included; peak tensor memory; interleaved speed."""

import math

import pytest
import torch
from torch import nn

from mmgpt.cli.cost import count_flops, network_cost
from mmgpt.config import CONFIG_DIR
from mmgpt.layers import Attention, Block
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


def _ce(out, batch):
    return nn.functional.cross_entropy(out.logits, batch.labels)


def test_peak_tensor_bytes_by_hand():
    from mmgpt.cli.cost import peak_tensor_bytes

    layer = nn.Linear(256, 1024, bias=False)
    x = torch.randn(64, 256)
    existing = 256 * 1024 * 4 + 64 * 256 * 4  # weight + input, float32
    assert peak_tensor_bytes(lambda: layer(x), [layer.weight, x]) == existing + 64 * 1024 * 4

    def chain() -> None:  # two (64, 256) temporaries alive at once at most: a is freed before c is made
        a = x * 2
        b = a * 2
        del a
        c = b * 2
        del b, c

    assert peak_tensor_bytes(chain, [x]) == 64 * 256 * 4 * 3
    assert peak_tensor_bytes(lambda: x.view(256, 64).t(), [x]) == 64 * 256 * 4  # views allocate nothing


def test_step_memory_counts_parameters_gradients_and_activations():
    from mmgpt.cli.cost import step_memory

    net = tiny_net("early", decoder=False)
    batch = make_batch(batch_size=4)
    params = sum(p.numel() * p.element_size() for p in net.parameters())
    peak = step_memory(net, batch, _ce)
    assert 2 * params < peak < 2 * params + 50 * 2**20  # weights + their gradients + activations of 4 samples
    assert all(p.grad is None for p in net.parameters())
    bigger = step_memory(net, make_batch(batch_size=16), _ce)
    assert bigger > peak  # activations grow with the batch


def test_interleaved_speed_measures_every_network():
    from mmgpt.cli.cost import first_samples, interleaved_speed

    nets = {"early": tiny_net("early", decoder=False), "late": tiny_net("late", decoder=False)}
    batch = make_batch(batch_size=8)
    three = first_samples(batch, 3)
    assert three.batch_size == 3 and three.labels.tolist() == batch.labels[:3].tolist()
    speed = interleaved_speed(nets, batch, _ce, rounds=2, large_batch=8)
    assert set(speed) == {"early", "late"}
    for s in speed.values():
        assert s.latency_b1_ms > 0 and s.latency_batch_ms > 0 and s.train_samples_per_sec > 0


@pytest.mark.parametrize("fusion", sorted(p.stem for p in (CONFIG_DIR / "model" / "fusion").glob("*.yaml")))
def test_network_cost_of_every_fusion(fusion):
    """Every fusion's forward and training step can be counted (the resampler's parameter views once could not)."""
    from omegaconf import OmegaConf

    from mmgpt.cli.compare_tune import compose_compare
    from mmgpt.registry import build_network

    if fusion == "early_lstm":
        pytest.skip("early_lstm needs aligned modalities (MMSA's EF-LSTM); text, image and audio are not")
    head = ["model.net.head.dim=null"] if fusion in ("concat", "mult_mmsa") else []  # outputs wider than dim
    cfg = compose_compare(["experiment=smoke", "data.image_size=16", f"model/fusion={fusion}", *head])
    net = build_network(OmegaConf.to_container(cfg.model.net, resolve=True), num_classes=5)
    cost = network_cost(net, make_batch(batch_size=2), _ce)
    assert 0 < cost.forward_flops < cost.train_step_flops


def test_the_measured_training_step_fits_every_task_s_labels():
    """compare.cost measures a training step on the labels the data gives: class indices (classify, binary),
    float targets (regression, one output) or multi-hot rows (multilabel)."""
    from dataclasses import replace
    from types import SimpleNamespace

    from mmgpt.cli.compare_cost import head_loss

    batch = make_batch(batch_size=4)
    classes = replace(batch, labels=torch.tensor([0, 2, 1, 0]))
    logits = torch.zeros(4, 3, requires_grad=True)
    assert head_loss(SimpleNamespace(logits=logits), classes).item() == pytest.approx(math.log(3))
    regression = replace(batch, labels=torch.tensor([0.5, -1.0, 2.0, 0.0]))
    one = torch.zeros(4, 1, requires_grad=True)
    assert head_loss(SimpleNamespace(logits=one), regression).item() == pytest.approx((0.25 + 1 + 4 + 0) / 4)
    multilabel = replace(batch, labels=torch.tensor([[1.0, 0.0, 1.0]] * 4))
    assert head_loss(SimpleNamespace(logits=torch.zeros(4, 3)), multilabel).item() == pytest.approx(2 / 3)
