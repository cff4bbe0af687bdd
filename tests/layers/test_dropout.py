"""mmgpt.layers.Dropout: the mask nn.Dropout would draw (keep probability, scale, independence), its gradient, its
fall-backs, reproducibility under a seed, and the speed that is its reason to exist."""

import time

import pytest
import torch
import torch.nn.functional as F

from mmgpt.layers import Dropout
from mmgpt.layers.dropout import MIN_NUMEL, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_keep_fraction_and_scale_keep_the_expectation(p):
    torch.manual_seed(0)
    x = torch.ones(512, 1024)  # 524288 elements: the fast path
    y = Dropout(p)(x)
    kept = y != 0
    # binomial standard error at n = 524288 is under 7e-4: 5e-3 is more than 7 of them
    assert abs(kept.float().mean().item() - (1 - p)) < 5e-3
    assert abs(y.mean().item() - 1.0) < 0.02  # unbiased
    assert torch.allclose(y[kept], torch.full_like(y[kept], y[kept][0].item()))  # one scale for all kept values
    assert y[kept][0].item() == pytest.approx(1 / (1 - p), rel=1e-3)


def test_mask_bits_are_independent_across_the_four_elements_of_a_word():
    torch.manual_seed(1)
    keep, _ = keep_mask((1 << 20,), 0.5)
    pairs = keep.view(-1, 4).float()  # the four elements cut from one 64-bit word
    corr = torch.corrcoef(pairs.T)
    assert (corr - torch.eye(4)).abs().max() < 0.01
    assert (pairs.mean(0) - 0.5).abs().max() < 0.003  # the word's top (63rd-bit-free) chunk too


def test_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(2)
    x = torch.randn(300, 300, requires_grad=True)
    y = Dropout(0.4)(x)
    y.sum().backward()
    expected = torch.where(y != 0, 1 / (1 - 0.4), 0.0)
    torch.testing.assert_close(x.grad, expected, rtol=1e-3, atol=0)


def test_same_seed_same_mask_and_eval_is_identity():
    x = torch.randn(400, 400)
    drop = Dropout(0.5)
    torch.manual_seed(3)
    a = drop(x)
    torch.manual_seed(3)
    b = drop(x)
    assert torch.equal(a, b)
    assert torch.equal(drop.eval()(x), x)


def test_small_inputs_and_edge_rates_match_torch_exactly():
    x = torch.randn(8, 16)  # under MIN_NUMEL: torch's own dropout
    assert x.numel() < MIN_NUMEL
    torch.manual_seed(4)
    ours = Dropout(0.5)(x)
    torch.manual_seed(4)
    assert torch.equal(ours, F.dropout(x, 0.5, True))
    big = torch.randn(512, 512)
    assert torch.equal(Dropout(0.0)(big), big)
    assert torch.count_nonzero(Dropout(1.0)(big)) == 0
    with pytest.raises(ValueError, match="between 0 and 1"):
        Dropout(1.5)


def test_faster_than_torch_dropout_on_a_wide_tensor():
    """The reason for the module: on MMSA's TFN fused tensor shape (64 x 140k) forward + backward must be clearly
    faster than torch's (measured 122 vs 233 ms on one thread). Best of 3 each, so that load spikes do not decide."""
    x = torch.randn(64, 140_000, requires_grad=True)

    def best(fn):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn(x).sum().backward()
            times.append(time.perf_counter() - t0)
        return min(times)

    ours, theirs = best(Dropout(0.5)), best(lambda t: F.dropout(t, 0.5, True))
    assert ours < 0.8 * theirs, f"ours {ours * 1e3:.0f} ms vs torch {theirs * 1e3:.0f} ms"


def test_faster_than_torch_dropout_from_the_threshold_up():
    """At attention-weight sizes (MulT's 16 x 10 heads x 16 x 20 = 51k), the size where :data:`MIN_NUMEL` starts the
    fast path: measured 0.17 vs 0.41 ms at 32k, about even at 4k. Best of 20 each (short calls, load spikes)."""
    x = torch.randn(16, 10, 16, 20)
    assert x.numel() >= MIN_NUMEL

    def best(fn):
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
        return min(times)

    ours, theirs = best(Dropout(0.3)), best(lambda t: F.dropout(t, 0.3, True))
    assert ours < 0.8 * theirs, f"ours {ours * 1e6:.0f} us vs torch {theirs * 1e6:.0f} us"
