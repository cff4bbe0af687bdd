import math

import pytest
import torch

from mmgpt.layers import Attention, Block, GatedCrossAttentionBlock, Transformer, build_attention_mask


def naive_attention(attn: Attention, x, context=None, key_mask=None, causal=False):
    """softmax(QK^T / sqrt(d)) V written out by hand, with the same weights."""
    B, N, D = x.shape
    ctx = x if context is None else context
    H = attn.num_heads
    q = attn.q(x).view(B, N, H, D // H).transpose(1, 2)
    k, v = attn.kv(ctx).view(B, ctx.shape[1], 2, H, D // H).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D // H)
    mask = build_attention_mask(key_mask, N, ctx.shape[1], causal, x.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    y = scores.softmax(-1) @ v
    return attn.proj(y.transpose(1, 2).reshape(B, N, D))


@pytest.mark.parametrize("causal", [False, True])
def test_matches_naive_reference(causal):
    torch.manual_seed(0)
    attn = Attention(dim=16, num_heads=4).eval()
    x = torch.randn(2, 5, 16)
    key_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    got = attn(x, key_mask=key_mask, causal=causal)
    want = naive_attention(attn, x, key_mask=key_mask, causal=causal)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_cross_attention_matches_naive_reference():
    torch.manual_seed(0)
    attn = Attention(dim=16, num_heads=2).eval()
    x, ctx = torch.randn(2, 3, 16), torch.randn(2, 6, 16)
    key_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    torch.testing.assert_close(
        attn(x, context=ctx, key_mask=key_mask), naive_attention(attn, x, ctx, key_mask), atol=1e-5, rtol=1e-5
    )


def test_padded_keys_are_ignored():
    torch.manual_seed(0)
    attn = Attention(dim=16, num_heads=4).eval()
    x = torch.randn(1, 6, 16)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    y1 = attn(x, key_mask=mask)
    x2 = x.clone()
    x2[:, 4:] = torch.randn(1, 2, 16) * 100
    y2 = attn(x2, key_mask=mask)
    torch.testing.assert_close(y1[:, :4], y2[:, :4])


def test_causal_attention_never_sees_the_future():
    torch.manual_seed(0)
    model = Transformer(dim=16, num_layers=2, num_heads=2).eval()
    x = torch.randn(1, 8, 16)
    y1 = model(x, causal=True)
    x2 = x.clone()
    x2[:, 5:] = torch.randn(1, 3, 16)
    y2 = model(x2, causal=True)
    torch.testing.assert_close(y1[:, :5], y2[:, :5])
    assert not torch.allclose(y1[:, 5:], y2[:, 5:])


def test_fully_masked_rows_stay_finite():
    attn = Attention(dim=16, num_heads=2)
    x = torch.randn(2, 4, 16)
    y = attn(x, key_mask=torch.zeros(2, 4, dtype=torch.bool))
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters())


def test_gated_block_starts_as_identity_when_gate_is_zero():
    block = GatedCrossAttentionBlock(dim=16, num_heads=2, gate_init=0.0)
    x, ctx = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    torch.testing.assert_close(block(x, context=ctx), x)
    ungated = Block(dim=16, num_heads=2)
    assert not torch.allclose(ungated(x, context=ctx), x)


def test_gated_block_names_its_gates_and_loads_the_old_gate_vector():
    block = GatedCrossAttentionBlock(dim=16, num_heads=2, gate_init=0.25)
    assert {n for n, _ in block.named_parameters() if "gate" in n} == {"attn_gate", "ff_gate"}
    old = {k: v for k, v in block.state_dict().items() if not k.endswith("_gate")}
    old["gates"] = torch.tensor([0.5, -0.75])  # checkpoints written before the gates had names
    block.load_state_dict(old)
    assert block.attn_gate.item() == 0.5 and block.ff_gate.item() == -0.75


def test_dim_must_divide_heads():
    with pytest.raises(ValueError, match="divisible"):
        Attention(dim=10, num_heads=3)
